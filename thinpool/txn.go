package thinpool

import (
	"context"
	"errors"
	"fmt"
)

// This file is the crash protocol: every change of the pool's thin devices
// goes through runLocked, and Open decodes what a crash left through
// settleLocked. The rules both sides rely on:
//
//   - Before the pool is told anything, the record is committed in its
//     intended state (creating, deleting) with the transaction id the change
//     will give the pool. That id is also committed as the last one issued,
//     so it is never handed out again, even when the change fails.
//   - After the message, set_transaction_id moves the pool to that id, and
//     then the store commits the outcome.
//   - On any failure the store is told what is true (the record dropped,
//     or left "deleting" so the thin id is deleted later) and the pool's
//     transaction is closed, so no thin id is leaked and no transaction id
//     is reused.
//   - Recovery never trusts a transaction id alone where the pool can be
//     asked: a "deleting" record is dropped only once the pool has no such
//     thin id, and a "creating" record the pool's id says is complete is
//     probed before it is rolled forward.

// change is one change of the pool's thin devices.
type change struct {
	// op names the steps the test hook sees: op+":intent", ":message",
	// ":txid", ":done".
	op string
	// rec is the record in its intended state; runLocked sets its TxID.
	rec *record
	// check runs in the intent's store transaction before rec is written
	// (name checks, id allocation).
	check func(tx txn) error
	// send makes the change in the pool.
	send func() error
	// sent runs right after send, whatever its outcome (resuming a
	// snapshot's origin); its error is returned with the result.
	sent func() error
	// undo reverses send when the transaction id cannot be moved after it;
	// nil when the change needs no undo.
	undo func() error
	// done and failed are the states committed on success and when send
	// failed; "" drops the record.
	done, failed State
}

// nextTxIDLocked is the transaction id the next change will produce: past
// both the pool's and every id handed out before. Callers hold msgMu.
func (p *Pool) nextTxIDLocked() uint64 { return max(p.txid, p.issued) + 1 }

// runLocked runs one change under the crash protocol. Callers hold msgMu.
func (p *Pool) runLocked(c change) (err error) {
	next := p.nextTxIDLocked()
	c.rec.TxID = next
	err = p.st.update(func(tx txn) error {
		if c.check != nil {
			if err := c.check(tx); err != nil {
				return err
			}
		}
		if err := putRecord(tx, c.rec); err != nil {
			return err
		}
		return putU64(tx.Bucket(bucketMeta), keyTxIssued, next)
	})
	if err != nil {
		if c.sent != nil {
			err = errors.Join(err, c.sent())
		}
		return err
	}
	p.issued = next
	p.step(c.op + ":intent")

	sendErr := c.send()
	var sentErr error
	if c.sent != nil {
		sentErr = c.sent()
	}
	if sendErr != nil {
		// The pool did not change. Record that, then close the
		// transaction so that next is never produced by another change.
		return errors.Join(p.mapPoolErr(sendErr), sentErr,
			p.commitState(c.rec, c.failed, 0),
			p.closeTxLocked(next))
	}
	p.step(c.op + ":message")

	if err := p.setTxIDLocked(next); err != nil {
		errs := []error{err, sentErr}
		if c.undo == nil {
			// Done in the pool; only its transaction id did not move.
			// Recovery does not need it for a record that is gone.
			errs = append(errs, p.commitState(c.rec, c.done, 0))
			return errors.Join(errs...)
		}
		if uerr := c.undo(); uerr != nil {
			// Made but neither acknowledged nor undone: leave a
			// tombstone so the thin id is deleted later.
			errs = append(errs, fmt.Errorf("undo: %w", uerr), p.commitState(c.rec, StateDeleting, 0))
			return errors.Join(errs...)
		}
		errs = append(errs, p.commitState(c.rec, c.failed, 0))
		return errors.Join(errs...)
	}
	p.step(c.op + ":txid")
	if err := p.commitState(c.rec, c.done, next); err != nil {
		return errors.Join(fmt.Errorf("thinpool: %s %q: record outcome (recovery settles it at next open): %w", c.op, c.rec.Name, err), sentErr)
	}
	p.step(c.op + ":done")
	return sentErr
}

// commitState commits rec in state s ("" drops it) and, unless 0, the
// transaction id both sides now agree on.
func (p *Pool) commitState(rec *record, s State, agreed uint64) error {
	return p.st.update(func(tx txn) error {
		var err error
		if s == "" {
			err = deleteRecord(tx, rec)
		} else {
			rec.State = s
			err = putRecord(tx, rec)
		}
		if err != nil || agreed == 0 {
			return err
		}
		return putU64(tx.Bucket(bucketMeta), keyTxID, agreed)
	})
}

// closeTxLocked moves the pool to transaction id next after a change that
// did not happen, so that id is consumed on both sides. A pool that refuses
// (read-only, failed) keeps its id; the store's issued id still moved on.
func (p *Pool) closeTxLocked(next uint64) error {
	if err := p.setTxIDLocked(next); err != nil {
		p.log.WithError(err).WithField("txid", next).Warn("could not close the transaction of a failed change")
		return nil
	}
	if err := p.st.update(func(tx txn) error { return putU64(tx.Bucket(bucketMeta), keyTxID, next) }); err != nil {
		return fmt.Errorf("thinpool: record transaction id %d: %w", next, err)
	}
	return nil
}

// settleLocked settles one record left by a crash or a failed change, k
// being the pool's transaction id. gone reports that its record was
// removed. A record it cannot settle is marked faulty with the reason and
// does not fail: only store errors do.
func (p *Pool) settleLocked(ctx context.Context, r *record, k uint64) (gone bool, err error) {
	log := p.log.WithFields(map[string]any{"device": r.Name, "id": r.ID, "state": r.State, "txid": r.TxID, "pool-txid": k})
	faulty := func(reason error) (bool, error) {
		log.WithError(reason).Warn("recovery: cannot settle this device; marking it faulty")
		r.Fault = reason.Error()
		return false, p.commitState(r, StateFaulty, 0)
	}
	switch r.State {
	case StateCreating:
		if k >= r.TxID {
			ok, err := p.thinExists(r.ID)
			if err != nil {
				return faulty(fmt.Errorf("probe thin id %d: %w", r.ID, err))
			}
			if ok {
				log.Info("recovery: create had completed; rolling forward")
				return false, p.commitState(r, StateReady, 0)
			}
			log.Info("recovery: create had failed; dropping its record")
			return true, p.commitState(r, "", 0)
		}
		log.Info("recovery: create was cut short; rolling back")
		if err := p.deleteThinLocked(r.ID); err != nil {
			return faulty(fmt.Errorf("roll back create of thin id %d: %w", r.ID, err))
		}
		return true, p.commitState(r, "", 0)
	case StateDeleting:
		log.Info("recovery: finishing delete")
		if err := p.removeDM(ctx, p.dmName(r.Name), false); err != nil {
			return faulty(fmt.Errorf("finish delete: %w", err))
		}
		if err := p.deleteThinLocked(r.ID); err != nil {
			return faulty(fmt.Errorf("finish delete of thin id %d: %w", r.ID, err))
		}
		return true, p.commitState(r, "", 0)
	case StateReady, StateDeferredDelete:
		if r.TxID <= k {
			return false, nil
		}
		ok, err := p.thinExists(r.ID)
		if err != nil {
			return faulty(fmt.Errorf("probe thin id %d: %w", r.ID, err))
		}
		if !ok {
			return faulty(fmt.Errorf("the pool (transaction id %d) lost thin id %d (recorded at %d)", k, r.ID, r.TxID))
		}
	}
	return false, nil
}
