package fsys

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Names of the filesystems New knows.
const (
	Ext4 = "ext4"
	XFS  = "xfs"
)

// Names lists the filesystems New knows, the default first.
func Names() []string { return []string{Ext4, XFS} }

// Sentinel errors; returned errors wrap them.
var (
	// ErrUnsupported: New was given a filesystem it does not know.
	ErrUnsupported = errors.New("unsupported filesystem")
	// ErrInvalidOptions: Options that do not apply to the filesystem, or
	// mkfs arguments it refuses.
	ErrInvalidOptions = errors.New("invalid filesystem options")
	// ErrNotFormatted: the device holds no filesystem of the expected type
	// (Identify).
	ErrNotFormatted = errors.New("no filesystem of the expected type")
)

// Filesystem is what the layer engine needs of a filesystem.
type Filesystem interface {
	// Type is the name mount(2) and the store's records know it by.
	Type() string
	// MinSize is the smallest device Format accepts, in bytes.
	MinSize() int64
	// ValidateMkfsArgs checks extra mkfs arguments (Docker's
	// dm.mkfsarg) without running anything; errors wrap
	// ErrInvalidOptions.
	ValidateMkfsArgs(args []string) error
	// Format makes the filesystem on device, destroying what was there,
	// with the extra mkfs arguments.
	Format(ctx context.Context, device string, mkfsArgs []string) error
	// Identify reads the filesystem's superblock on device. When device
	// holds no filesystem of this type the error wraps ErrNotFormatted.
	Identify(device string) (Identity, error)
	// Grow grows the filesystem on device, mounted at mountpoint (with
	// MountData), to the size of device.
	Grow(ctx context.Context, device, mountpoint string) error
	// MountData is the filesystem data every mount must carry, to be
	// joined with the caller's ("" for none).
	MountData() string
	// Mounted tunes the filesystem just mounted from device (settings that
	// live only as long as the mount).
	Mounted(device string) error
}

// Identity is what Identify reads.
type Identity struct {
	UUID string // as blkid prints it
	Size int64  // bytes the filesystem spans
}

// Options tune a Filesystem.
type Options struct {
	// NoSpaceMaxRetries (xfs only; Docker's dm.xfs_nospace_max_retries)
	// is how many times a mounted filesystem retries a metadata write that
	// failed for lack of space before it shuts down: 0 fails at once, -1
	// retries forever. nil leaves the kernel's default (forever). Set after
	// every mount.
	NoSpaceMaxRetries *int
}

// New returns the filesystem called name ("" is Ext4).
func New(name string, opts Options) (Filesystem, error) {
	switch name {
	case "", Ext4:
		if opts.NoSpaceMaxRetries != nil {
			return nil, fmt.Errorf("%w: ENOSPC max retries apply to xfs only, not ext4", ErrInvalidOptions)
		}
		return ext4FS{}, nil
	case XFS:
		if r := opts.NoSpaceMaxRetries; r != nil && *r < -1 {
			return nil, fmt.Errorf("%w: xfs ENOSPC max retries %d: want -1 (forever) or more", ErrInvalidOptions, *r)
		}
		return xfsFS{maxRetries: opts.NoSpaceMaxRetries}, nil
	}
	return nil, fmt.Errorf("%w: %q (want %s)", ErrUnsupported, name, strings.Join(Names(), " or "))
}

// JoinMountData joins filesystem data strings, leaving out empty ones.
func JoinMountData(data ...string) string {
	var parts []string
	for _, d := range data {
		if d != "" {
			parts = append(parts, d)
		}
	}
	return strings.Join(parts, ",")
}
