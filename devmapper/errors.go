package devmapper

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Sentinel errors. Errors returned by ioctls are *Error values that unwrap to
// the kernel's errno (unix.Errno), so callers test them with errors.Is against
// the errno (unix.EBUSY, unix.ENXIO, unix.EEXIST, ...) or against the
// sentinels below where no errno applies.
var (
	// ErrBadTable reports a table or target that cannot be printed or parsed.
	ErrBadTable = errors.New("devmapper: bad table")
	// ErrBadStatus reports a status line that cannot be parsed.
	ErrBadStatus = errors.New("devmapper: bad status line")
	// ErrBadName reports a device name or uuid the kernel would refuse.
	ErrBadName = errors.New("devmapper: bad device name")
	// ErrTruncated reports a reply that did not fit the buffer, from an
	// ioctl that is not sent again because it may have acted (a target
	// message). The kernel returns nothing of such a reply.
	ErrTruncated = errors.New("devmapper: reply truncated")
	// ErrUnsupported reports a kernel interface older than this package needs.
	ErrUnsupported = errors.New("devmapper: unsupported kernel interface")
)

// Error is a failed device-mapper operation: which ioctl, on which device,
// and the errno the kernel returned.
type Error struct {
	Op    string // e.g. "DM_DEV_REMOVE"
	Name  string // device name, empty for global operations
	Errno unix.Errno
}

func (e *Error) Error() string {
	if e.Name == "" {
		return fmt.Sprintf("devmapper: %s: %v", e.Op, e.Errno)
	}
	return fmt.Sprintf("devmapper: %s %q: %v", e.Op, e.Name, e.Errno)
}

// Unwrap returns the errno, so errors.Is(err, unix.EBUSY) works.
func (e *Error) Unwrap() error { return e.Errno }

// IsNotFound reports whether err means that the device does not exist.
func IsNotFound(err error) bool { return errors.Is(err, unix.ENXIO) }

// IsBusy reports whether err means that the device is open or in use.
func IsBusy(err error) bool { return errors.Is(err, unix.EBUSY) }
