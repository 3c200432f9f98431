package thinpool

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/dmthin/dmthin/devmapper"
)

// recover settles what a crash left half-done. See the package doc for the
// protocol it relies on.
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
	k := ps.TransactionID
	stored, err := p.st.txID()
	if err != nil {
		return err
	}
	if k < stored {
		p.log.WithFields(map[string]any{"pool-txid": k, "store-txid": stored}).
			Warn("pool metadata is older than the store (power loss?): checking devices it may have lost")
	}
	p.txid = k
	recs, err := p.st.all()
	if err != nil {
		return err
	}
	var errs []error
	kept := recs[:0]
	for _, r := range recs {
		gone, err := p.settleLocked(r, k)
		if err != nil {
			errs = append(errs, fmt.Errorf("settle %q: %w", r.Name, err))
		}
		if !gone {
			kept = append(kept, r)
		}
	}
	// Commit what we changed in the pool before the store forgets it.
	if err := p.commitMetadata(); err != nil {
		errs = append(errs, err)
	}
	if err := p.st.update(func(tx txn) error { return putU64(tx.Bucket(bucketMeta), keyTxID, k) }); err != nil {
		errs = append(errs, err)
	}
	if err := p.removeStrays(ctx, kept); err != nil {
		errs = append(errs, err)
	}
	p.pending = nil
	for _, r := range kept {
		if r.State == StateDeferredDelete || r.State == StateDeleting {
			p.pending = append(p.pending, r.Name)
		}
	}
	return errors.Join(errs...)
}

// settleLocked settles one record; gone reports that its record was removed.
func (p *Pool) settleLocked(r *record, k uint64) (gone bool, err error) {
	log := p.log.WithFields(map[string]any{"device": r.Name, "id": r.ID, "state": r.State, "txid": r.TxID, "pool-txid": k})
	switch r.State {
	case StateCreating:
		if k >= r.TxID {
			log.Info("recovery: create had completed; rolling forward")
			r.State = StateReady
			return false, p.st.update(func(tx txn) error { return putRecord(tx, r) })
		}
		log.Info("recovery: create was cut short; rolling back")
		if err := p.deleteThinLocked(r.ID); err != nil {
			r.State = StateFaulty
			return false, errors.Join(err, p.st.update(func(tx txn) error { return putRecord(tx, r) }))
		}
		return true, p.st.update(func(tx txn) error { return deleteRecord(tx, r) })
	case StateDeleting:
		if k < r.TxID {
			if err := p.deleteThinLocked(r.ID); err != nil {
				return false, err
			}
		}
		log.Info("recovery: finishing delete")
		return true, p.st.update(func(tx txn) error { return deleteRecord(tx, r) })
	case StateReady, StateDeferredDelete:
		if r.TxID <= k {
			return false, nil
		}
		ok, err := p.thinExists(r.ID)
		if err != nil {
			return false, err
		}
		if !ok {
			log.Warn("recovery: the pool lost this device; marking it faulty")
			r.State = StateFaulty
			return false, p.st.update(func(tx txn) error { return putRecord(tx, r) })
		}
	}
	return false, nil
}

// removeStrays removes dm devices with the pool's prefix that no ready
// record explains (half-made activations, probes), and devices of ready
// records that were left without a live table.
func (p *Pool) removeStrays(ctx context.Context, recs []*record) error {
	live, err := p.dm.List()
	if err != nil {
		return err
	}
	want := make(map[string]bool, len(recs))
	for _, r := range recs {
		if r.State == StateReady || r.State == StateDeferredDelete {
			want[p.dmName(r.Name)] = true
		}
	}
	var errs []error
	for _, l := range live {
		if l.Name == p.name || !strings.HasPrefix(l.Name, p.prefix+"-") {
			continue
		}
		if want[l.Name] {
			info, err := p.dm.Info(l.Name)
			if err == nil && info.LiveTable {
				if info.Suspended {
					// A crash between suspend and resume of a snapshot's
					// origin.
					p.log.WithField("dm", l.Name).Info("recovery: resuming suspended device")
					if _, err := p.dm.Resume(l.Name); err != nil {
						errs = append(errs, err)
					}
				}
				if _, err := p.dm.EnsureNode(l.Name); err != nil {
					errs = append(errs, err)
				}
				continue
			}
		}
		p.log.WithField("dm", l.Name).Info("recovery: removing stray device")
		if err := p.removeDM(ctx, l.Name, false); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
