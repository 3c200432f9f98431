package xfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/docker/go-units"
	"golang.org/x/sys/unix"
)

// MinSize is the smallest device mkfs.xfs formats (xfsprogs 5.19 and later
// refuse anything smaller: "Filesystem must be larger than 300MB").
const MinSize = 300 << 20

// defaultArgs are the mkfs.xfs options Format always passes: -f (the
// target is a whole device or an image file, maybe holding an old
// filesystem), -q, and -K: a thin device reads back zeros where nothing was
// written, so discarding it first only costs time.
var defaultArgs = []string{"-f", "-q", "-K"}

// mkfsArgOpts are mkfs.xfs's options that take a value (its getopt string
// is "b:d:i:l:L:m:n:KNp:qr:s:CfV").
const mkfsArgOpts = "bdilLmnprs"

// refusedOpts are mkfs.xfs options that would leave no filesystem.
var refusedOpts = map[byte]string{
	'N': "-N only prints what mkfs.xfs would do",
	'V': "-V only prints the version",
}

// FormatOptions says how Format makes a filesystem.
type FormatOptions struct {
	// Label is the volume label, at most 12 bytes.
	Label string
	// ExtraArgs are mkfs.xfs options given by the user (Docker's
	// dm.mkfsarg), passed after the defaults so that they win. They must
	// be options: positional arguments would take the device's place.
	ExtraArgs []string
}

// Validate reports every problem with the options at once; each wraps
// ErrInvalidOptions.
func (o FormatOptions) Validate() error {
	var errs []error
	if len(o.Label) > maxLabelLen {
		errs = append(errs, fmt.Errorf("%w: label %q is %d bytes, at most %d", ErrInvalidOptions, o.Label, len(o.Label), maxLabelLen))
	}
	if strings.IndexByte(o.Label, 0) >= 0 {
		errs = append(errs, fmt.Errorf("%w: label %q contains a NUL byte", ErrInvalidOptions, o.Label))
	}
	if err := checkExtraArgs(o.ExtraArgs); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// checkExtraArgs parses mkfs arguments the way getopt does (clustered
// flags, attached or separate values) and refuses positional arguments and
// the options that make no filesystem.
func checkExtraArgs(args []string) error {
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if arg == "--" || len(arg) < 2 || arg[0] != '-' {
			return fmt.Errorf("%w: extra mkfs argument %q is not an option (the device is the only positional argument)", ErrInvalidOptions, arg)
		}
		for j := 1; j < len(arg); j++ {
			if why, ok := refusedOpts[arg[j]]; ok {
				return fmt.Errorf("%w: extra mkfs argument %q: %s", ErrInvalidOptions, arg, why)
			}
			if strings.IndexByte(mkfsArgOpts, arg[j]) < 0 {
				continue
			}
			if j+1 == len(arg) { // the value is the next argument
				if i+1 == len(args) {
					return fmt.Errorf("%w: extra mkfs option -%c needs a value", ErrInvalidOptions, arg[j])
				}
				i++
			}
			break
		}
	}
	return nil
}

// mkfsArgs returns the arguments of mkfs.xfs for device.
func (o FormatOptions) mkfsArgs(device string) []string {
	args := append([]string(nil), defaultArgs...)
	if o.Label != "" {
		args = append(args, "-L", o.Label)
	}
	args = append(args, o.ExtraArgs...)
	return append(args, "--", device)
}

// Format makes an XFS filesystem on device (a block device or an image
// file), destroying what was there. A device smaller than MinSize is
// refused before mkfs.xfs runs.
//
// Cancelling ctx kills mkfs.xfs and leaves the device half formatted (its
// superblock says so: ReadSuperblock fails with ErrBadSuperblock). Errors
// from the program are *ExecError values; a missing program gives an error
// for which errors.Is(err, ErrToolMissing) holds.
func Format(ctx context.Context, device string, opts FormatOptions) error {
	if device == "" {
		return fmt.Errorf("%w: empty device path", ErrInvalidOptions)
	}
	if err := opts.Validate(); err != nil {
		return err
	}
	size, err := deviceSize(device)
	if err != nil {
		return fmt.Errorf("xfs: format %s: %w", device, err)
	}
	if size < MinSize {
		return fmt.Errorf("%w: format %s: %s is below the %s mkfs.xfs needs", ErrInvalidOptions, device,
			units.BytesSize(float64(size)), units.BytesSize(MinSize))
	}
	if err := run(ctx, toolMkfs, opts.mkfsArgs(device)...); err != nil {
		return fmt.Errorf("xfs: format %s: %w", device, err)
	}
	if _, err := ReadSuperblockFile(device); err != nil {
		return fmt.Errorf("xfs: format %s: reading the new superblock: %w", device, err)
	}
	return nil
}

// deviceSize is the size of a block device or regular file, in bytes.
func deviceSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if fi.Mode().IsRegular() {
		return fi.Size(), nil
	}
	if fi.Mode()&os.ModeDevice == 0 || fi.Mode()&os.ModeCharDevice != 0 {
		return 0, fmt.Errorf("%s is neither a block device nor a regular file", path)
	}
	n, err := unix.IoctlGetUint64(int(f.Fd()), unix.BLKGETSIZE64)
	if err != nil {
		return 0, &os.PathError{Op: "ioctl BLKGETSIZE64", Path: path, Err: err}
	}
	return int64(n), nil
}
