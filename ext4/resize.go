package ext4

import (
	"context"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// e2fsck exit status bits (e2fsck(8)).
const (
	fsckCorrected   = 1 // errors corrected
	fsckUncorrected = 4 // errors left uncorrected
)

// Grow grows the filesystem on device to the size of the device (or image
// file), with resize2fs. A mounted filesystem is grown online by the kernel;
// growing to the current size does nothing.
//
// resize2fs refuses an unmounted filesystem that has not been checked since
// it was last mounted. When the superblock says so and nobody holds the
// device (an O_EXCL open succeeds), Grow first runs e2fsck -f -p, which
// repairs only what is safe to repair without a human and fails otherwise.
// A regular file is checked only if e2fsck itself finds it is not mounted
// through a loop device.
//
// Growing online needs CAP_SYS_RESOURCE (the kernel checks it for
// EXT4_IOC_RESIZE_FS); without it resize2fs fails with "Permission denied".
// Cancelling ctx kills the running program; an interrupted offline resize
// leaves a filesystem that needs e2fsck -fy.
func Grow(ctx context.Context, device string) error {
	sb, err := ReadSuperblockFile(device)
	if err != nil {
		return fmt.Errorf("ext4: grow %s: %w", device, err)
	}
	if !sb.checkedSinceMount() {
		busy, err := heldBlockDevice(device)
		if err != nil {
			return fmt.Errorf("ext4: grow %s: %w", device, err)
		}
		if !busy {
			if err := run(ctx, toolFsck, []int{fsckCorrected}, "-f", "-p", device); err != nil {
				return fmt.Errorf("ext4: grow %s: check before resizing: %w", device, err)
			}
		}
	}
	if err := run(ctx, toolResize, nil, device); err != nil {
		return fmt.Errorf("ext4: grow %s: %w", device, err)
	}
	return nil
}

// Check runs a full read-only check, e2fsck -f -n, which changes nothing.
// It returns nil for a clean filesystem. When e2fsck finds problems the
// error wraps both ErrCorrupt and the *ExecError carrying e2fsck's report.
// Run it on an unmounted device: on a mounted one e2fsck sees a moving
// target and may report problems that are not there.
func Check(ctx context.Context, device string) error {
	err := run(ctx, toolFsck, nil, "-f", "-n", device)
	if err == nil {
		return nil
	}
	var ee *ExecError
	if errors.As(err, &ee) && ee.ExitCode > 0 && ee.ExitCode&fsckUncorrected != 0 {
		return fmt.Errorf("ext4: check %s: %w: %w", device, ErrCorrupt, err)
	}
	return fmt.Errorf("ext4: check %s: %w", device, err)
}

// heldBlockDevice reports whether device is a block device that someone
// holds exclusively: mounted, or claimed by the device-mapper or md. It
// returns false for anything that is not a block device.
func heldBlockDevice(device string) (bool, error) {
	fi, err := os.Stat(device)
	if err != nil {
		return false, err
	}
	if fi.Mode()&os.ModeDevice == 0 || fi.Mode()&os.ModeCharDevice != 0 {
		return false, nil
	}
	fd, err := unix.Open(device, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.EBUSY) {
		return true, nil
	}
	if err != nil {
		return false, &os.PathError{Op: "open", Path: device, Err: err}
	}
	return false, unix.Close(fd)
}
