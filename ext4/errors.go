package ext4

import (
	"errors"
	"fmt"
	"strings"
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
type ToolMissingError struct {
	Tool     string   // e.g. "mkfs.ext4"
	Searched []string // directories tried besides $PATH
}

func (e *ToolMissingError) Error() string {
	where := "PATH"
	if len(e.Searched) > 0 {
		where += ", " + strings.Join(e.Searched, ", ")
	}
	return fmt.Sprintf("%s not found in %s: install the e2fsprogs package", e.Tool, where)
}

// Is makes errors.Is(err, ErrToolMissing) true.
func (e *ToolMissingError) Is(target error) bool { return target == ErrToolMissing }

// ExecError is a failed run of an external program: its command line, how it
// ended and what it printed. Err is the context's error when the run was
// cancelled (so errors.Is(err, context.Canceled) works), otherwise the error
// from os/exec (an *exec.ExitError for a non-zero exit).
type ExecError struct {
	Args     []string // command line; Args[0] is the resolved path of the program
	ExitCode int      // exit status, or -1 if it did not exit by itself (signal, cancellation, not started)
	Stderr   string   // standard error, trimmed and capped
	Stdout   string   // standard output, trimmed and capped (e2fsck reports problems there)
	Err      error
}

func (e *ExecError) Error() string {
	var b strings.Builder
	b.WriteString(strings.Join(e.Args, " "))
	b.WriteString(": ")
	if e.ExitCode >= 0 {
		fmt.Fprintf(&b, "exit status %d", e.ExitCode)
	} else {
		fmt.Fprintf(&b, "%v", e.Err)
	}
	if e.Stderr != "" {
		b.WriteString(": ")
		b.WriteString(e.Stderr)
	}
	if e.Stdout != "" {
		b.WriteString(": output: ")
		b.WriteString(e.Stdout)
	}
	return b.String()
}

// Unwrap returns the underlying error (the context's error for a cancelled run).
func (e *ExecError) Unwrap() error { return e.Err }
