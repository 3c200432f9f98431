package ext4

import (
	"errors"

	"github.com/dmthin/dmthin/internal/toolexec"
)

// Sentinel errors. Test for them with errors.Is; the errors returned wrap
// them together with the details (device, command line, offsets).
var (
	// ErrNotExt4 reports input without the ext2/3/4 magic number 0xEF53 at
	// byte 1080 (or too short to hold a superblock).
	ErrNotExt4 = errors.New("ext4: not an ext2/ext3/ext4 filesystem")
	// ErrBadSuperblock reports a superblock that carries the magic number
	// but cannot be trusted: checksum mismatch or impossible geometry.
	ErrBadSuperblock = errors.New("ext4: damaged superblock")
	// ErrToolMissing reports that an e2fsprogs program (mkfs.ext4, tune2fs,
	// resize2fs, e2fsck) is not installed. The error returned names the
	// program; errors.Is(err, ErrToolMissing) holds for all of them.
	ErrToolMissing = errors.New("ext4: e2fsprogs tool not found: install the e2fsprogs package")
	// ErrCorrupt reports that e2fsck found problems it did not repair.
	// The error wrapping it also wraps the *ExecError with e2fsck's output.
	ErrCorrupt = errors.New("ext4: filesystem has errors")
	// ErrInvalidOptions reports FormatOptions that Validate rejects.
	ErrInvalidOptions = errors.New("ext4: invalid format options")
)

// ToolMissingError names the e2fsprogs program that could not be found.
// errors.Is(err, ErrToolMissing) is true for it.
type ToolMissingError = toolexec.ToolMissingError

// ExecError is a failed run of an external program: its command line, how it
// ended and what it printed. Err is the context's error when the run was
// cancelled (so errors.Is(err, context.Canceled) works), otherwise the error
// from os/exec (an *exec.ExitError for a non-zero exit).
type ExecError = toolexec.ExecError
