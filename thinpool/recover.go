package thinpool

import (
	"context"
	"fmt"
	"strings"

	"github.com/dmthin/dmthin/devmapper"
)

// recover settles what a crash or a failed change left half-done (see
// txn.go). Only a failed pool or an unreadable store fail it: a device it
// cannot settle is marked faulty and reported.
func (p *Pool) recover(ctx context.Context) error {
	p.msgMu.Lock()
	defer p.msgMu.Unlock()
	ps, err := p.poolStatus()
	if err != nil {
		return err
	}
	if ps.Mode == devmapper.PoolFailed || ps.Mode == devmapper.PoolError {
		return fmt.Errorf("thinpool: pool %q has failed (status %s); run thin_check on its metadata", p.name, ps.Mode)
	}
	p.releaseLeftSnapshot(ctx, ps)
	k := ps.TransactionID
	agreed, issued, err := p.st.txIDs()
	if err != nil {
		return err
	}
	if k < agreed {
		p.log.WithFields(map[string]any{"pool-txid": k, "store-txid": agreed}).
			Warn("pool metadata is older than the store (power loss?): checking devices it may have lost")
	}
	p.txid, p.issued = k, max(issued, agreed)
	recs, err := p.st.all()
	if err != nil {
		return err
	}
	p.st.useIDs(recs)
	kept := recs[:0]
	for _, r := range recs {
		gone, err := p.settleLocked(ctx, r, k)
		if err != nil {
			return fmt.Errorf("thinpool: settle %q: %w", r.Name, err)
		}
		if !gone {
			kept = append(kept, r)
		}
	}
	// Commit what we changed in the pool before the store forgets it, and
	// move the pool's transaction id up to the last change (txn.go): from
	// now on every record is covered by it.
	if err := p.commitMetadata(); err != nil {
		return err
	}
	if err := p.syncTxIDLocked(); err != nil {
		p.log.WithError(err).Warn("recovery: could not move the pool's transaction id")
	}
	err = p.st.update(func(tx txn) error {
		meta := tx.Bucket(bucketMeta)
		if err := putU64(meta, keyMinFree, uint64(*p.opts.MinFreeSpacePercent)); err != nil {
			return err
		}
		return putU64(meta, keyTxID, p.txid)
	})
	if err != nil {
		return err
	}
	p.removeStrays(ctx, kept)
	p.pending = nil
	for _, r := range kept {
		if r.State == StateDeferredDelete {
			p.pending = append(p.pending, r.Name)
		}
	}
	return nil
}

// removeStrays removes dm devices with the pool's prefix that no ready
// record explains (half-made activations, probes), and devices of ready
// records that were left without a live table. What it cannot remove or
// resume it reports (Status.FaultyDevices) and logs.
func (p *Pool) removeStrays(ctx context.Context, recs []*record) {
	p.strays = nil
	live, err := p.dm.List()
	if err != nil {
		p.strays = append(p.strays, FaultyDevice{Name: p.prefix + "-*", Reason: fmt.Sprintf("list dm devices: %v", err)})
		p.log.WithError(err).Warn("recovery: cannot list dm devices")
		return
	}
	want := make(map[string]*record, len(recs))
	for _, r := range recs {
		if r.State == StateReady || r.State == StateDeferredDelete {
			want[p.dmName(r.Name)] = r
		}
	}
	fault := func(dm string, err error) {
		p.log.WithError(err).WithField("dm", dm).Warn("recovery: cannot settle dm device")
		p.strays = append(p.strays, FaultyDevice{Name: dm, Reason: err.Error()})
	}
	for _, l := range live {
		if p.isPoolDevice(l.Name) || !strings.HasPrefix(l.Name, p.prefix+"-") {
			continue
		}
		if r := want[l.Name]; r != nil {
			info, err := p.dm.Info(l.Name)
			if err == nil && info.LiveTable {
				if err := p.settleLiveTable(r, info); err != nil {
					fault(l.Name, err)
				}
				if _, err := p.dm.EnsureNode(l.Name); err != nil {
					fault(l.Name, err)
				}
				continue
			}
		}
		p.log.WithField("dm", l.Name).Info("recovery: removing stray device")
		if err := p.removeDM(ctx, l.Name, false); err != nil {
			fault(l.Name, fmt.Errorf("remove stray device: %w", err))
		}
	}
}

// settleLiveTable finishes what a crash cut short on the live device of r:
// a suspend of a snapshot's origin or of a reload (resumed: the table the
// reload loaded becomes live), a reload killed between its load and its
// suspend (the inactive table cleared), and a Resize whose record was
// committed before its reload (the table made to match the record).
func (p *Pool) settleLiveTable(r *record, info devmapper.Info) error {
	dm := p.dmName(r.Name)
	switch {
	case info.Suspended:
		p.log.WithField("dm", dm).Info("recovery: resuming suspended device")
		if err := p.resume(dm); err != nil {
			return err
		}
	case info.InactiveTable:
		if err := p.dm.ClearInactive(dm); err != nil {
			return fmt.Errorf("clear inactive table: %w", err)
		}
	}
	tab, err := p.dm.Table(dm)
	if err != nil {
		return err
	}
	want := p.thinTable(r)
	if tab.Length() >= want.Length() {
		return nil // never shrunk under its user
	}
	p.log.WithFields(map[string]any{"dm": dm, "from": tab.Length(), "to": want.Length()}).Info("recovery: device's table follows its record's size")
	if err := p.reload(dm, want); err != nil {
		return fmt.Errorf("reload to the recorded size: %w", err)
	}
	return nil
}
