package xfs

import (
	"errors"

	"github.com/dmthin/dmthin/internal/toolexec"
)

// Sentinel errors. Test for them with errors.Is; the errors returned wrap
// them together with the details (device, command line, offsets).
var (
	// ErrNotXFS reports input without the XFS magic number "XFSB" at byte
	// 0 (or too short to hold a superblock).
	ErrNotXFS = errors.New("xfs: not an XFS filesystem")
	// ErrBadSuperblock reports a superblock that carries the magic number
	// but cannot be trusted: CRC mismatch, impossible geometry, or a
	// mkfs that did not finish.
	ErrBadSuperblock = errors.New("xfs: damaged superblock")
	// ErrToolMissing reports that an xfsprogs program (mkfs.xfs,
	// xfs_growfs) is not installed. The error returned names the program.
	ErrToolMissing = errors.New("xfs: xfsprogs tool not found: install the xfsprogs package")
	// ErrInvalidOptions reports FormatOptions that Validate rejects, and a
	// device below MinSize.
	ErrInvalidOptions = errors.New("xfs: invalid format options")
)

// ToolMissingError names the xfsprogs program that could not be found.
// errors.Is(err, ErrToolMissing) is true for it.
type ToolMissingError = toolexec.ToolMissingError

// ExecError is a failed run of an external program: its command line, how
// it ended and what it printed (see toolexec.ExecError).
type ExecError = toolexec.ExecError
