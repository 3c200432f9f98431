package ext4

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// maxLabelLen is the size of s_volume_name.
const maxLabelLen = 16

// defaultExtended are the -E options Format always passes. Thin devices read
// back zeros where nothing was written, so mkfs has no need to discard; and
// the inode tables and journal are initialised now, once, on the base device,
// instead of by the kernel's lazy initialiser after every mount of every
// snapshot (which would allocate blocks in each snapshot and defeat sharing).
var defaultExtended = []string{"nodiscard", "lazy_itable_init=0", "lazy_journal_init=0"}

// mkfsArgOpts are mke2fs's options that take a value (its getopt string is
// "b:cd:e:g:i:jl:m:no:qr:s:t:vC:DE:FG:I:J:KL:M:N:O:R:ST:U:Vz:").
const mkfsArgOpts = "bdegilmorstCEGIJLMNORTUz"

// FormatOptions says how Format makes a filesystem.
//
// Format always passes -F (the target is a whole device or an image file),
// -q, and -E nodiscard,lazy_itable_init=0,lazy_journal_init=0, and disables
// the periodic checks (maximum mount count -1, check interval 0).
type FormatOptions struct {
	// Label is the volume label, at most 16 bytes.
	Label string
	// ExtraArgs are mkfs.ext4 options given by the user (Docker's
	// dm.mkfsarg), passed after the defaults so that they win. Their -E (or
	// -R) values are appended to the default -E list, because mke2fs keeps
	// only the last -E it is given (1.47.0 does; accumulating several was
	// proposed upstream in 2025). They must be options: positional
	// arguments would take the device's place.
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
	if _, _, err := splitExtended(o.ExtraArgs); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// mkfsArgs returns the arguments of mkfs.ext4 for device.
func (o FormatOptions) mkfsArgs(device string) ([]string, error) {
	extended, rest, err := splitExtended(o.ExtraArgs)
	if err != nil {
		return nil, err
	}
	args := []string{"-F", "-q", "-E", strings.Join(append(append([]string(nil), defaultExtended...), extended...), ",")}
	if o.Label != "" {
		args = append(args, "-L", o.Label)
	}
	args = append(args, rest...)
	return append(args, "--", device), nil
}

// splitExtended takes the -E and -R values out of mkfs arguments, parsing
// them the way getopt does (clustered flags, attached or separate values). It
// returns the values and the remaining arguments, unchanged except that a
// cluster holding -E is cut in two.
func splitExtended(args []string) (extended, rest []string, err error) {
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if arg == "--" || len(arg) < 2 || arg[0] != '-' {
			return nil, nil, fmt.Errorf("%w: extra mkfs argument %q is not an option (the device is the only positional argument)", ErrInvalidOptions, arg)
		}
		// Flags without a value may be clustered before one with a value.
		j := strings.IndexAny(arg[1:], mkfsArgOpts)
		if j < 0 {
			rest = append(rest, arg)
			continue
		}
		pos := j + 1
		value, separate := arg[pos+1:], pos+1 == len(arg)
		if separate {
			if i+1 == len(args) {
				return nil, nil, fmt.Errorf("%w: extra mkfs option -%c needs a value", ErrInvalidOptions, arg[pos])
			}
			i++
			value = args[i]
		}
		switch {
		case arg[pos] == 'E' || arg[pos] == 'R':
			if pos > 1 {
				rest = append(rest, arg[:pos])
			}
			extended = append(extended, value)
		case separate:
			rest = append(rest, arg, value)
		default:
			rest = append(rest, arg)
		}
	}
	return extended, rest, nil
}

// Format makes an ext4 filesystem on device (a block device or an image
// file), destroying what was there. Then, if mkfs left periodic checks
// enabled (through /etc/mke2fs.conf), it runs tune2fs -c 0 -i 0.
//
// Cancelling ctx kills the running program and leaves the device half
// formatted. Errors from the programs are *ExecError values; a missing
// program gives an error for which errors.Is(err, ErrToolMissing) holds.
func Format(ctx context.Context, device string, opts FormatOptions) error {
	if device == "" {
		return fmt.Errorf("%w: empty device path", ErrInvalidOptions)
	}
	if err := opts.Validate(); err != nil {
		return err
	}
	args, err := opts.mkfsArgs(device)
	if err != nil {
		return err
	}
	if err := run(ctx, toolMkfs, nil, args...); err != nil {
		return fmt.Errorf("ext4: format %s: %w", device, err)
	}
	sb, err := ReadSuperblockFile(device)
	if err != nil {
		return fmt.Errorf("ext4: format %s: reading the new superblock: %w", device, err)
	}
	if sb.PeriodicCheck() {
		if err := run(ctx, toolTune2fs, nil, "-c", "0", "-i", "0", device); err != nil {
			return fmt.Errorf("ext4: format %s: disabling periodic checks: %w", device, err)
		}
	}
	return nil
}
