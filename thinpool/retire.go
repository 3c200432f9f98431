package thinpool

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/devmapper"
)

// Retiring a device frees its name at once and leaves the slow part of its
// deletion (discard, deactivation, the delete message) for later:
//
//  1. one store commit moves the record from its name to a tombstone name,
//     "retired-<thin id>", in state retired, remembering the old name;
//  2. if the device is active, its dm device is renamed to the tombstone's
//     dm name (DM_DEV_RENAME: one ioctl, whatever holds the device open),
//     so the old name is free in the kernel too.
//
// Renaming rather than deactivating keeps the caller's wait at one ioctl:
// deactivation waits for the kernel to flush and tear the table down, and
// Delete does that later anyway. A crash between 1 and 2 leaves a dm device
// under the old name that no ready record explains: Open removes it like
// any stray (recover.go), before any new device of that name can be made.
// The retired record keeps its thin id, so the pool and the store agree on
// ids at every point; Delete of the tombstone name (see Retired) finishes
// the deletion under the crash protocol of txn.go, discard included.

// retiredPrefix starts the tombstone names of retired devices; names that
// start with it are reserved (checkName).
const retiredPrefix = "retired-"

func retiredName(id uint32) string { return fmt.Sprintf("%s%d", retiredPrefix, id) }

// RetireOptions modify Retire.
type RetireOptions struct {
	// AllowOpen retires a device that is open (mounted by someone else);
	// its deletion then waits until it is closed. Without it, an open
	// device is refused with ErrBusy and stays as it was.
	AllowOpen bool
}

// Retire frees name at once: when it returns, the device is no longer
// found by that name (Lookup, Get answer ErrNotFound), the name can be used
// by a new Create, and the device's record is durably kept under a
// tombstone name (the returned Device's Name; its Retired field holds
// name) in state retired, until Delete of the tombstone name deletes it.
// Only a ready device can be retired.
//
// The steps seen by the step hook are "retire:recorded" (the store commit)
// and "retire:renamed" (the active dm device renamed).
func (p *Pool) Retire(ctx context.Context, name string, opts RetireOptions) (Device, error) {
	rec, release, err := p.lockDevice(name)
	if err != nil {
		return Device{}, err
	}
	defer release()
	if err := ctx.Err(); err != nil {
		return Device{}, err
	}
	if rec.State != StateReady {
		return Device{}, fmt.Errorf("thinpool: retire %q: device is %s", name, rec.State)
	}
	tomb := retiredName(rec.ID)
	unlock := p.locks.Lock(tomb)
	defer unlock()

	oldDM, newDM := p.dmName(name), p.dmName(tomb)
	var info devmapper.Info
	active := false
	// An opener may be closing it (the last reference of an unmounted
	// filesystem can be dropped by another task just after umount
	// returns): wait a little, as removeDM does, before refusing.
	err = retryBusy(ctx, 5, 10*time.Millisecond, func() error {
		var err error
		info, err = p.dm.Info(oldDM)
		active = err == nil
		if err != nil && !devmapper.IsNotFound(err) {
			return fmt.Errorf("thinpool: retire %q: %w", name, err)
		}
		if active && info.OpenCount > 0 && !opts.AllowOpen {
			return fmt.Errorf("thinpool: retire %q: %w: %q is open: %w", name, ErrBusy, name, unix.EBUSY)
		}
		return nil
	})
	if err != nil {
		return Device{}, err
	}

	old := *rec
	rec.Name, rec.Retired, rec.State = tomb, name, StateRetired
	err = p.st.update(func(tx txn) error {
		if _, err := getRecord(tx, tomb); err == nil {
			return fmt.Errorf("%w: tombstone %q", ErrExists, tomb)
		}
		// Through deleteRecord, so that the name's staged outcome (a
		// create's "ready" not yet on disk) is superseded too: left
		// staged, it would show the retired name as a device again and
		// be written back by the next commit.
		if err := deleteRecord(tx, &old); err != nil {
			return err
		}
		return putRecord(tx, rec)
	})
	if err != nil {
		return Device{}, fmt.Errorf("thinpool: retire %q: %w", name, err)
	}
	p.step("retire:recorded")

	if active {
		if err := p.dm.Rename(oldDM, newDM); err != nil {
			// The old name must not stay taken in the kernel: a new device
			// of that name would find this one. Deactivate it instead, or
			// put the record back as it was.
			rerr := fmt.Errorf("thinpool: retire %q: rename %s to %s: %w", name, oldDM, newDM, err)
			if derr := p.removeDM(ctx, oldDM, false); derr != nil {
				return Device{}, errors.Join(rerr, derr, p.unretire(tomb, &old))
			}
			if !devmapper.IsNotFound(err) { // else it went away meanwhile (a deferred removal)
				p.log.WithError(rerr).WithField("device", name).Warn("retire: deactivated the device instead of renaming it")
			}
		}
		p.step("retire:renamed")
	}
	p.log.WithFields(map[string]any{"device": name, "id": rec.ID, "tombstone": tomb}).Debug("thin device retired")
	return recordDevice(rec), nil
}

// unretire puts back the record of a retire that could not free the name
// in the kernel.
func (p *Pool) unretire(tomb string, old *record) error {
	err := p.st.update(func(tx txn) error {
		if err := deleteRecord(tx, &record{Name: tomb, ID: old.ID}); err != nil {
			return err
		}
		return putRecord(tx, old)
	})
	if err != nil {
		return fmt.Errorf("thinpool: put back the record of %q (recovery deletes the device at next open): %w", old.Name, err)
	}
	return nil
}

// Retired lists the retired devices not yet deleted, from the store alone
// (no live state), in tombstone-name order: those waiting for Delete (state
// retired) and those whose Delete was cut short (state deleting). Delete
// of each Name finishes it.
func (p *Pool) Retired() ([]Device, error) {
	done, err := p.enter()
	if err != nil {
		return nil, err
	}
	defer done()
	recs, err := p.st.all()
	if err != nil {
		return nil, err
	}
	var out []Device
	for _, r := range recs {
		if r.Retired != "" {
			out = append(out, recordDevice(r))
		}
	}
	return out, nil
}

// isRetiredName reports whether name is a tombstone name.
func isRetiredName(name string) bool { return strings.HasPrefix(name, retiredPrefix) }
