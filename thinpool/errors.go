package thinpool

import (
	"errors"
	"fmt"

	"github.com/docker/go-units"
)

// Sentinel errors callers act on. Errors wrap them, so test with errors.Is.
var (
	// ErrNotFound: no device of that name.
	ErrNotFound = errors.New("thinpool: device not found")
	// ErrExists: a device of that name exists already.
	ErrExists = errors.New("thinpool: device exists")
	// ErrInvalidName: the name is empty, contains "/", is "." or "..", or
	// is too long for a device-mapper name with the pool's prefix.
	ErrInvalidName = errors.New("thinpool: invalid device name")
	// ErrBusy: the device is open (mounted) or has children.
	ErrBusy = errors.New("thinpool: device busy")
	// ErrPoolFull: creating a device would go below the minimum free space,
	// or the pool is out of data space. errors.As gives a *SpaceError.
	ErrPoolFull = errors.New("thinpool: pool is full")
	// ErrFaulty: Open could not settle the device's record (its thin
	// device is gone, or a half-done change could not be finished; see
	// Device.Fault); it can only be deleted.
	ErrFaulty = errors.New("thinpool: device is faulty")
	// ErrInvalidOptions: Options.Validate found problems.
	ErrInvalidOptions = errors.New("thinpool: invalid options")
	// ErrPoolNotOurs: an external pool that has thin devices this store does
	// not know about.
	ErrPoolNotOurs = errors.New("thinpool: pool is not empty and not ours")
	// ErrLocked: another process has this pool open.
	ErrLocked = errors.New("thinpool: pool is in use by another process")
	// ErrClosed: the pool was closed.
	ErrClosed = errors.New("thinpool: pool is closed")
)

// SpaceError says which space is short.
type SpaceError struct {
	What      string // "data" or "metadata"
	Free      int64  // bytes free
	Total     int64  // bytes in all
	MinFree   int64  // bytes that must stay free
	OutOfData bool   // the pool reports out_of_data_space
}

func (e *SpaceError) Error() string {
	if e.OutOfData {
		return fmt.Sprintf("thinpool: pool is out of data space (%s of %s free)",
			units.BytesSize(float64(e.Free)), units.BytesSize(float64(e.Total)))
	}
	return fmt.Sprintf("thinpool: %s space low: %s free of %s, minimum free is %s",
		e.What, units.BytesSize(float64(e.Free)), units.BytesSize(float64(e.Total)), units.BytesSize(float64(e.MinFree)))
}

// Unwrap makes errors.Is(err, ErrPoolFull) true.
func (e *SpaceError) Unwrap() error { return ErrPoolFull }
