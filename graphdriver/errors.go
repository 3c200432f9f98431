package graphdriver

import "errors"

// Sentinel errors callers act on. Returned errors wrap them (and the cause
// from thinpool, ext4 or the kernel), so test with errors.Is.
var (
	// ErrInvalidID: the layer id is empty, ".", "..", too long, or holds
	// "/", "..", NUL or a control character.
	ErrInvalidID = errors.New("graphdriver: invalid layer id")
	// ErrNotFound: no layer with that id.
	ErrNotFound = errors.New("graphdriver: layer not found")
	// ErrParentNotFound: Create named a parent layer that does not exist.
	ErrParentNotFound = errors.New("graphdriver: parent layer not found")
	// ErrExists: a layer with that id exists already (or its deletion is
	// deferred and has not happened yet).
	ErrExists = errors.New("graphdriver: layer exists")
	// ErrInvalidOptions: an unknown or malformed dm.* option, options that
	// contradict each other or the existing pool (a dm.basesize below the
	// base device's size), or an unknown or bad storage option on Create
	// (a size below the base device's).
	ErrInvalidOptions = errors.New("graphdriver: invalid options")
	// ErrBaseMismatch: the base device found in the pool is not the one
	// this home recorded (a different pool behind the same home), or the
	// record of it is missing while layers exist.
	ErrBaseMismatch = errors.New("graphdriver: base device does not match")
	// ErrBusy: the layer's device is held by someone else (mounted
	// elsewhere, open) and could not be removed now.
	ErrBusy = errors.New("graphdriver: layer busy")
	// ErrNotMounted: Put of a layer that Get did not mount.
	ErrNotMounted = errors.New("graphdriver: layer not mounted")
	// ErrClosed: the driver was cleaned up.
	ErrClosed = errors.New("graphdriver: driver cleaned up")
)
