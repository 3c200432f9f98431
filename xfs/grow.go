package xfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Grow grows the data section of the XFS filesystem mounted at mountpoint
// to the size of its device, with xfs_growfs -d. XFS grows only while
// mounted; growing to the current size does nothing. The kernel adds the
// new space in one transaction per allocation group, so an interrupted
// grow leaves a consistent, partly grown filesystem that a second Grow
// completes.
func Grow(ctx context.Context, mountpoint string) error {
	if err := run(ctx, toolGrowfs, "-d", mountpoint); err != nil {
		return fmt.Errorf("xfs: grow %s: %w", mountpoint, err)
	}
	return nil
}

// MountOptions are the filesystem options every mount of a layer needs:
// nouuid, because a thin snapshot carries its origin's UUID and XFS
// refuses to mount a UUID already mounted.
const MountOptions = "nouuid"

// sysfsRoot is where the kernel shows mounted XFS filesystems; tests move
// it.
var sysfsRoot = "/sys/fs/xfs"

// SetNoSpaceMaxRetries sets how many times the XFS filesystem mounted from
// device retries a metadata write that failed with ENOSPC before it shuts
// down: 0 fails at once, -1 retries forever (the kernel's default). On a
// thin device ENOSPC means the pool is out of data space; Docker's
// dm.xfs_nospace_max_retries sets it after each mount.
//
// It writes /sys/fs/xfs/<dev>/error/metadata/ENOSPC/max_retries, where dev
// is the kernel's name of the block device (dm-3, loop0).
func SetNoSpaceMaxRetries(device string, retries int) error {
	if retries < -1 {
		return fmt.Errorf("%w: max retries %d: want -1 (forever) or more", ErrInvalidOptions, retries)
	}
	name, err := blockDeviceName(device)
	if err != nil {
		return fmt.Errorf("xfs: set ENOSPC retries of %s: %w", device, err)
	}
	path := filepath.Join(sysfsRoot, name, "error", "metadata", "ENOSPC", "max_retries")
	if err := os.WriteFile(path, []byte(strconv.Itoa(retries)), 0o644); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("xfs: set ENOSPC retries of %s: no XFS filesystem of %s is mounted: %w", device, name, err)
		}
		return fmt.Errorf("xfs: set ENOSPC retries of %s: %w", device, err)
	}
	return nil
}

// NoSpaceMaxRetries reads what SetNoSpaceMaxRetries sets.
func NoSpaceMaxRetries(device string) (int, error) {
	name, err := blockDeviceName(device)
	if err != nil {
		return 0, fmt.Errorf("xfs: ENOSPC retries of %s: %w", device, err)
	}
	b, err := os.ReadFile(filepath.Join(sysfsRoot, name, "error", "metadata", "ENOSPC", "max_retries"))
	if err != nil {
		return 0, fmt.Errorf("xfs: ENOSPC retries of %s: %w", device, err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("xfs: ENOSPC retries of %s: %w", device, err)
	}
	return n, nil
}

// sysDevBlock is where the kernel links block devices by number.
var sysDevBlock = "/sys/dev/block"

// blockDeviceName is the kernel's name of the block device node path (the
// node may have any name: /dev/mapper/x, a node under a store's root).
func blockDeviceName(path string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return "", &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return "", fmt.Errorf("%s is not a block device", path)
	}
	link, err := os.Readlink(filepath.Join(sysDevBlock, fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))))
	if err != nil {
		return "", err
	}
	return filepath.Base(link), nil
}
