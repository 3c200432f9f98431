package loopback

import (
	"errors"
	"fmt"
	"math"
	"sync"

	"golang.org/x/sys/unix"
)

// Device is a handle on a loop device: an open file descriptor on its node,
// plus what was known when it was opened. It is safe for concurrent use.
// Path, Number, Dev and BackingFile keep working after Close.
type Device struct {
	number       int
	path         string // "/dev/loopN"
	backing      string // absolute path of the backing file
	major, minor uint32

	mu sync.Mutex
	fd int // -1 once closed
}

// openNumber opens the node of loop device n in dir, making the node if it is
// missing, and checks that it is the block device the kernel calls loopN.
func openNumber(dir string, n int, flags int) (*Device, error) {
	p, err := ensureNode(dir, n)
	if err != nil {
		return nil, err
	}
	fd, err := openRetry(p, flags|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &Error{Op: "open", Path: p, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, errors.Join(&Error{Op: "fstat", Path: p, Err: err}, closeErr(fd, p))
	}
	maj, min := unix.Major(st.Rdev), unix.Minor(st.Rdev)
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return nil, errors.Join(&Error{Op: "fstat", Path: p, Err: fmt.Errorf("%w: not a block device", ErrNotLoop)}, closeErr(fd, p))
	}
	if kmaj, kmin, err := sysfsDev(n); err == nil && (kmaj != maj || kmin != min) {
		return nil, errors.Join(&Error{Op: "fstat", Path: p,
			Err: fmt.Errorf("%w: node is %d:%d, the kernel's loop%d is %d:%d", ErrNotLoop, maj, min, n, kmaj, kmin)},
			closeErr(fd, p))
	}
	return &Device{number: n, path: p, major: maj, minor: min, fd: fd}, nil
}

func closeErr(fd int, path string) error {
	if err := unix.Close(fd); err != nil {
		return &Error{Op: "close", Path: path, Err: err}
	}
	return nil
}

// Path returns the device node, "/dev/loopN".
func (d *Device) Path() string {
	if d == nil {
		return ""
	}
	return d.path
}

// Number returns N of loopN.
func (d *Device) Number() int {
	if d == nil {
		return -1
	}
	return d.number
}

// Dev returns the block device number of the loop device, as device-mapper
// tables name it ("7:3").
func (d *Device) Dev() (major, minor uint32) {
	if d == nil {
		return 0, 0
	}
	return d.major, d.minor
}

// BackingFile returns the absolute path of the backing file as it was given
// to Attach or Find (the file may since have been renamed or removed).
func (d *Device) BackingFile() string {
	if d == nil {
		return ""
	}
	return d.backing
}

// Size returns the size of the loop device in bytes (BLKGETSIZE64).
func (d *Device) Size() (int64, error) {
	var size uint64
	err := d.do("BLKGETSIZE64", func(fd int) error {
		var err error
		size, err = unix.IoctlGetUint64(fd, unix.BLKGETSIZE64)
		return err
	})
	if err != nil {
		return 0, err
	}
	if size > math.MaxInt64 {
		return 0, &Error{Op: "BLKGETSIZE64", Path: d.path, File: d.backing, Err: unix.EOVERFLOW}
	}
	return int64(size), nil
}

// SetCapacity makes the loop device take the current size of its backing
// file (LOOP_SET_CAPACITY), after CreateSparse grew it. On a handle from
// Find, which is opened read-only, it needs CAP_SYS_ADMIN.
func (d *Device) SetCapacity() error {
	return d.do("LOOP_SET_CAPACITY", func(fd int) error {
		return unix.IoctlSetInt(fd, unix.LOOP_SET_CAPACITY, 0)
	})
}

// Status returns the kernel's view of the binding (LOOP_GET_STATUS64). An
// unbound device gives ENXIO.
func (d *Device) Status() (Status, error) {
	var st Status
	err := d.do("LOOP_GET_STATUS64", func(fd int) error {
		info, err := unix.IoctlLoopGetStatus64(fd)
		if err == nil {
			st = statusFromInfo(info)
		}
		return err
	})
	return st, err
}

// Detach asks the kernel to unbind the loop device from its file
// (LOOP_CLR_FD), then closes the handle, whatever the outcome. When nobody
// else holds the device open it is unbound when Detach returns. When others
// do (a mount, a device-mapper table, another handle), the kernel marks it
// autoclear and unbinds it at their last close (very old kernels refused
// with EBUSY). Errors keep the errno: errors.Is(err, unix.EBUSY), and
// unix.ENXIO for a device that was no longer bound.
func (d *Device) Detach() error {
	if d == nil {
		return &Error{Op: "LOOP_CLR_FD", Err: ErrClosed}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fd < 0 {
		return &Error{Op: "LOOP_CLR_FD", Path: d.path, File: d.backing, Err: ErrClosed}
	}
	var errs []error
	if err := unix.IoctlSetInt(d.fd, unix.LOOP_CLR_FD, 0); err != nil {
		errs = append(errs, &Error{Op: "LOOP_CLR_FD", Path: d.path, File: d.backing, Err: err})
	}
	errs = append(errs, d.closeLocked())
	return joinErrs(errs...)
}

// Close closes the handle and nothing more: the binding stays unless the
// device was attached with Autoclear and this was its last opener. Closing
// a closed handle does nothing.
func (d *Device) Close() error {
	if d == nil {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closeLocked()
}

func (d *Device) closeLocked() error {
	if d.fd < 0 {
		return nil
	}
	fd := d.fd
	d.fd = -1
	return closeErr(fd, d.path)
}

// do runs f on the open descriptor, holding the lock so that Close cannot
// close it underneath, and wraps the errno f returns.
func (d *Device) do(op string, f func(fd int) error) error {
	if d == nil {
		return &Error{Op: op, Err: ErrClosed}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fd < 0 {
		return &Error{Op: op, Path: d.path, File: d.backing, Err: ErrClosed}
	}
	if err := f(d.fd); err != nil {
		return &Error{Op: op, Path: d.path, File: d.backing, Err: err}
	}
	return nil
}

// joinErrs is errors.Join that returns a lone error as itself.
func joinErrs(errs ...error) error {
	var kept []error
	for _, err := range errs {
		if err != nil {
			kept = append(kept, err)
		}
	}
	switch len(kept) {
	case 0:
		return nil
	case 1:
		return kept[0]
	}
	return errors.Join(kept...)
}
