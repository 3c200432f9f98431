package layerstore

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/docker/go-units"
	"github.com/sirupsen/logrus"

	"github.com/dmthin/dmthin/thinpool"
)

// Create makes layer name as a snapshot of parent, or of the base device
// when parent is "". size 0 gives the layer its parent's size (at least the
// base size); a bigger size makes its device and filesystem that big. On
// error nothing was made.
func (s *Store) Create(ctx context.Context, name, parent string, size int64) error {
	if parent != "" {
		if err := ValidateName(parent); err != nil {
			return fmt.Errorf("parent: %w", err)
		}
	}
	if size < 0 || size%512 != 0 {
		return &FieldError{Field: "Size", Value: fmt.Sprint(size), Err: errors.New("want a positive multiple of 512")}
	}
	if size != 0 && size < s.baseSize {
		return &FieldError{Field: "Size", Value: units.BytesSize(float64(size)),
			Err: fmt.Errorf("below the base device size %s", units.BytesSize(float64(s.baseSize)))}
	}
	release, err := s.lockLayer(name)
	if err != nil {
		return err
	}
	defer release()
	return s.createLocked(ctx, name, parent, size)
}

func (s *Store) createLocked(ctx context.Context, name, parent string, size int64) error {
	dev := DeviceName(name)
	if info, err := s.pool.Lookup(dev); err == nil {
		switch {
		case usable(info):
			return fmt.Errorf("%w: %q", ErrExists, name)
		case deleting(info):
			// A pending deletion of the same name: finish it if it can be.
			perr := s.retryDeletions(ctx)
			if _, err := s.pool.Lookup(dev); err == nil {
				return fmt.Errorf("%w: %q is still being deleted: %w", ErrExists, name, perr)
			}
		default:
			// Half-made, half-removed or faulty: it does not exist for
			// the caller, so it goes before the new one is made.
			s.log.WithFields(logrus.Fields{"layer": name, "state": info.State, "label": info.Labels[LabelState]}).
				Info("deleting what is left of an earlier layer of that name")
			if err := s.dropLocked(ctx, name, false); err != nil {
				return fmt.Errorf("layerstore: create %q: delete what is left of an earlier layer: %w", name, err)
			}
		}
	} else if !errors.Is(err, thinpool.ErrNotFound) {
		return fmt.Errorf("layerstore: create %q: %w", name, err)
	}

	parentDev := baseDevice
	if parent != "" {
		parentDev = DeviceName(parent)
	}
	pinfo, err := s.pool.Lookup(parentDev)
	if errors.Is(err, thinpool.ErrNotFound) || (err == nil && !usable(pinfo)) {
		return fmt.Errorf("%w: %q (creating %q)", ErrParentNotFound, parent, name)
	}
	if err != nil {
		return fmt.Errorf("layerstore: create %q: parent %q: %w", name, parent, err)
	}
	want := max(pinfo.Size, s.baseSize)
	if size != 0 {
		if size < pinfo.Size {
			return &FieldError{Field: "Size", Value: units.BytesSize(float64(size)),
				Err: fmt.Errorf("below the size of parent %q (%s)", parent, units.BytesSize(float64(pinfo.Size)))}
		}
		want = size
	}
	grow := want > pinfo.Size

	// A layer whose filesystem must still be grown is made incomplete, in
	// the same record commit as its device: a crash before the grow is
	// done leaves a layer that Open rolls back, never one that exists
	// with the device's size and its parent's filesystem.
	var opts []thinpool.CreateOption
	if grow {
		opts = append(opts, thinpool.WithLabels(stateLabels(StateIncomplete)))
	}
	if _, err := s.pool.Snapshot(ctx, dev, parentDev, want, opts...); err != nil {
		if errors.Is(err, thinpool.ErrNotFound) {
			return fmt.Errorf("%w: %q (creating %q): %w", ErrParentNotFound, parent, name, err)
		}
		return fmt.Errorf("layerstore: create %q: %w", name, err)
	}
	s.step(StepCreateSnapshot)
	if grow {
		if err := s.growLocked(ctx, name, dev); err != nil {
			derr := s.pool.Delete(ctx, dev, thinpool.DeleteOptions{})
			return errors.Join(fmt.Errorf("layerstore: create %q: grow its filesystem to %s: %w", name, units.BytesSize(float64(want)), err), derr)
		}
		s.step(StepCreateGrown)
		if err := s.pool.SetLabels(ctx, dev, stateLabels("")); err != nil {
			derr := s.pool.Delete(ctx, dev, thinpool.DeleteOptions{})
			return errors.Join(fmt.Errorf("layerstore: create %q: record it complete: %w", name, err), derr)
		}
	}
	s.step(StepCreateDone)
	s.log.WithFields(logrus.Fields{"layer": name, "parent": parent, "size": want}).Debug("layer created")
	return nil
}

// dropLocked deletes what is left of layer name that does not exist
// for the caller (half-made, half-removed, faulty): its mount under mnt/,
// if one of ours, and its device. discard: discard its blocks first.
func (s *Store) dropLocked(ctx context.Context, name string, discard bool) error {
	if m := s.mountOf(name); m != nil {
		if err := s.unmountLocked(name, true); err != nil {
			return err
		}
	}
	err := s.pool.Delete(ctx, DeviceName(name), thinpool.DeleteOptions{Discard: discard})
	if err != nil && !errors.Is(err, thinpool.ErrNotFound) {
		return err
	}
	return removeIfEmpty(s.mountPoint(name))
}

// Remove deletes layer name. A layer with a Get not yet Put is refused
// with ErrBusy: its holder's mount stays intact (the engine Puts, then
// removes). When the device is held by someone else, Remove fails with
// ErrBusy and the layer stays, unless deferred deletion is on: then the
// layer is gone for the store (Exists is false) and its device is deleted
// once closed. A layer that does not exist for the caller (half-made,
// half-removed, faulty) can be removed too.
//
// By default Remove unmounts a mount adopted from an earlier process and
// retires the layer's device (thinpool.Retire: one store commit, and a
// rename of an active device), then returns: the layer no longer exists,
// its name can be used by Create at once, and a crash at any later point
// leaves a retired device that the next Open deletes. The background
// worker discards and deletes the device; Drain waits for it. With
// Options.SyncRemove, Remove deletes the device before it returns.
func (s *Store) Remove(ctx context.Context, name string) error {
	release, err := s.lockLayer(name)
	if err != nil {
		return err
	}
	defer release()
	dev := DeviceName(name)
	info, err := s.pool.Lookup(dev)
	if errors.Is(err, thinpool.ErrNotFound) {
		return fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	if err != nil {
		return fmt.Errorf("layerstore: remove %q: %w", name, err)
	}
	if info.DeferredDelete {
		return nil // its deletion waits for the device to be closed
	}
	if m := s.mountOf(name); m != nil && m.refs > 0 {
		return fmt.Errorf("%w: remove %q: mounted, %d Get(s) not yet Put", ErrBusy, name, m.refs)
	}
	if !usable(info) && !deleting(info) {
		if err := s.dropLocked(ctx, name, s.opts.Discard); err != nil {
			if errors.Is(err, thinpool.ErrBusy) && !errors.Is(err, ErrBusy) {
				// Held elsewhere: ErrBusy, as for any layer.
				return fmt.Errorf("%w: remove %q: %w", ErrBusy, name, err)
			}
			return fmt.Errorf("layerstore: remove %q: %w", name, err)
		}
		return nil
	}
	if s.opts.SyncRemove || !usable(info) {
		return s.removeSyncLocked(ctx, name, info)
	}
	return s.retireLocked(ctx, name)
}

// retireLocked is Remove's default: the layer goes at once, its device is
// the worker's to delete.
func (s *Store) retireLocked(ctx context.Context, name string) error {
	dev := DeviceName(name)
	if s.mountOf(name) != nil {
		// A mount adopted from an earlier process: mnt/<name> must be free
		// for a new layer of that name.
		if err := s.unmountLocked(name, s.opts.DeferredDeletion); err != nil {
			return fmt.Errorf("layerstore: remove %q: %w", name, err)
		}
	}
	s.step(StepRemoveUnmounted)
	s.work.setIdle(name, false)
	_, err := s.pool.Retire(ctx, dev, thinpool.RetireOptions{AllowOpen: s.opts.DeferredDeletion})
	if errors.Is(err, thinpool.ErrBusy) {
		// Refused before anything was changed: the layer stays.
		return s.removeBusy(ctx, name, err)
	}
	if err != nil {
		return fmt.Errorf("layerstore: remove %q: %w", name, err)
	}
	s.step(StepRemoveRetired)
	if err := removeIfEmpty(s.mountPoint(name)); err != nil {
		s.log.WithError(err).WithField("layer", name).Warn("mount point left behind")
	}
	s.work.wake()
	s.log.WithField("layer", name).Debug("layer removed; its device is deleted in the background")
	return nil
}

// removeBusy is Remove's answer when the pool refused because layer
// name's device is held elsewhere: the layer stays, and with
// DeferredRemoval its device goes away at last close.
func (s *Store) removeBusy(ctx context.Context, name string, err error) error {
	if s.opts.DeferredRemoval {
		if derr := s.pool.Deactivate(ctx, DeviceName(name), true); derr != nil {
			err = errors.Join(err, derr)
		}
	}
	return fmt.Errorf("%w: remove %q: %w", ErrBusy, name, err)
}

// removeSyncLocked is Remove with SyncRemove, and for a layer whose
// deletion the pool started under its own name: the device is deleted
// before it returns.
//
// The removal is durable before anything of the layer is changed: the
// layer is first marked removing in its record, so a crash at any later
// point leaves a layer that does not exist, whose deletion Open finishes.
func (s *Store) removeSyncLocked(ctx context.Context, name string, info thinpool.Device) error {
	dev := DeviceName(name)
	marked := false
	if usable(info) {
		if err := s.pool.SetLabels(ctx, dev, stateLabels(StateRemoving)); err != nil {
			return fmt.Errorf("layerstore: remove %q: %w", name, err)
		}
		marked = true
		s.step(StepRemoveMarked)
	}
	// unmark makes the layer exist again when nothing of it was changed.
	unmark := func(err error) error {
		if marked {
			err = errors.Join(err, s.pool.SetLabels(ctx, dev, stateLabels("")))
		}
		return err
	}
	if s.mountOf(name) != nil {
		if err := s.unmountLocked(name, s.opts.DeferredDeletion); err != nil {
			return unmark(fmt.Errorf("layerstore: remove %q: %w", name, err))
		}
	}
	s.step(StepRemoveUnmounted)
	s.work.setIdle(name, false)
	err := s.pool.Delete(ctx, dev, thinpool.DeleteOptions{Discard: s.opts.Discard, Deferred: s.opts.DeferredDeletion})
	if errors.Is(err, thinpool.ErrBusy) {
		// Refused before any block was discarded or the device deleted:
		// the layer stays as it was.
		return s.removeBusy(ctx, name, unmark(err))
	}
	if err != nil {
		// Its blocks may be discarded already: it stays marked removing
		// (it does not exist), and Open finishes the deletion.
		return fmt.Errorf("layerstore: remove %q: %w", name, err)
	}
	s.step(StepRemoveDeleted)
	if err := os.Remove(s.mountPoint(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.WithError(err).WithField("layer", name).Warn("mount point left behind")
	}
	s.log.WithField("layer", name).Debug("layer removed")
	return nil
}

// Exists reports whether layer name exists (and is not being deleted).
func (s *Store) Exists(name string) bool {
	done, err := s.enter()
	if err != nil {
		return false
	}
	defer done()
	if ValidateName(name) != nil {
		return false
	}
	info, err := s.pool.Lookup(DeviceName(name))
	return err == nil && usable(info)
}

// Layer describes one layer's device.
type Layer struct {
	Name   string
	Device thinpool.Device
}

// Lookup describes layer name, with its device's live state (active,
// block node, mapped bytes).
func (s *Store) Lookup(name string) (Layer, error) {
	done, err := s.enter()
	if err != nil {
		return Layer{}, err
	}
	defer done()
	if err := ValidateName(name); err != nil {
		return Layer{}, err
	}
	dev, err := s.pool.Get(DeviceName(name))
	if err != nil || !usable(dev) {
		if err == nil || errors.Is(err, thinpool.ErrNotFound) {
			return Layer{}, fmt.Errorf("%w: %q", ErrNotFound, name)
		}
		return Layer{}, fmt.Errorf("layerstore: %q: %w", name, err)
	}
	return Layer{Name: name, Device: dev}, nil
}

// Count counts the layers, and the layer devices that are not layers for
// the caller: deletion pending (retired by Remove, deferred, or started and
// not finished), half-made or faulty.
func (s *Store) Count() (layers, pending int, err error) {
	done, err := s.enter()
	if err != nil {
		return 0, 0, err
	}
	defer done()
	devs, err := s.pool.List()
	if err != nil {
		return 0, 0, err
	}
	for _, dev := range devs {
		if _, ok := layerName(dev.Name); !ok {
			if _, ok := layerName(dev.Retired); ok {
				pending++ // removed, its device not yet deleted
			}
			continue
		}
		if usable(dev) {
			layers++
		} else {
			pending++
		}
	}
	return layers, pending, nil
}

// retryDeletions finishes the deletions that can be finished now: deferred
// ones whose device was closed (thinpool's ProcessDeferred), and layers
// whose deletion the pool started but could not finish. The latter happens
// when a deferred removal has just fired: the kernel removes the device in
// a work queue, and until its table is torn down the pool refuses to delete
// the thin device (EBUSY); thinpool then leaves the record "deleting" for
// its next Open, and retrying the delete settles it now.
func (s *Store) retryDeletions(ctx context.Context) error {
	errs := []error{s.pool.ProcessDeferred(ctx)}
	devs, err := s.pool.List()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, dev := range devs {
		if _, ok := layerName(dev.Name); ok && dev.State == thinpool.StateDeleting {
			if err := s.pool.Delete(ctx, dev.Name, thinpool.DeleteOptions{}); err != nil && !errors.Is(err, thinpool.ErrNotFound) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// PoolStatus is the thin pool's status in numbers.
func (s *Store) PoolStatus(ctx context.Context) (thinpool.Status, error) {
	done, err := s.enter()
	if err != nil {
		return thinpool.Status{}, err
	}
	defer done()
	return s.pool.Status(ctx)
}
