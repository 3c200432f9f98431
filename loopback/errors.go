package loopback

import (
	"errors"
	"fmt"
)

// Sentinel errors, matched with errors.Is. They are wrapped in an *Error
// that names the operation and the path.
var (
	// ErrNotFound: no loop device is bound to the file (Find).
	ErrNotFound = errors.New("loopback: no loop device bound to the file")
	// ErrShrink: CreateSparse was asked for a size smaller than the file;
	// the file is left as it was.
	ErrShrink = errors.New("loopback: refusing to shrink the backing file")
	// ErrBadSize: a size that is not a positive multiple of 512 bytes.
	ErrBadSize = errors.New("loopback: size must be a positive multiple of 512 bytes")
	// ErrNotRegular: CreateSparse found something other than a regular file
	// at the path.
	ErrNotRegular = errors.New("loopback: not a regular file")
	// ErrDirectIO: direct I/O was asked for and the kernel or the backing
	// file system refused it. Nothing is left attached.
	ErrDirectIO = errors.New("loopback: direct I/O refused")
	// ErrNoFreeDevice: every attempt to claim a free loop device lost a race
	// with another attacher (or the device was held), and Attach gave up.
	ErrNoFreeDevice = errors.New("loopback: no free loop device could be claimed")
	// ErrClosed: the Device handle was already closed or detached.
	ErrClosed = errors.New("loopback: device handle is closed")
	// ErrNotLoop: a /dev/loopN node is not the block device the kernel
	// reports for loop device N. The node is left alone.
	ErrNotLoop = errors.New("loopback: node is not the expected loop device")
)

// Error is a failed operation: what was done, on which path, and why. Err is
// the kernel's errno (a unix.Errno) or one of the sentinels, possibly with
// both, so errors.Is works for either.
type Error struct {
	Op   string // "LOOP_CONFIGURE", "open", "ftruncate", ...
	Path string // the loop node or the file the operation acted on
	File string // the backing file, when Path is a loop node and it is known
	Err  error
}

func (e *Error) Error() string {
	if e.Path == "" {
		return fmt.Sprintf("loopback: %s: %v", e.Op, e.Err)
	}
	if e.File != "" && e.File != e.Path {
		return fmt.Sprintf("loopback: %s %s (backing %s): %v", e.Op, e.Path, e.File, e.Err)
	}
	return fmt.Sprintf("loopback: %s %s: %v", e.Op, e.Path, e.Err)
}

// Unwrap returns the cause, so errors.Is(err, unix.EBUSY) and
// errors.Is(err, ErrShrink) work.
func (e *Error) Unwrap() error { return e.Err }
