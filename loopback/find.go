package loopback

import (
	"errors"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Find returns a handle on the loop device bound to the file at path, as
// left by an earlier Attach (in this process or another, before a restart),
// or an error matching ErrNotFound when there is none. Files are matched by
// device and inode number, so a renamed file or a path through a symlink or
// a bind mount still matches. With several devices bound to the file, the
// lowest-numbered one is returned.
//
// The handle is opened read-only; holding it keeps an autoclear device
// bound, as Attach's handle does.
func Find(path string) (*Device, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, &Error{Op: "find", Path: path, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Stat(abs, &st); err != nil {
		return nil, &Error{Op: "stat", Path: abs, Err: err}
	}
	nums, err := listLoops(true)
	if err != nil {
		return nil, err
	}
	for _, n := range nums {
		d, err := openNumber(devDir, n, unix.O_RDONLY)
		if err != nil {
			// Gone since listed (removed, or being torn down).
			if errors.Is(err, unix.ENXIO) || errors.Is(err, unix.ENOENT) {
				continue
			}
			return nil, err
		}
		d.backing = abs
		// Status is read with the device held open, so a match stays
		// bound until the handle is closed.
		status, err := d.Status()
		if err == nil && status.sameFile(&st) {
			return d, nil
		}
		if cerr := d.Close(); cerr != nil {
			return nil, cerr
		}
		if err != nil && !errors.Is(err, unix.ENXIO) {
			return nil, err
		}
	}
	return nil, &Error{Op: "find", Path: abs, Err: ErrNotFound}
}
