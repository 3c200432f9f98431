package fsys

import (
	"context"
	"errors"
	"fmt"

	"github.com/dmthin/dmthin/xfs"
)

// xfsFS is XFS through package xfs.
type xfsFS struct {
	maxRetries *int
}

func (xfsFS) Type() string { return XFS }

func (xfsFS) MinSize() int64 { return xfs.MinSize }

func (xfsFS) ValidateMkfsArgs(args []string) error {
	if err := (xfs.FormatOptions{ExtraArgs: args}).Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidOptions, err)
	}
	return nil
}

func (xfsFS) Format(ctx context.Context, device string, mkfsArgs []string) error {
	return xfs.Format(ctx, device, xfs.FormatOptions{ExtraArgs: mkfsArgs})
}

func (xfsFS) Identify(device string) (Identity, error) {
	sb, err := xfs.ReadSuperblockFile(device)
	if errors.Is(err, xfs.ErrNotXFS) {
		return Identity{}, fmt.Errorf("%w: %w", ErrNotFormatted, err)
	}
	if err != nil {
		return Identity{}, err
	}
	return Identity{UUID: sb.UUIDString(), Size: int64(sb.Size())}, nil
}

// Grow runs xfs_growfs on the mount point: XFS grows only while mounted.
func (xfsFS) Grow(ctx context.Context, _, mountpoint string) error {
	return xfs.Grow(ctx, mountpoint)
}

// MountData: every layer is a snapshot carrying the base's UUID.
func (xfsFS) MountData() string { return xfs.MountOptions }

func (f xfsFS) Mounted(device string) error {
	if f.maxRetries == nil {
		return nil
	}
	return xfs.SetNoSpaceMaxRetries(device, *f.maxRetries)
}
