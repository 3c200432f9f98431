package graphdriver

import "github.com/dmthin/dmthin/layerstore"

// MaxIDLen is the longest layer id accepted. A layer's device-mapper name is
// the pool's prefix, "-l-" and the id, and must fit the kernel's 127 bytes;
// Docker's ids are 64 hex digits (69 with "-init").
const MaxIDLen = layerstore.MaxNameLen

// ValidateID reports whether id can name a layer: not empty, not "." or
// "..", at most MaxIDLen bytes, and free of "/", "..", NUL and other control
// characters (it becomes a directory name and part of a device name).
// Errors wrap ErrInvalidID.
func ValidateID(id string) error { return layerstore.ValidateName(id) }
