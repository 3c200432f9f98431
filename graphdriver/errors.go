package graphdriver

import (
	"errors"
	"fmt"

	"github.com/dmthin/dmthin/layerstore"
)

// Sentinel errors callers act on. Returned errors wrap them (and the cause
// from layerstore, thinpool, ext4 or the kernel), so test with errors.Is.
// Most are layerstore's, under the names this package always had.
var (
	// ErrInvalidID: the layer id is empty, ".", "..", too long, or holds
	// "/", "..", NUL or a control character.
	ErrInvalidID = layerstore.ErrInvalidName
	// ErrNotFound: no layer with that id.
	ErrNotFound = layerstore.ErrNotFound
	// ErrParentNotFound: Create named a parent layer that does not exist.
	ErrParentNotFound = layerstore.ErrParentNotFound
	// ErrExists: a layer with that id exists already (or its deletion is
	// deferred and has not happened yet).
	ErrExists = layerstore.ErrExists
	// ErrInvalidOptions: an unknown or malformed dm.* option, options that
	// contradict each other or the existing pool (a dm.basesize below the
	// base device's), or an unknown or bad storage option on Create
	// (a size below the base device's).
	ErrInvalidOptions = errors.New("graphdriver: invalid options")
	// ErrBaseMismatch: the base device found in the pool is not the one
	// this home recorded (a different pool behind the same home), or the
	// record of it is missing while layers exist.
	ErrBaseMismatch = layerstore.ErrBaseMismatch
	// ErrBusy: the layer's device is held by someone else (mounted
	// elsewhere, open) and could not be removed now.
	ErrBusy = layerstore.ErrBusy
	// ErrNotMounted: Put of a layer that Get did not mount.
	ErrNotMounted = layerstore.ErrNotMounted
	// ErrClosed: the driver was cleaned up.
	ErrClosed = layerstore.ErrClosed
)

// storeErr makes the store's invalid-options errors this package's too.
func storeErr(err error) error {
	if errors.Is(err, layerstore.ErrInvalidOptions) && !errors.Is(err, ErrInvalidOptions) {
		return fmt.Errorf("%w: %w", ErrInvalidOptions, err)
	}
	return err
}
