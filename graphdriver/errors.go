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

// storeOptionNames are the names this driver gives the store's fields.
var storeOptionNames = map[string]string{
	"BaseSize":   "dm.basesize",
	"Filesystem": "dm.fs",
	"MkfsArgs":   "dm.mkfsarg",
	"Size":       "storage option size",
}

// optionError is a store's FieldError told with this driver's name for the
// option.
type optionError struct {
	name string
	fe   *layerstore.FieldError
}

func (e *optionError) Error() string {
	return fmt.Sprintf("%v: %s=%s: %v", ErrInvalidOptions, e.name, e.fe.Value, e.fe.Err)
}

func (e *optionError) Unwrap() []error { return []error{ErrInvalidOptions, e.fe} }

// storeErr makes the store's invalid-options errors this package's too,
// naming the option (dm.basesize...) where the store names its field.
func storeErr(err error) error {
	var fe *layerstore.FieldError
	if errors.As(err, &fe) {
		if name, ok := storeOptionNames[fe.Field]; ok {
			return &optionError{name: name, fe: fe}
		}
	}
	if errors.Is(err, layerstore.ErrInvalidOptions) && !errors.Is(err, ErrInvalidOptions) {
		return fmt.Errorf("%w: %w", ErrInvalidOptions, err)
	}
	return err
}
