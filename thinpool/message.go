package thinpool

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/devmapper"
)

// poolStatus reads the pool's status without committing its metadata.
func (p *Pool) poolStatus() (devmapper.ThinPoolStatus, error) {
	lines, err := p.dm.Status(p.name, devmapper.StatusOptions{NoFlush: true})
	if err != nil {
		return devmapper.ThinPoolStatus{}, fmt.Errorf("thinpool: status: %w", err)
	}
	if len(lines) != 1 || lines[0].Type != "thin-pool" {
		return devmapper.ThinPoolStatus{}, fmt.Errorf("thinpool: %q is not a thin pool", p.name)
	}
	st, err := devmapper.ParseThinPoolStatus(lines[0].Params)
	if err != nil {
		return st, fmt.Errorf("thinpool: %w", err)
	}
	return st, nil
}

func (p *Pool) message(msg string) error {
	if p.messageFault != nil {
		if err := p.messageFault(msg); err != nil {
			return fmt.Errorf("thinpool: message %q: %w", msg, err)
		}
	}
	_, err := p.dm.Message(p.name, 0, msg)
	if err != nil {
		return fmt.Errorf("thinpool: message %q: %w", msg, err)
	}
	return nil
}

// setTxIDLocked moves the pool's transaction id from p.txid to next.
// Callers hold msgMu.
func (p *Pool) setTxIDLocked(next uint64) error {
	if err := p.message(fmt.Sprintf("set_transaction_id %d %d", p.txid, next)); err != nil {
		return err
	}
	p.txid = next
	return nil
}

// deleteThinLocked sends "delete id"; a thin id the pool does not have
// (ENODATA) counts as deleted.
//
// Right after the last close of a device removed with deferred remove, the
// kernel tears the device down in a work queue: its name is gone but the
// pool still counts it open and answers EBUSY. That window is short, so
// EBUSY is retried a few times.
func (p *Pool) deleteThinLocked(id uint32) error {
	return retryBusy(context.Background(), 8, 5*time.Millisecond, func() error {
		err := p.message(fmt.Sprintf("delete %d", id))
		if errors.Is(err, unix.ENODATA) {
			return nil
		}
		return err
	})
}

// commitMetadata makes the pool commit its metadata (a status read without
// the noflush flag does that).
func (p *Pool) commitMetadata() error {
	_, err := p.dm.Status(p.name, devmapper.StatusOptions{})
	if err != nil {
		return fmt.Errorf("thinpool: commit metadata: %w", err)
	}
	return nil
}

// thinExists probes whether the pool has a thin id by loading a table that
// maps it into a scratch device: the thin target refuses (ENODATA) an id
// the pool does not have. Nothing in the pool's metadata changes.
func (p *Pool) thinExists(id uint32) (bool, error) {
	name := fmt.Sprintf("%s-probe-%d", p.prefix, id)
	if _, err := p.dm.Create(name, ""); err != nil {
		return false, err
	}
	tab := devmapper.Table{{Length: 8, Params: devmapper.ThinParams{Pool: p.dev, ID: devmapper.ThinID(id)}}}
	loadErr := p.dm.Load(name, tab, true)
	rmErr := p.dm.Remove(name, devmapper.RemoveOptions{})
	switch {
	case loadErr == nil:
		return true, rmErr
	case errors.Is(loadErr, unix.ENODATA):
		return false, rmErr
	default:
		return false, errors.Join(loadErr, rmErr)
	}
}
