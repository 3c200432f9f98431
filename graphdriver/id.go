package graphdriver

import (
	"fmt"
	"strings"
)

// MaxIDLen is the longest layer id accepted. A layer's device-mapper name is
// the pool's prefix, "-l-" and the id, and must fit the kernel's 127 bytes;
// Docker's ids are 64 hex digits (69 with "-init").
const MaxIDLen = 100

// baseDevice is the thin device every layer descends from. Layer devices
// are named layerDevicePrefix+id, so no id can collide with it or with the
// names thinpool reserves.
const (
	baseDevice        = "base"
	layerDevicePrefix = "l-"
)

// ValidateID reports whether id can name a layer: not empty, not "." or
// "..", at most MaxIDLen bytes, and free of "/", "..", NUL and other control
// characters (it becomes a directory name and part of a device name).
func ValidateID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%w: empty", ErrInvalidID)
	case id == "." || id == "..":
		return fmt.Errorf("%w: %q", ErrInvalidID, id)
	case len(id) > MaxIDLen:
		return fmt.Errorf("%w: %q is %d bytes, at most %d", ErrInvalidID, id, len(id), MaxIDLen)
	case strings.Contains(id, "/"):
		return fmt.Errorf("%w: %q contains \"/\"", ErrInvalidID, id)
	case strings.Contains(id, ".."):
		return fmt.Errorf("%w: %q contains \"..\"", ErrInvalidID, id)
	}
	for _, c := range []byte(id) {
		if c < 0x20 || c == 0x7f {
			return fmt.Errorf("%w: %q contains control character %#x", ErrInvalidID, id, c)
		}
	}
	return nil
}

// deviceName is the thin device of layer id.
func deviceName(id string) string { return layerDevicePrefix + id }

// layerID is the layer id of a thin device name, or false for the base
// device and anything else not made by the driver.
func layerID(device string) (string, bool) {
	id, ok := strings.CutPrefix(device, layerDevicePrefix)
	return id, ok && id != ""
}
