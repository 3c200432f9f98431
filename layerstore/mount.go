package layerstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/fsys"
	"github.com/dmthin/dmthin/thinpool"
)

// mount is a layer mounted at its mount point. refs counts the Gets not yet
// matched by a Put; 0 for a mount adopted from an earlier process.
type mount struct {
	refs int
}

func (s *Store) mountOf(name string) *mount {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mounts[name]
}

func (s *Store) setMount(name string, m *mount) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m == nil {
		delete(s.mounts, name)
	} else {
		s.mounts[name] = m
	}
}

func (s *Store) mountedNames() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.mounts))
	for name := range s.mounts {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// MountOptions are the mount(2) flags and filesystem data of a layer
// mount. The adapters build them from their own option syntax.
type MountOptions struct {
	Flags uintptr
	Data  string
}

// Get mounts layer name (on first use) and returns the path of its root
// (the mount point, or RootfsDir inside it). Each Get needs a Put. opts are
// used by the Get that mounts; later ones share its mount.
func (s *Store) Get(ctx context.Context, name string, opts MountOptions) (string, error) {
	release, err := s.lockLayer(name)
	if err != nil {
		return "", err
	}
	defer release()
	mp := s.mountPoint(name)
	root := filepath.Join(mp, s.opts.RootfsDir)
	if m := s.mountOf(name); m != nil {
		m.refs++
		return root, nil
	}
	s.work.setIdle(name, false) // its device is in use again
	dev := DeviceName(name)
	if info, err := s.pool.Lookup(dev); errors.Is(err, thinpool.ErrNotFound) || (err == nil && !usable(info)) {
		return "", fmt.Errorf("%w: %q", ErrNotFound, name)
	} else if err != nil {
		return "", fmt.Errorf("layerstore: get %q: %w", name, err)
	}
	node, err := s.pool.Activate(ctx, dev)
	if err != nil {
		return "", fmt.Errorf("layerstore: get %q: %w", name, err)
	}
	if err := mountDevice(node, mp, s.fs.Type(), opts.Flags, fsys.JoinMountData(s.fs.MountData(), opts.Data)); err != nil {
		return "", errors.Join(fmt.Errorf("layerstore: get %q: %w", name, err), removeIfEmpty(mp), s.pool.Deactivate(ctx, dev, false))
	}
	if err := s.fs.Mounted(node); err != nil {
		err = fmt.Errorf("layerstore: get %q: %w", name, err)
		return "", errors.Join(err, unmount(mp, false), removeIfEmpty(mp), s.pool.Deactivate(ctx, dev, false))
	}
	if fi, err := os.Lstat(root); err != nil || !fi.IsDir() {
		err = fmt.Errorf("layerstore: get %q: the layer's filesystem has no %s directory (not made by this store?)", name, s.opts.RootfsDir)
		return "", errors.Join(err, unmount(mp, false), removeIfEmpty(mp), s.pool.Deactivate(ctx, dev, false))
	}
	s.step(StepGetMounted)
	s.setMount(name, &mount{refs: 1})
	s.log.WithFields(logrus.Fields{"layer": name, "device": node}).Debug("layer mounted")
	return root, nil
}

// Put releases a Get. The last one unmounts the layer; its device is
// deactivated by the background worker (deferred, when DeferredRemoval is
// on and the device is still held by someone else), since nobody waits
// for that. A device held by someone else without DeferredRemoval is
// reported with ErrBusy, as it cannot be deactivated.
func (s *Store) Put(ctx context.Context, name string) error {
	release, err := s.lockLayer(name)
	if err != nil {
		return err
	}
	defer release()
	m := s.mountOf(name)
	if m == nil {
		return fmt.Errorf("%w: %q", ErrNotMounted, name)
	}
	if m.refs > 1 {
		m.refs--
		return nil
	}
	if err := s.unmountLocked(name, false); err != nil {
		return fmt.Errorf("layerstore: put %q: %w", name, err)
	}
	s.step(StepPutUnmounted)
	dev := DeviceName(name)
	if !s.opts.DeferredRemoval {
		if err := s.waitClosed(ctx, dev); err != nil {
			return fmt.Errorf("%w: put %q: unmounted, but the device is held elsewhere: %w", ErrBusy, name, err)
		}
	}
	s.work.setIdle(name, true)
	s.work.wake()
	return nil
}

// waitClosed waits a little for dev to have no opener: the filesystem's
// last reference to it can be dropped by another task (one syncing, say)
// just after umount returns. It fails with thinpool.ErrBusy if it stays
// open for about 1.3 s (150 ms was too short under emulation: the
// graphdriver's TestConcurrentLayers saw the parent still open then).
func (s *Store) waitClosed(ctx context.Context, dev string) error {
	for i := 0; ; i++ {
		info, err := s.pool.Get(dev)
		if err != nil {
			return err
		}
		if info.OpenCount == 0 {
			return nil
		}
		if i == 7 {
			return fmt.Errorf("%w: %q is open", thinpool.ErrBusy, dev)
		}
		select {
		case <-ctx.Done():
			return errors.Join(fmt.Errorf("%w: %q is open", thinpool.ErrBusy, dev), ctx.Err())
		case <-time.After(time.Duration(10<<i) * time.Millisecond):
		}
	}
}

// Mounted reports whether the store has layer name mounted, and by how
// many Gets not yet Put (0 for a mount adopted from an earlier process).
func (s *Store) Mounted(name string) (mounted bool, refs int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.mounts[name]
	if m == nil {
		return false, 0
	}
	return true, m.refs
}

// unmountLocked unmounts layer name and forgets its mount. detachIfBusy: a
// mount still busy after the retries is detached lazily (the kernel
// finishes when its last user leaves).
func (s *Store) unmountLocked(name string, detachIfBusy bool) error {
	mp := s.mountPoint(name)
	if err := unmount(mp, detachIfBusy); err != nil {
		return err
	}
	s.setMount(name, nil)
	// mnt/ holds the mount points of mounted layers only.
	if err := os.Remove(mp); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.WithError(err).WithField("layer", name).Debug("mount point left behind")
	}
	return nil
}

// growLocked grows the filesystem of layer name (not mounted; its device
// was just made bigger) to its device's size. The resize is done online,
// with the filesystem mounted at the layer's mount point: xfs grows only
// mounted, and resize2fs refuses to grow an unmounted ext4 that was mounted
// since its last full check, which costs more than a mount.
func (s *Store) growLocked(ctx context.Context, name, dev string) error {
	node, err := s.pool.Activate(ctx, dev)
	if err != nil {
		return err
	}
	mp := s.mountPoint(name)
	if err := mountDevice(node, mp, s.fs.Type(), 0, s.fs.MountData()); err != nil {
		return errors.Join(err, s.pool.Deactivate(ctx, dev, false))
	}
	s.step(StepCreateMounted)
	gerr := s.fs.Grow(ctx, node, mp)
	uerr := unmount(mp, false)
	if uerr == nil {
		uerr = os.Remove(mp)
	}
	return errors.Join(gerr, uerr, s.pool.Deactivate(ctx, dev, false))
}

// removeIfEmpty removes an empty mount point directory; one that is not
// there is fine.
func removeIfEmpty(dir string) error {
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// mountDevice mounts the block device node at mp, making mp if needed.
func mountDevice(node, mp, fstype string, flags uintptr, data string) error {
	if err := os.MkdirAll(mp, 0o700); err != nil {
		return fmt.Errorf("mount point: %w", err)
	}
	if err := unix.Mount(node, mp, fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s on %s (%s, %q): %w", node, mp, fstype, data, &os.PathError{Op: "mount", Path: mp, Err: err})
	}
	return nil
}

// unmount unmounts mp, retrying a few times while it is busy (a process
// leaving it). A mount point that is not mounted is fine.
func unmount(mp string, detachIfBusy bool) error {
	var err error
	for i := 0; i < 6; i++ {
		err = unix.Unmount(mp, 0)
		if err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) {
			break
		}
		time.Sleep(time.Duration(10<<i) * time.Millisecond)
	}
	if errors.Is(err, unix.EBUSY) && detachIfBusy {
		if derr := unix.Unmount(mp, unix.MNT_DETACH); derr == nil || errors.Is(derr, unix.EINVAL) {
			return nil
		}
	}
	perr := &os.PathError{Op: "unmount", Path: mp, Err: err}
	if errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("%w: %w", ErrBusy, perr)
	}
	return perr
}
