package layerstore

import (
	"errors"
	"fmt"
)

// Sentinel errors callers act on. Returned errors wrap them (and the cause
// from thinpool, ext4 or the kernel), so test with errors.Is. graphdriver
// re-exports them under its own names.
var (
	// ErrInvalidName: the layer name is empty, ".", "..", too long, or
	// holds "/", "..", NUL or a control character.
	ErrInvalidName = errors.New("invalid layer name")
	// ErrNotFound: no layer with that name.
	ErrNotFound = errors.New("layer not found")
	// ErrParentNotFound: Create named a parent layer that does not exist.
	ErrParentNotFound = errors.New("parent layer not found")
	// ErrExists: a layer with that name exists already (or its deletion is
	// deferred and has not happened yet).
	ErrExists = errors.New("layer exists")
	// ErrInvalidOptions: Options that contradict each other or the
	// existing pool (a base size below the base device's), or a layer
	// size below the base size or its parent's.
	ErrInvalidOptions = errors.New("invalid options")
	// ErrBaseMismatch: the base device found in the pool is not the one
	// this root recorded (a different pool behind the same root), or the
	// record of it is missing while layers exist.
	ErrBaseMismatch = errors.New("base device does not match")
	// ErrBusy: the layer is mounted by a caller (a Get not yet Put), or its
	// device is held by someone else, and could not be removed now.
	ErrBusy = errors.New("layer busy")
	// ErrNotMounted: Put of a layer that Get did not mount.
	ErrNotMounted = errors.New("layer not mounted")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("layer store closed")
)

// FieldError is an Options field, or Create's size, that cannot be used as
// given. Field is the field's name in Options ("BaseSize", "Filesystem",
// "MkfsArgs"), or "Size" for Create's size, so that an adapter can name
// the option of its own that it maps to it. errors.Is matches
// ErrInvalidOptions and the cause.
type FieldError struct {
	Field string // e.g. "BaseSize", "Size"
	Value string // the value given, as a person writes it (e.g. "5GiB")
	Err   error  // why it cannot be used
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("%v: %s %s: %v", ErrInvalidOptions, e.Field, e.Value, e.Err)
}

// Unwrap gives ErrInvalidOptions and the cause.
func (e *FieldError) Unwrap() []error { return []error{ErrInvalidOptions, e.Err} }
