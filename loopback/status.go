package loopback

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// Flags are the lo_flags of a loop device.
type Flags uint32

// The flags this package reads or sets.
const (
	FlagReadOnly  Flags = unix.LO_FLAGS_READ_ONLY
	FlagAutoclear Flags = unix.LO_FLAGS_AUTOCLEAR
	FlagPartScan  Flags = unix.LO_FLAGS_PARTSCAN
	FlagDirectIO  Flags = unix.LO_FLAGS_DIRECT_IO
)

var flagNames = []struct {
	f    Flags
	name string
}{
	{FlagReadOnly, "read_only"},
	{FlagAutoclear, "autoclear"},
	{FlagPartScan, "partscan"},
	{FlagDirectIO, "direct_io"},
}

// String prints the flags as "read_only|autoclear"; unknown bits are
// printed in hex, no flags as "0".
func (f Flags) String() string {
	if f == 0 {
		return "0"
	}
	var parts []string
	for _, n := range flagNames {
		if f&n.f != 0 {
			parts = append(parts, n.name)
			f &^= n.f
		}
	}
	if f != 0 {
		parts = append(parts, fmt.Sprintf("%#x", uint32(f)))
	}
	return strings.Join(parts, "|")
}

// Has reports whether every flag of g is set in f.
func (f Flags) Has(g Flags) bool { return f&g == g }

// Status is what LOOP_GET_STATUS64 reports about a bound loop device.
type Status struct {
	Number int `json:"number"`
	// The backing file: the device of the file system holding it, and its
	// inode. Find matches files by these.
	BackingMajor uint32 `json:"backing_major"`
	BackingMinor uint32 `json:"backing_minor"`
	BackingInode uint64 `json:"backing_inode"`
	// Offset and SizeLimit are in bytes; this package sets neither.
	Offset    uint64 `json:"offset"`
	SizeLimit uint64 `json:"size_limit"`
	Flags     Flags  `json:"flags"`
	// FileName is lo_file_name: the name given at attach time, cut by the
	// kernel to 63 bytes. Informational only.
	FileName string `json:"file_name"`
}

func statusFromInfo(info *unix.LoopInfo64) Status {
	name := info.File_name[:]
	for i, c := range name {
		if c == 0 {
			name = name[:i]
			break
		}
	}
	return Status{
		Number:       int(info.Number),
		BackingMajor: unix.Major(info.Device),
		BackingMinor: unix.Minor(info.Device),
		BackingInode: info.Inode,
		Offset:       info.Offset,
		SizeLimit:    info.Sizelimit,
		Flags:        Flags(info.Flags),
		FileName:     string(name),
	}
}

// sameFile reports whether the status names the file st describes.
func (s Status) sameFile(st *unix.Stat_t) bool {
	return s.BackingInode == st.Ino &&
		s.BackingMajor == unix.Major(st.Dev) && s.BackingMinor == unix.Minor(st.Dev)
}

// setFileName fills lo_file_name, cutting name to fit with its NUL.
func setFileName(info *unix.LoopInfo64, name string) {
	n := copy(info.File_name[:len(info.File_name)-1], name)
	info.File_name[n] = 0
}
