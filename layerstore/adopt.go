package layerstore

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

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
	if err := unix.Lstat(path+"/..", &parent); err != nil {
		return false, 0, &os.PathError{Op: "lstat", Path: path + "/..", Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return false, 0, nil
	}
	return st.Dev != parent.Dev, st.Dev, nil
}

// adoptMounts takes over the layers a previous process left mounted under
// mnt/ (it crashed, or was restarted without Close): they count as mounted
// with no references.
func (s *Store) adoptMounts() error {
	entries, err := os.ReadDir(s.mntDir())
	if err != nil {
		return fmt.Errorf("layerstore: %w", err)
	}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		if ValidateName(name) != nil || !e.IsDir() {
			continue
		}
		mounted, _, err := mountedDev(s.mountPoint(name))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !mounted {
			continue
		}
		s.mounts[name] = &mount{}
		s.log.WithField("layer", name).Info("adopted a layer left mounted by an earlier run")
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("layerstore: adopt mounts: %w", err)
	}
	return nil
}
