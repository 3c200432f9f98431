package layerstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/dmthin/dmthin/thinpool"
)

// The methods here serve callers that mount a layer's block device
// themselves (containerd hands the mount to its client) and keep their own
// per-layer metadata in the layer's labels.

// lookupLocked returns layer name's device, or ErrNotFound for a missing
// layer or one on its way out. Callers hold the layer's lock.
func (s *Store) lookupLocked(name string) (thinpool.Device, error) {
	info, err := s.pool.Lookup(DeviceName(name))
	if errors.Is(err, thinpool.ErrNotFound) || (err == nil && !usable(info)) {
		return thinpool.Device{}, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	if err != nil {
		return thinpool.Device{}, fmt.Errorf("layerstore: %q: %w", name, err)
	}
	return info, nil
}

// Activate makes layer name's block device and returns its path, without
// mounting it. Activating an active layer returns its path.
func (s *Store) Activate(ctx context.Context, name string) (string, error) {
	release, err := s.lockLayer(name)
	if err != nil {
		return "", err
	}
	defer release()
	if _, err := s.lookupLocked(name); err != nil {
		return "", err
	}
	s.work.setIdle(name, false)
	node, err := s.pool.Activate(ctx, DeviceName(name))
	if err != nil {
		return "", fmt.Errorf("layerstore: activate %q: %w", name, err)
	}
	return node, nil
}

// Deactivate removes layer name's block device. A device still open
// (mounted by the caller) fails with ErrBusy. A layer the store mounted
// (Get) must be Put first.
func (s *Store) Deactivate(ctx context.Context, name string) error {
	release, err := s.lockLayer(name)
	if err != nil {
		return err
	}
	defer release()
	if _, err := s.lookupLocked(name); err != nil {
		return err
	}
	if m := s.mountOf(name); m != nil {
		return fmt.Errorf("%w: layer %q is mounted by the store (%d references)", ErrBusy, name, m.refs)
	}
	err = s.pool.Deactivate(ctx, DeviceName(name), false)
	if errors.Is(err, thinpool.ErrBusy) {
		return fmt.Errorf("%w: deactivate %q: %w", ErrBusy, name, err)
	}
	return err
}

// SetLabels merges labels into layer name's labels (a key with value ""
// is removed); they are durable when it returns. LabelState is the
// store's own key: SetLabels refuses to change it.
func (s *Store) SetLabels(ctx context.Context, name string, labels map[string]string) error {
	release, err := s.lockLayer(name)
	if err != nil {
		return err
	}
	defer release()
	if _, ok := labels[LabelState]; ok {
		return fmt.Errorf("%w: label %q is the layer store's own", ErrInvalidOptions, LabelState)
	}
	if _, err := s.lookupLocked(name); err != nil {
		return err
	}
	return s.pool.SetLabels(ctx, DeviceName(name), labels)
}

// Layers lists every layer (not those on their way out), with its labels
// and live state.
func (s *Store) Layers() ([]Layer, error) {
	done, err := s.enter()
	if err != nil {
		return nil, err
	}
	defer done()
	devs, err := s.pool.List()
	if err != nil {
		return nil, err
	}
	var out []Layer
	for _, dev := range devs {
		if name, ok := layerName(dev.Name); ok && usable(dev) {
			out = append(out, Layer{Name: name, Device: dev})
		}
	}
	return out, nil
}

// SnapshotOf reports whether layer name was made as a snapshot of layer
// parent ("" for the base device), and when. Since a layer with children
// never changes, what name changed since then is all it differs by from
// parent; callers comparing the two trees can skip what name did not touch.
func (s *Store) SnapshotOf(name, parent string) (created time.Time, ok bool) {
	done, err := s.enter()
	if err != nil {
		return time.Time{}, false
	}
	defer done()
	origin := baseDevice
	if parent != "" {
		origin = DeviceName(parent)
	}
	dev, err := s.pool.Lookup(DeviceName(name))
	if err != nil || dev.Parent != origin || dev.Created.IsZero() {
		return time.Time{}, false
	}
	return dev.Created, true
}
