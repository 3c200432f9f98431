package devmapper

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// SectorSize is the unit of device-mapper tables: 512 bytes.
const SectorSize = 512

// Sectors counts 512-byte sectors, the unit tables are written in.
type Sectors uint64

// Bytes returns s in bytes.
func (s Sectors) Bytes() uint64 { return uint64(s) * SectorSize }

// SectorsFromBytes converts a byte count that must be a whole number of
// sectors.
func SectorsFromBytes(b uint64) (Sectors, error) {
	if b%SectorSize != 0 {
		return 0, fmt.Errorf("%w: %d bytes is not a multiple of %d", ErrBadTable, b, SectorSize)
	}
	return Sectors(b / SectorSize), nil
}

// Dev is a block device number. Tables name devices by it, never by path.
type Dev struct{ Major, Minor uint32 }

// String prints "MAJ:MIN", the form tables use.
func (d Dev) String() string { return fmt.Sprintf("%d:%d", d.Major, d.Minor) }

// Encode returns the kernel's 64-bit dev_t encoding (as in dm_ioctl.dev).
func (d Dev) Encode() uint64 { return unix.Mkdev(d.Major, d.Minor) }

// IsZero reports whether d is the zero value (no device).
func (d Dev) IsZero() bool { return d.Major == 0 && d.Minor == 0 }

// DecodeDev splits a 64-bit dev_t.
func DecodeDev(v uint64) Dev { return Dev{Major: unix.Major(v), Minor: unix.Minor(v)} }

// ParseDev reads "MAJ:MIN".
func ParseDev(s string) (Dev, error) {
	maj, min, ok := strings.Cut(s, ":")
	if !ok {
		return Dev{}, fmt.Errorf("%w: device %q is not MAJ:MIN", ErrBadTable, s)
	}
	a, err := strconv.ParseUint(maj, 10, 32)
	if err != nil {
		return Dev{}, fmt.Errorf("%w: device %q: major: %w", ErrBadTable, s, err)
	}
	b, err := strconv.ParseUint(min, 10, 32)
	if err != nil {
		return Dev{}, fmt.Errorf("%w: device %q: minor: %w", ErrBadTable, s, err)
	}
	return Dev{Major: uint32(a), Minor: uint32(b)}, nil
}

// ThinID is a thin device's id inside its pool: 24 bits.
type ThinID uint32

// MaxThinID is the largest id a thin pool accepts.
const MaxThinID = 1<<24 - 1

// NewThinID checks that v fits the pool's 24-bit id space.
func NewThinID(v uint64) (ThinID, error) {
	if v > MaxThinID {
		return 0, fmt.Errorf("%w: thin id %d exceeds %d", ErrBadTable, v, MaxThinID)
	}
	return ThinID(v), nil
}

// String prints the id in decimal, as messages and tables want it.
func (id ThinID) String() string { return strconv.FormatUint(uint64(id), 10) }

// Version is a kernel interface or target version.
type Version struct{ Major, Minor, Patch uint32 }

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch) }

// AtLeast reports whether v >= o.
func (v Version) AtLeast(o Version) bool {
	if v.Major != o.Major {
		return v.Major > o.Major
	}
	if v.Minor != o.Minor {
		return v.Minor > o.Minor
	}
	return v.Patch >= o.Patch
}
