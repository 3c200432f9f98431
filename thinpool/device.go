package thinpool

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/devmapper"
	"github.com/dmthin/dmthin/internal/retry"
)

// Device describes one thin device.
type Device struct {
	Name   string `json:"name"`
	ID     uint32 `json:"id"`     // thin id in the pool
	Size   int64  `json:"size"`   // bytes
	Parent string `json:"parent"` // origin of a snapshot, "" for a device made empty
	State  State  `json:"state"`
	// Live state, from the kernel:
	Active      bool   `json:"active"`
	Path        string `json:"path"` // block node when active
	OpenCount   int    `json:"open_count"`
	MappedBytes int64  `json:"mapped_bytes"` // bytes provisioned for this device (active only)
	// DeferredDelete: deletion waits for the device to be closed.
	DeferredDelete bool      `json:"deferred_delete"`
	Created        time.Time `json:"created"`
	// Fault says why a faulty device could not be settled.
	Fault string `json:"fault,omitempty"`
	// Retired is the name a retired device had (see Retire); Name is then
	// its tombstone name.
	Retired string `json:"retired,omitempty"`
	// Labels are the caller's key/value pairs (WithLabels, SetLabels).
	Labels map[string]string `json:"labels,omitempty"`
}

// maxNameLen leaves room in the kernel's 127-byte name for the prefix.
func (p *Pool) checkName(name string) error {
	switch {
	case name == "", name == ".", name == "..":
		return fmt.Errorf("%w: %q", ErrInvalidName, name)
	case strings.ContainsAny(name, "/\x00") || strings.Contains(name, ".."):
		return fmt.Errorf("%w: %q contains \"/\", \"..\" or NUL", ErrInvalidName, name)
	case name == "pool" || name == "pool-meta" || name == "pool-data" || strings.HasPrefix(name, "probe-") || isRetiredName(name):
		return fmt.Errorf("%w: %q is reserved", ErrInvalidName, name)
	case len(p.dmName(name)) > unix.DM_NAME_LEN-1:
		return fmt.Errorf("%w: %q is longer than %d bytes", ErrInvalidName, name, unix.DM_NAME_LEN-1-len(p.prefix)-1)
	}
	return nil
}

func checkSize(size int64) (devmapper.Sectors, error) {
	if size <= 0 {
		return 0, fmt.Errorf("thinpool: size %d must be positive", size)
	}
	if size%devmapper.SectorSize != 0 {
		return 0, fmt.Errorf("thinpool: size %d is not a multiple of %d", size, devmapper.SectorSize)
	}
	return devmapper.Sectors(size / devmapper.SectorSize), nil
}

// Create makes an empty thin device of size bytes (a multiple of 512).
func (p *Pool) Create(ctx context.Context, name string, size int64, opts ...CreateOption) (Device, error) {
	return p.create(ctx, name, "", size, opts)
}

// Snapshot makes name a copy-on-write snapshot of parent. size 0 keeps the
// parent's size; a bigger size is allowed, a smaller one is not. An active
// parent is suspended for the instant of the snapshot and resumed on every
// path.
func (p *Pool) Snapshot(ctx context.Context, name, parent string, size int64, opts ...CreateOption) (Device, error) {
	if parent == "" {
		return Device{}, fmt.Errorf("thinpool: snapshot %q: %w: empty parent name", name, ErrInvalidName)
	}
	return p.create(ctx, name, parent, size, opts)
}

func (p *Pool) create(ctx context.Context, name, parent string, size int64, opts []CreateOption) (Device, error) {
	cfg, err := newCreateConfig(opts)
	if err != nil {
		return Device{}, err
	}
	done, err := p.enter()
	if err != nil {
		return Device{}, err
	}
	defer done()
	if err := p.checkName(name); err != nil {
		return Device{}, err
	}
	unlock := p.locks.Lock(name, parent)
	defer unlock()
	if err := ctx.Err(); err != nil {
		return Device{}, err
	}
	if _, err := p.st.get(name); err == nil {
		return Device{}, fmt.Errorf("%w: %q", ErrExists, name)
	} else if !errors.Is(err, ErrNotFound) {
		return Device{}, err
	}
	var origin *record
	if parent != "" {
		if origin, err = p.st.get(parent); err != nil {
			return Device{}, fmt.Errorf("thinpool: snapshot %q: parent: %w", name, err)
		}
		if origin.State != StateReady {
			return Device{}, fmt.Errorf("thinpool: snapshot %q: parent %q is %s", name, parent, origin.State)
		}
		if size == 0 {
			size = origin.Size
		}
		if size < origin.Size {
			return Device{}, fmt.Errorf("thinpool: snapshot %q of %d bytes is smaller than its parent %q (%d bytes)", name, size, parent, origin.Size)
		}
	}
	if _, err := checkSize(size); err != nil {
		return Device{}, err
	}
	if err := p.checkSpace(); err != nil {
		return Device{}, err
	}

	// Every lock the snapshot needs is taken before the origin is
	// suspended, and it is resumed right after the message: the origin's
	// I/O waits for one ioctl, not for other operations' messages.
	p.msgMu.Lock()
	defer p.msgMu.Unlock()
	rec := &record{Name: name, Size: size, Parent: parent, State: StateCreating, Created: time.Now().UTC(), Labels: cfg.labels}
	c := change{
		op:  "create",
		rec: rec,
		check: func(tx txn) error {
			if _, err := getRecord(tx, name); err == nil {
				return fmt.Errorf("%w: %q", ErrExists, name)
			}
			id, err := allocID(tx)
			rec.ID = id
			return err
		},
		send: func() error { return p.message(fmt.Sprintf("create_thin %d", rec.ID)) },
		done: StateReady,
	}
	if origin != nil {
		resume, err := p.suspendIfActive(parent)
		if err != nil {
			return Device{}, err
		}
		c.send = func() error { return p.message(fmt.Sprintf("create_snap %d %d", rec.ID, origin.ID)) }
		c.sent = resume
	}
	if err := p.runLocked(c); err != nil {
		if origin != nil && rec.State == StateReady {
			// Made, but the origin could not be resumed: say so loudly,
			// with the device that exists.
			return p.describe(rec, nil), fmt.Errorf("thinpool: snapshot %q made, but: %w", name, err)
		}
		return Device{}, fmt.Errorf("thinpool: create %q: %w", name, err)
	}
	p.log.WithFields(map[string]any{"device": name, "id": rec.ID, "parent": parent}).Debug("thin device created")
	// A device just made has no dm device yet: nothing live to ask the
	// kernel about.
	return recordDevice(rec), nil
}

// mapPoolErr turns what a full pool answers into ErrPoolFull.
func (p *Pool) mapPoolErr(err error) error {
	if errors.Is(err, unix.ENOSPC) {
		return fmt.Errorf("%w: the pool has no metadata space left: %w", ErrPoolFull, err)
	}
	st, serr := p.poolStatus()
	if serr == nil && st.Mode != devmapper.PoolReadWrite {
		return fmt.Errorf("%w (pool mode %s)", err, st.Mode)
	}
	return err
}

// suspendIfActive suspends the device's dm device if it is active and
// returns how to resume it.
func (p *Pool) suspendIfActive(name string) (func() error, error) {
	dm := p.dmName(name)
	info, err := p.dm.Info(dm)
	if devmapper.IsNotFound(err) || (err == nil && !info.LiveTable) {
		return func() error { return nil }, nil
	}
	if err != nil {
		return nil, err
	}
	// Suspending freezes the block device (lockfs) so that a mounted
	// filesystem is clean in the snapshot. But a frozen block device
	// cannot be mounted: the kernel answers EBUSY ("Can't mount, blockdev
	// is frozen"), which is what a concurrent Activate and mount of the
	// origin met. A device nobody has open has no filesystem to freeze;
	// suspend it without lockfs, and a mount that starts now waits for
	// its I/O instead of failing.
	opts := devmapper.SuspendOptions{SkipLockfs: info.OpenCount == 0}
	if err := p.dm.Suspend(dm, opts); err != nil {
		return nil, fmt.Errorf("thinpool: suspend %q: %w", name, err)
	}
	p.step("snapshot:suspended")
	return func() error { return p.resume(dm) }, nil
}

// resume resumes a suspended dm device, retrying a few times: a device
// must not stay suspended while anything can still be tried.
func (p *Pool) resume(dm string) error {
	var errs []error
	for i := 0; i < 3; i++ {
		err := p.resumeOnce(dm)
		if err == nil {
			return nil
		}
		errs = append(errs, err)
		time.Sleep(time.Duration(i+1) * 10 * time.Millisecond)
	}
	p.log.WithError(errors.Join(errs...)).WithField("dm", dm).Error("device stays suspended: resume failed")
	return fmt.Errorf("thinpool: %s stays suspended: resume: %w", dm, errors.Join(errs...))
}

// reload swaps table t in for the live table of dm: load, suspend, resume.
// A resume that fails has already made t live (the kernel swaps tables
// before it resumes), so the old table is loaded and resumed again: the
// device is never left suspended, and the error says what happened.
func (p *Pool) reload(dm string, t devmapper.Table) error {
	old, err := p.dm.Table(dm)
	if err != nil {
		return err
	}
	if err := p.dm.Load(dm, t, false); err != nil {
		return err
	}
	p.step("reload:loaded")
	// Nothing but the resume between suspend and resume: while the pool
	// is suspended, I/O to every thin device waits, and a process killed
	// here leaves it so (Open resumes it, deadowner.go).
	if err := p.dm.Suspend(dm, devmapper.SuspendOptions{}); err != nil {
		return errors.Join(err, p.dm.ClearInactive(dm))
	}
	p.step("reload:suspended")
	rerr := p.resumeOnce(dm)
	if rerr == nil {
		p.step("reload:resumed")
		return nil
	}
	p.log.WithError(rerr).WithField("dm", dm).Warn("resume with the new table failed; restoring the old one")
	if err := p.dm.Load(dm, old, false); err != nil {
		return errors.Join(fmt.Errorf("thinpool: reload %s: resume: %w", dm, rerr), fmt.Errorf("restore old table: %w", err), p.resume(dm))
	}
	if err := p.resume(dm); err != nil {
		return errors.Join(fmt.Errorf("thinpool: reload %s: resume: %w", dm, rerr), fmt.Errorf("restore old table: %w", err))
	}
	return fmt.Errorf("thinpool: reload %s: resume failed, old table restored: %w", dm, rerr)
}

func (p *Pool) resumeOnce(dm string) error {
	if p.resumeFault != nil {
		if err := p.resumeFault(dm); err != nil {
			return err
		}
	}
	_, err := p.dm.Resume(dm)
	return err
}

// lockDevice enters the pool, locks name and reads its record; release
// undoes both. Methods that act on one existing device start with it.
func (p *Pool) lockDevice(name string) (rec *record, release func(), err error) {
	done, err := p.enter()
	if err != nil {
		return nil, nil, err
	}
	unlock := p.locks.Lock(name)
	release = func() { unlock(); done() }
	if rec, err = p.st.get(name); err != nil {
		release()
		return nil, nil, err
	}
	return rec, release, nil
}

func (p *Pool) thinTable(r *record) devmapper.Table {
	return devmapper.Table{{
		Start:  0,
		Length: devmapper.Sectors(r.Size / devmapper.SectorSize),
		Params: devmapper.ThinParams{Pool: p.dev, ID: devmapper.ThinID(r.ID)},
	}}
}

// Activate makes the device's block node and returns its path. Activating
// an active device returns its path.
func (p *Pool) Activate(ctx context.Context, name string) (string, error) {
	rec, release, err := p.lockDevice(name)
	if err != nil {
		return "", err
	}
	defer release()
	switch rec.State {
	case StateReady:
	case StateFaulty:
		return "", fmt.Errorf("%w: %q", ErrFaulty, name)
	default:
		return "", fmt.Errorf("thinpool: activate %q: device is %s", name, rec.State)
	}
	return p.activateLocked(ctx, rec)
}

func (p *Pool) activateLocked(ctx context.Context, rec *record) (string, error) {
	info, err := p.dm.Info(p.dmName(rec.Name))
	return p.activateKnown(ctx, rec, info, err)
}

// activateKnown is activateLocked given what Info said of the device's dm
// device just before (info, or infoErr), under the same lock.
func (p *Pool) activateKnown(ctx context.Context, rec *record, info devmapper.Info, infoErr error) (string, error) {
	dm := p.dmName(rec.Name)
	err := infoErr
	if err == nil && info.LiveTable && !info.Suspended {
		return p.dm.NodeOf(info)
	}
	if err == nil {
		// Left half-made by a crash: start over.
		if err := p.dm.Remove(dm, devmapper.RemoveOptions{}); err != nil {
			return "", fmt.Errorf("thinpool: activate %q: remove stale device: %w", rec.Name, err)
		}
	} else if !devmapper.IsNotFound(err) {
		return "", err
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	uuid := fmt.Sprintf("%s-%d", p.prefix, rec.ID)
	if _, err := p.dm.Create(dm, uuid); err != nil {
		return "", fmt.Errorf("thinpool: activate %q: %w", rec.Name, err)
	}
	p.step("activate:created")
	if err := p.dm.Load(dm, p.thinTable(rec), false); err != nil {
		return "", errors.Join(fmt.Errorf("thinpool: activate %q: %w", rec.Name, err), p.dm.Remove(dm, devmapper.RemoveOptions{}))
	}
	p.step("activate:loaded")
	if _, err := p.dm.Resume(dm); err != nil {
		return "", errors.Join(fmt.Errorf("thinpool: activate %q: %w", rec.Name, err), p.dm.Remove(dm, devmapper.RemoveOptions{}))
	}
	p.step("activate:resumed")
	return p.dm.NodePath(dm), nil
}

// Deactivate removes the device's dm device (the thin device and its data
// stay). An open device fails with ErrBusy unless deferred is set, in which
// case the kernel removes it at last close. Deactivating an inactive device
// does nothing.
func (p *Pool) Deactivate(ctx context.Context, name string, deferred bool) error {
	_, release, err := p.lockDevice(name)
	if err != nil {
		return err
	}
	defer release()
	return p.removeDM(ctx, p.dmName(name), deferred)
}

// removeDM removes a dm device, retrying briefly while it is busy (an
// opener closing it), and maps a lasting EBUSY to ErrBusy. A missing device
// counts as removed.
func (p *Pool) removeDM(ctx context.Context, dm string, deferred bool) error {
	err := retryBusy(ctx, 5, 10*time.Millisecond, func() error {
		err := p.dm.Remove(dm, devmapper.RemoveOptions{Deferred: deferred})
		if devmapper.IsNotFound(err) {
			return nil
		}
		return err
	})
	if devmapper.IsBusy(err) {
		return errors.Join(fmt.Errorf("%w: %s", ErrBusy, dm), err)
	}
	return err
}

// retryBusy calls f until it returns anything but EBUSY, at most tries
// times, sleeping base, 2*base, 4*base... in between, or until ctx ends.
func retryBusy(ctx context.Context, tries int, base time.Duration, f func() error) error {
	return retry.Do(ctx, retry.Policy{Tries: tries, Base: base}, retry.On(unix.EBUSY), f)
}

// DeleteOptions modify Delete.
type DeleteOptions struct {
	// Discard the device's blocks first, so a loopback file gives the
	// space back to its filesystem.
	Discard bool
	// Deferred: when the device is open, mark it and delete it once
	// closed (see ProcessDeferred) instead of failing with ErrBusy.
	Deferred bool
}

// Delete deactivates the device and deletes it from the pool. Snapshots of
// it are independent thin devices and stay.
func (p *Pool) Delete(ctx context.Context, name string, opts DeleteOptions) error {
	rec, release, err := p.lockDevice(name)
	if err != nil {
		return err
	}
	defer release()
	return p.deleteLocked(ctx, rec, opts)
}

// deleteLocked deletes a device of any state. The "deleting" intent is
// committed before anything is destroyed (discard, dm device, thin id), so
// a crash at any point leaves a record that recovery finishes.
func (p *Pool) deleteLocked(ctx context.Context, rec *record, opts DeleteOptions) error {
	dm := p.dmName(rec.Name)
	busy := func(err error) error {
		if opts.Deferred && rec.State != StateDeleting {
			return p.deferDelete(ctx, rec)
		}
		return fmt.Errorf("thinpool: delete %q: %w", rec.Name, err)
	}
	// active: there is a dm device to remove. Nobody can make one while
	// we hold the name's lock, unless discard does.
	active := true
	if info, err := p.dm.Info(dm); err == nil && info.OpenCount > 0 {
		return busy(fmt.Errorf("%w: %q is open", ErrBusy, rec.Name))
	} else if devmapper.IsNotFound(err) {
		active = false
	} else if err != nil {
		return err
	}
	prev := *rec
	// A retired record needs no "deleting" mark of its own: Open settles
	// a retired record by asking the pool whether its thin id is still
	// there (settleLocked), so a crash past the message leaves a record
	// that Open drops, and a crash before it one whose deletion the
	// caller (layerstore's worker) starts again. Its name was freed by
	// Retire, so nothing can take it meanwhile.
	marked := rec.State == StateDeleting || rec.State == StateRetired
	if !marked {
		if err := p.commitState(rec, StateDeleting, 0); err != nil {
			return err
		}
		p.step("delete:marked")
	}
	// revert puts back the record of a delete that did nothing yet.
	revert := func(err error) error {
		if prev.State == StateDeleting {
			return fmt.Errorf("thinpool: delete %q: %w", rec.Name, err)
		}
		if !marked {
			*rec = prev
			if rerr := p.commitState(rec, prev.State, 0); rerr != nil {
				return errors.Join(fmt.Errorf("thinpool: delete %q: %w", rec.Name, err), rerr)
			}
		}
		return busy(err)
	}
	if opts.Discard && (prev.State == StateReady || prev.State == StateRetired) {
		if err := p.discard(ctx, rec); err != nil {
			if errors.Is(err, ErrBusy) {
				return revert(err)
			}
			return fmt.Errorf("thinpool: delete %q (recovery finishes it at next open): %w", rec.Name, err)
		}
		p.step("delete:discarded")
		active = true
	}
	if active {
		if err := p.removeDM(ctx, dm, false); err != nil {
			if errors.Is(err, ErrBusy) {
				return revert(err)
			}
			return fmt.Errorf("thinpool: delete %q (recovery finishes it at next open): %w", rec.Name, err)
		}
	}
	p.msgMu.Lock()
	defer p.msgMu.Unlock()
	err := p.runLocked(change{
		op:     "delete",
		rec:    rec,
		marked: true, // committed "deleting" above, or by an earlier attempt
		send:   func() error { return p.deleteThinLocked(rec.ID) },
		failed: StateDeleting,
	})
	if err != nil {
		return fmt.Errorf("thinpool: delete %q (retried by ProcessDeferred and at next open): %w", rec.Name, err)
	}
	return nil
}

func (p *Pool) deferDelete(ctx context.Context, rec *record) error {
	if err := p.commitState(rec, StateDeferredDelete, 0); err != nil {
		return err
	}
	return p.removeDM(ctx, p.dmName(rec.Name), true)
}

// ProcessDeferred deletes the devices whose deletion was deferred and that
// are now closed, and retries deletions that failed half-way. Open calls it
// too.
func (p *Pool) ProcessDeferred(ctx context.Context) error {
	done, err := p.enter()
	if err != nil {
		return err
	}
	defer done()
	recs, err := p.st.all()
	if err != nil {
		return err
	}
	var names []string
	for _, r := range recs {
		if r.State == StateDeferredDelete || r.State == StateDeleting {
			names = append(names, r.Name)
		}
	}
	return p.processNames(ctx, names)
}

func (p *Pool) processNames(ctx context.Context, names []string) error {
	var errs []error
	for _, name := range names {
		unlock := p.locks.Lock(name)
		cur, err := p.st.get(name)
		if err == nil && (cur.State == StateDeferredDelete || cur.State == StateDeleting) {
			err = p.deleteLocked(ctx, cur, DeleteOptions{})
		}
		unlock()
		if err != nil && !errors.Is(err, ErrNotFound) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Resize grows a device to size bytes. An active device's table is
// reloaded; the filesystem on it is the caller's to grow.
func (p *Pool) Resize(ctx context.Context, name string, size int64) error {
	if _, err := checkSize(size); err != nil {
		return err
	}
	rec, release, err := p.lockDevice(name)
	if err != nil {
		return err
	}
	defer release()
	if size < rec.Size {
		return fmt.Errorf("thinpool: resize %q to %d bytes: shrinking (from %d) is not supported", name, size, rec.Size)
	}
	if size == rec.Size {
		return nil
	}
	oldSize := rec.Size
	rec.Size = size
	if err := p.st.update(func(tx txn) error { return putRecord(tx, rec) }); err != nil {
		return err
	}
	dm := p.dmName(name)
	info, err := p.dm.Info(dm)
	if devmapper.IsNotFound(err) || (err == nil && !info.LiveTable) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := p.reload(dm, p.thinTable(rec)); err != nil {
		rec.Size = oldSize
		return errors.Join(fmt.Errorf("thinpool: resize %q: %w", name, err), p.st.update(func(tx txn) error { return putRecord(tx, rec) }))
	}
	return nil
}

// Lookup describes one device from the store alone, without asking the
// kernel: Active, Path, OpenCount and MappedBytes are left zero. Use it
// where only the name, id, size, parent and state matter (existence checks
// on a hot path); Get also reads the live state, at one or two ioctls.
func (p *Pool) Lookup(name string) (Device, error) { return p.device(name, false) }

// Get describes one device, with its live state from the kernel.
func (p *Pool) Get(name string) (Device, error) { return p.device(name, true) }

// device describes one device; live: with its live state.
func (p *Pool) device(name string, live bool) (Device, error) {
	done, err := p.enter()
	if err != nil {
		return Device{}, err
	}
	defer done()
	rec, err := p.st.get(name)
	if err != nil {
		return Device{}, err
	}
	if !live {
		return recordDevice(rec), nil
	}
	return p.describe(rec, nil), nil
}

// List describes every device, in name order.
func (p *Pool) List() ([]Device, error) {
	done, err := p.enter()
	if err != nil {
		return nil, err
	}
	defer done()
	recs, err := p.st.all()
	if err != nil {
		return nil, err
	}
	live, err := p.dm.List()
	if err != nil {
		return nil, err
	}
	active := make(map[string]bool, len(live))
	for _, l := range live {
		active[l.Name] = true
	}
	out := make([]Device, 0, len(recs))
	for _, r := range recs {
		out = append(out, p.describe(r, active))
	}
	return out, nil
}

// recordDevice is the part of a Device the store knows.
func recordDevice(r *record) Device {
	return Device{Name: r.Name, ID: r.ID, Size: r.Size, Parent: r.Parent, State: r.State,
		DeferredDelete: r.State == StateDeferredDelete, Created: r.Created, Labels: maps.Clone(r.Labels), Fault: r.Fault, Retired: r.Retired}
}

// describe fills in the live state. With a non-nil active map, devices not
// in it are known inactive without asking the kernel.
func (p *Pool) describe(r *record, active map[string]bool) Device {
	d := recordDevice(r)
	dm := p.dmName(r.Name)
	if active != nil && !active[dm] {
		return d
	}
	log := p.log.WithField("device", r.Name)
	info, err := p.dm.Info(dm)
	if err != nil && !devmapper.IsNotFound(err) {
		log.WithError(err).Warn("describe: device info")
	}
	if err != nil || !info.LiveTable {
		return d
	}
	d.Active, d.Path, d.OpenCount = true, p.dm.NodePath(dm), int(info.OpenCount)
	lines, err := p.dm.Status(dm, devmapper.StatusOptions{NoFlush: true})
	if err != nil || len(lines) != 1 {
		log.WithError(err).WithField("targets", len(lines)).Warn("describe: thin status")
		return d
	}
	st, err := devmapper.ParseThinStatus(lines[0].Params)
	if err != nil {
		log.WithError(err).Warn("describe: thin status")
		return d
	}
	d.MappedBytes = int64(st.MappedSectors.Bytes())
	return d
}
