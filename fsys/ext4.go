package fsys

import (
	"context"
	"errors"
	"fmt"

	"github.com/dmthin/dmthin/ext4"
)

// ext4FS is ext4 through package ext4.
type ext4FS struct{}

func (ext4FS) Type() string { return Ext4 }

// MinSize: ext4 with its journal needs a few megabytes, and a layer needs
// room for files.
func (ext4FS) MinSize() int64 { return 16 << 20 }

func (ext4FS) ValidateMkfsArgs(args []string) error {
	if err := (ext4.FormatOptions{ExtraArgs: args}).Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidOptions, err)
	}
	return nil
}

func (ext4FS) Format(ctx context.Context, device string, mkfsArgs []string) error {
	return ext4.Format(ctx, device, ext4.FormatOptions{ExtraArgs: mkfsArgs})
}

func (ext4FS) Identify(device string) (Identity, error) {
	sb, err := ext4.ReadSuperblockFile(device)
	if errors.Is(err, ext4.ErrNotExt4) {
		return Identity{}, fmt.Errorf("%w: %w", ErrNotFormatted, err)
	}
	if err != nil {
		return Identity{}, err
	}
	return Identity{UUID: sb.UUIDString(), Size: int64(sb.Size())}, nil
}

// Grow runs resize2fs on the device; with the filesystem mounted the kernel
// grows it online (resize2fs refuses an unmounted one mounted since its last
// full check, and a check costs more than a mount).
func (ext4FS) Grow(ctx context.Context, device, _ string) error { return ext4.Grow(ctx, device) }

func (ext4FS) MountData() string { return "" }

func (ext4FS) Mounted(string) error { return nil }
