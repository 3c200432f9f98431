package thinpool

import (
	"context"
	"errors"
	"fmt"
)

// This file is the crash protocol: every change of the pool's thin devices
// goes through runLocked, and Open decodes what a crash left through
// settleLocked. A change costs one durable store commit and one pool
// metadata commit (the kernel commits after every message). The rules both
// sides rely on:
//
//   - Before the pool is told anything, the record is committed (fsync) in
//     its intended state: "creating" with the id it will have, or
//     "deleting". A create also stamps the record with a new transaction
//     id, committed as the last one issued, so it is never handed out
//     again.
//   - After the message, the outcome (ready, or the record dropped) is only
//     staged in memory (store.stage): reads see it at once, and a later
//     store commit writes it in its own transaction (a drop with the next
//     commit, a ready record once 64 outcomes wait, or at Close; see
//     store.update). No outcome needs an fsync of its own, because a
//     record left in its intended state is settled by asking the pool:
//     a "creating" record is rolled forward if the pool has its thin id and
//     dropped if not, a "deleting" one is deleted again (a missing thin id
//     counts as deleted). A retired record (retire.go) is its own intent:
//     its deletion commits nothing before the message, and Open drops it
//     if the pool no longer has its thin id. Nor can the outcome be written with bbolt's
//     NoSync for that one transaction: bbolt reuses the pages a
//     transaction frees in the next one, so after an unsynced commit the
//     next, synced one may overwrite pages that the last durable meta page
//     still points to; a power loss in between leaves neither tree intact.
//   - A failure is committed at once (failures are rare and the record must
//     say what is true: a create whose message failed is dropped, a delete
//     whose message failed stays "deleting" to be retried).
//   - The pool's transaction id is not moved per change. It is a watermark
//     brought up to the last id issued when Open has settled the store and
//     at Close, and on the way of every syncEvery-th change: a ready record
//     stamped at or below the pool's transaction id is trusted, one above
//     it (made since the last watermark) is probed at Open, so a pool whose
//     metadata went back in time (power loss under a volatile cache, an
//     old metadata image) is caught. The pool's transaction id thus keeps
//     counting changes, as tools that read it (thin_dump, lvm) expect, at
//     one extra pool commit per syncEvery changes.

// syncEvery is how many changes may pass before the pool's transaction id
// is moved up to the last one issued (and so about how many ready records
// Open may have to probe after a crash, besides the changes left
// half-done). Pool.syncEvery starts at it; tests lower it.
const syncEvery = 64

// change is one change of the pool's thin devices.
type change struct {
	// op names the steps the test hook sees: op+":intent" (the intent is
	// durable, the pool not told yet), op+":message" (the pool changed,
	// the outcome is staged, not yet committed) and, on the changes that
	// move the pool's transaction id, op+":txid".
	op string
	// rec is the record in its intended state; runLocked stamps a new
	// transaction id on it unless marked.
	rec *record
	// marked: rec is already committed in its intended state (a delete
	// marks its record "deleting" before it destroys anything), so
	// runLocked commits no intent of its own.
	marked bool
	// check runs in the intent's store transaction before rec is written
	// (name checks, id allocation).
	check func(tx txn) error
	// send makes the change in the pool.
	send func() error
	// sent runs right after send, whatever its outcome (resuming a
	// snapshot's origin); its error is returned with the result.
	sent func() error
	// done and failed are the states recorded on success (staged) and
	// when send failed (committed); "" drops the record.
	done, failed State
}

// nextTxIDLocked is the transaction id the next change will produce: past
// both the pool's and every id handed out before. Callers hold msgMu.
func (p *Pool) nextTxIDLocked() uint64 { return max(p.txid, p.issued) + 1 }

// runLocked runs one change under the crash protocol. Callers hold msgMu.
func (p *Pool) runLocked(c change) (err error) {
	if !c.marked {
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
	}
	p.step(c.op + ":intent")

	sendErr := c.send()
	var sentErr error
	if c.sent != nil {
		sentErr = c.sent()
	}
	if sendErr != nil {
		return errors.Join(p.mapPoolErr(sendErr), sentErr, p.commitState(c.rec, c.failed, 0))
	}
	p.st.stage(c.rec, c.done)
	p.step(c.op + ":message")
	p.changes++
	if p.changes >= p.syncEvery {
		if err := p.syncTxIDLocked(); err != nil {
			// The change is done; only the watermark stays behind, and
			// Open probes what it does not cover.
			p.log.WithError(err).Warn("could not move the pool's transaction id")
		} else {
			p.step(c.op + ":txid")
		}
	}
	return sentErr
}

// syncTxIDLocked moves the pool's transaction id up to the last one issued.
// Callers hold msgMu.
func (p *Pool) syncTxIDLocked() error {
	p.changes = 0
	if p.issued <= p.txid {
		return nil
	}
	return p.setTxIDLocked(p.issued)
}

// commitState commits rec in state s ("" drops it) and, unless 0, the
// transaction id both sides now agree on. It commits the staged outcomes
// too (store.update).
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
		// The pool says whether the message went through.
		ok, err := p.thinExists(r.ID)
		if err != nil {
			return faulty(fmt.Errorf("probe thin id %d: %w", r.ID, err))
		}
		if ok {
			log.Info("recovery: create had completed; rolling forward")
			return false, p.commitState(r, StateReady, 0)
		}
		log.Info("recovery: create had not reached the pool; dropping its record")
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
	case StateRetired:
		// Its deletion (Delete of the tombstone name) commits no intent
		// of its own: whether the delete message went through is the
		// pool's to say.
		ok, err := p.thinExists(r.ID)
		if err != nil {
			return faulty(fmt.Errorf("probe thin id %d: %w", r.ID, err))
		}
		if !ok {
			// Its dm device, if a crash left one, goes with the strays
			// (removeStrays keeps only those of ready records).
			log.Info("recovery: the retired device's delete had completed; dropping its record")
			return true, p.commitState(r, "", 0)
		}
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
