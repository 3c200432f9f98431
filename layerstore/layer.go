package layerstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

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
		return fmt.Errorf("%w: layer size %d: want a positive multiple of 512", ErrInvalidOptions, size)
	}
	if size != 0 && size < s.baseSize {
		return fmt.Errorf("%w: layer size %s is below the base device size %s", ErrInvalidOptions,
			units.BytesSize(float64(size)), units.BytesSize(float64(s.baseSize)))
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
		if !deleting(info) {
			return fmt.Errorf("%w: %q", ErrExists, name)
		}
		// A pending deletion of the same name: finish it if it can be.
		perr := s.retryDeletions(ctx)
		if _, err := s.pool.Lookup(dev); err == nil {
			return fmt.Errorf("%w: %q is still being deleted: %w", ErrExists, name, perr)
		}
	} else if !errors.Is(err, thinpool.ErrNotFound) {
		return fmt.Errorf("layerstore: create %q: %w", name, err)
	}

	parentDev := baseDevice
	if parent != "" {
		parentDev = DeviceName(parent)
	}
	pinfo, err := s.pool.Lookup(parentDev)
	if errors.Is(err, thinpool.ErrNotFound) || (err == nil && deleting(pinfo)) {
		return fmt.Errorf("%w: %q (creating %q)", ErrParentNotFound, parent, name)
	}
	if err != nil {
		return fmt.Errorf("layerstore: create %q: parent %q: %w", name, parent, err)
	}
	want := max(pinfo.Size, s.baseSize)
	if size != 0 {
		if size < pinfo.Size {
			return fmt.Errorf("%w: layer size %s is below the size of parent %q (%s)", ErrInvalidOptions,
				units.BytesSize(float64(size)), parent, units.BytesSize(float64(pinfo.Size)))
		}
		want = size
	}

	if _, err := s.pool.Snapshot(ctx, dev, parentDev, want); err != nil {
		if errors.Is(err, thinpool.ErrNotFound) {
			return fmt.Errorf("%w: %q (creating %q): %w", ErrParentNotFound, parent, name, err)
		}
		return fmt.Errorf("layerstore: create %q: %w", name, err)
	}
	s.step(StepCreateSnapshot)
	if want > pinfo.Size {
		if err := s.growLocked(ctx, name, dev); err != nil {
			derr := s.pool.Delete(ctx, dev, thinpool.DeleteOptions{})
			return errors.Join(fmt.Errorf("layerstore: create %q: grow its filesystem to %s: %w", name, units.BytesSize(float64(want)), err), derr)
		}
		s.step(StepCreateGrown)
	}
	s.log.WithFields(logrus.Fields{"layer": name, "parent": parent, "size": want}).Debug("layer created")
	return nil
}

// Remove unmounts layer name if it is mounted, deactivates and deletes its
// device. When the device is held by someone else, Remove fails with
// ErrBusy, unless deferred deletion is on: then the layer is gone for the
// store (Exists is false) and its device is deleted once closed.
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
	if m := s.mountOf(name); m != nil {
		if m.refs > 0 {
			s.log.WithFields(logrus.Fields{"layer": name, "references": m.refs}).Warn("removing a layer that is still in use")
		}
		if err := s.unmountLocked(name, s.opts.DeferredDeletion); err != nil {
			return fmt.Errorf("layerstore: remove %q: %w", name, err)
		}
	}
	s.step(StepRemoveUnmounted)
	err = s.pool.Delete(ctx, dev, thinpool.DeleteOptions{Discard: s.opts.Discard, Deferred: s.opts.DeferredDeletion})
	if errors.Is(err, thinpool.ErrBusy) {
		if s.opts.DeferredRemoval {
			// The layer stays, but its device goes away at last close.
			if derr := s.pool.Deactivate(ctx, dev, true); derr != nil {
				err = errors.Join(err, derr)
			}
		}
		return fmt.Errorf("%w: remove %q: %w", ErrBusy, name, err)
	}
	if err != nil {
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
	return err == nil && info.State == thinpool.StateReady
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
	if err != nil || deleting(dev) {
		if err == nil || errors.Is(err, thinpool.ErrNotFound) {
			return Layer{}, fmt.Errorf("%w: %q", ErrNotFound, name)
		}
		return Layer{}, fmt.Errorf("layerstore: %q: %w", name, err)
	}
	return Layer{Name: name, Device: dev}, nil
}

// Count counts the layers, and the layer devices whose deletion is pending
// (deferred, or started and not finished).
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
			continue
		}
		if deleting(dev) {
			pending++
		} else {
			layers++
		}
	}
	return layers, pending, nil
}

// deleting reports whether a device is on its way out: its deletion is
// deferred until it is closed, or was started and did not finish.
func deleting(dev thinpool.Device) bool {
	return dev.DeferredDelete || dev.State == thinpool.StateDeleting
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

// startDeferredWorker retries deferred deletions every DeferredInterval
// until Close.
func (s *Store) startDeferredWorker() {
	ctx, cancel := context.WithCancel(context.Background())
	s.stopDeferred = cancel
	s.deferredDone = make(chan struct{})
	go func() {
		defer close(s.deferredDone)
		t := time.NewTicker(s.opts.DeferredInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			done, err := s.enter()
			if err != nil {
				return
			}
			if err := s.retryDeletions(ctx); err != nil {
				s.log.WithError(err).Debug("deletions still pending")
			}
			done()
		}
	}()
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
