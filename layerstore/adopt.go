package layerstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/thinpool"
)

// What Open finds and settles, before the store is used: the temporary
// mounts of the base a killed process left, the mounts under mnt/, and the
// layers whose record says a change was cut short.

// baseMountPrefix names the temporary mount points of the base, under the
// root.
const baseMountPrefix = ".base-mnt-"

// mountedDev reports whether path is the root of a mount other than the
// one of its parent directory, and the device number of the filesystem
// mounted there. For a filesystem on a block device (ours: ext4 on a thin
// device) that is the block device's number. Reading it with stat rather
// than from /proc/self/mountinfo keeps it right however the root was
// reached (symbolic links, bind mounts of the root's parent).
func mountedDev(path string) (mounted bool, dev uint64, err error) {
	var st, parent unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return false, 0, &os.PathError{Op: "lstat", Path: path, Err: err}
	}
	if err := unix.Lstat(filepath.Dir(path), &parent); err != nil {
		return false, 0, &os.PathError{Op: "lstat", Path: filepath.Dir(path), Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return false, 0, nil
	}
	return st.Dev != parent.Dev, st.Dev, nil
}

// unmountAll unmounts everything stacked on mp (detaching what stays busy)
// and removes the directory.
func unmountAll(mp string) error {
	for i := 0; i < 16; i++ {
		mounted, _, err := mountedDev(mp)
		if err != nil {
			return err
		}
		if !mounted {
			return removeIfEmpty(mp)
		}
		if err := unmount(mp, true); err != nil {
			return err
		}
	}
	return fmt.Errorf("%s: still mounted after 16 unmounts", mp)
}

// cleanupBaseMounts unmounts and removes the temporary mount points of the
// base that a process killed while formatting or growing it left behind:
// they hold the base device open, and nothing could delete or deactivate
// it.
func (s *Store) cleanupBaseMounts() error {
	entries, err := os.ReadDir(s.root)
	if err != nil {
		return fmt.Errorf("layerstore: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), baseMountPrefix) || !e.IsDir() {
			continue
		}
		mp := filepath.Join(s.root, e.Name())
		s.log.WithField("path", mp).Info("removing a temporary mount of the base left by an earlier run")
		if err := unmountAll(mp); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("layerstore: temporary base mounts: %w", err)
	}
	return nil
}

// ownDevice reports whether the block device dev is a thin device of this
// store's pool: the device-mapper lists the pool among the devices it is
// built on (/sys/dev/block/M:m/slaves).
func (s *Store) ownDevice(dev uint64) bool {
	dir := fmt.Sprintf("/sys/dev/block/%d:%d/slaves", unix.Major(dev), unix.Minor(dev))
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	want := s.pool.Dev().String()
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "dev"))
		if err == nil && strings.TrimSpace(string(b)) == want {
			return true
		}
	}
	return false
}

// layerDev returns the device number of layer name's active device, or
// false when the layer is not usable or its device not active.
func (s *Store) layerDev(name string) (uint64, bool) {
	info, err := s.pool.Get(DeviceName(name))
	if err != nil || !usable(info) || !info.Active {
		return 0, false
	}
	var st unix.Stat_t
	if err := unix.Stat(info.Path, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return 0, false
	}
	return st.Rdev, true
}

// adoptMounts takes over the layers a previous process left mounted under
// mnt/ (it crashed, or was restarted without Close): they count as mounted
// with no references. Only what the store made is adopted: the mount
// point's name is a layer that exists and the mounted filesystem is on that
// layer's device. Other mounts of the pool's devices there (a layer cut
// short, a device mounted under the wrong name) are unmounted; mounts of
// anything else are someone else's and left alone.
func (s *Store) adoptMounts() error {
	entries, err := os.ReadDir(s.mntDir())
	if err != nil {
		return fmt.Errorf("layerstore: %w", err)
	}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		if !e.IsDir() {
			continue
		}
		mp := s.mountPoint(name)
		mounted, dev, err := mountedDev(mp)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		log := s.log.WithFields(logrus.Fields{"layer": name, "path": mp})
		switch {
		case !mounted:
			// An empty mount point a crash left: nothing to adopt.
			if ValidateName(name) == nil {
				_ = removeIfEmpty(mp)
			}
		case ValidateName(name) == nil && s.isLayerDev(name, dev):
			s.mounts[name] = &mount{}
			log.Info("adopted a layer left mounted by an earlier run")
		case s.ownDevice(dev):
			log.Warn("unmounting a device of this pool that is not the layer of that name")
			if err := unmountAll(mp); err != nil {
				errs = append(errs, err)
			}
		default:
			log.Warn("leaving alone a mount under mnt/ that is not this store's")
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("layerstore: adopt mounts: %w", err)
	}
	return nil
}

func (s *Store) isLayerDev(name string, dev uint64) bool {
	want, ok := s.layerDev(name)
	return ok && want == dev
}

// settleLayers finishes what a crash cut short, by the state label of each
// layer: an incomplete layer is rolled back, a layer being removed is
// deleted, and a layer whose device was left active without a mount is
// queued for deactivation. (Devices retired by Remove are the worker's:
// it starts with them.) One that cannot be settled now (its device held by someone
// else) is reported and left for Create, Remove or the next Open: it does
// not exist for the caller meanwhile, and the store opens.
func (s *Store) settleLayers(ctx context.Context) error {
	devs, err := s.pool.List()
	if err != nil {
		return fmt.Errorf("layerstore: %w", err)
	}
	for _, dev := range devs {
		name, ok := layerName(dev.Name)
		if !ok || dev.State != thinpool.StateReady {
			continue
		}
		if usable(dev) && dev.Active && s.mounts[name] == nil {
			// Left active by a Put whose deactivation a crash cut short
			// (or by another user of the pool): the worker deactivates it.
			s.work.setIdle(name, true)
		}
		state := dev.Labels[LabelState]
		if state == "" {
			continue
		}
		log := s.log.WithFields(logrus.Fields{"layer": name, "state": state})
		var err error
		switch state {
		case StateIncomplete:
			log.Info("rolling back a layer whose creation was cut short")
			err = s.dropLocked(ctx, name, false)
		case StateRemoving:
			log.Info("finishing the removal of a layer")
			err = s.dropLocked(ctx, name, s.opts.Discard)
		default:
			log.Warn("unknown layer state label; leaving the layer as it is")
		}
		if err != nil {
			log.WithError(err).Warn("could not settle the layer now; it does not exist, Create, Remove or the next Open retries")
		}
	}
	return nil
}
