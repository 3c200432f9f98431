// Package loopback makes sparse backing files and binds them to Linux loop
// devices (/dev/loopN), without cgo, through the ioctls of
// golang.org/x/sys/unix.
//
// It is for:
//   - creating or growing a sparse backing file (CreateSparse), never
//     shrinking one;
//   - attaching a file to a free loop device (Attach), read-only, with direct
//     I/O or with autoclear, safely against other processes attaching at the
//     same time;
//   - finding the loop device already bound to a file after a restart (Find),
//     by the file's device and inode numbers rather than by its name;
//   - the life of one binding: its device number, its size, telling the
//     kernel the file grew (SetCapacity), and detaching (Detach).
//
// No udev is assumed: when /dev/loopN is missing, the package makes the node
// itself, with the device number sysfs gives.
//
// It is not for: partitions on loop devices (LO_FLAGS_PARTSCAN is never
// set), offsets, size limits or encryption, choosing a particular loop
// number, removing loop devices (LOOP_CTL_REMOVE), or anything about what is
// written on the device (see ext4 and thinpool).
//
// # Handles and the kernel's binding
//
// A Device is a handle: an open file descriptor on the loop node. The binding
// of the file to the loop device lives in the kernel and may outlive the
// handle. Close only drops the handle: the binding stays (for a later Find)
// unless the device was attached with Options.Autoclear, in which case the
// kernel unbinds it once nobody holds it open any more (a mounted
// filesystem or a device-mapper table counts as holding it). Detach asks the
// kernel to unbind: at once when nobody else holds the device; when others
// do, the kernel marks it autoclear and unbinds it at their last close (very
// old kernels refused with EBUSY instead).
//
// # Errors
//
// Failures are *Error values carrying the operation, the path and the
// kernel's errno: errors.Is(err, unix.EBUSY) works through any wrapping.
// Conditions callers act on have sentinels (ErrNotFound, ErrShrink, ...);
// see errors.go.
package loopback
