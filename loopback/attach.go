package loopback

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// Options for Attach.
type Options struct {
	// ReadOnly opens the backing file read-only and makes the device
	// refuse writes.
	ReadOnly bool
	// DirectIO makes the loop device read and write its file with O_DIRECT,
	// bypassing the page cache (LO_FLAGS_DIRECT_IO). The kernel can only do
	// so when the file system supports O_DIRECT and its block size fits; if
	// it does not, Attach fails with ErrDirectIO and leaves nothing attached.
	// There is no silent fallback to buffered I/O.
	DirectIO bool
	// Autoclear makes the kernel unbind the device when its last opener
	// closes it (LO_FLAGS_AUTOCLEAR): after Close, once any mount or
	// device-mapper table using it is gone too.
	Autoclear bool
}

func (o Options) flags() Flags {
	var f Flags
	if o.ReadOnly {
		f |= FlagReadOnly
	}
	if o.Autoclear {
		f |= FlagAutoclear
	}
	if o.DirectIO {
		f |= FlagDirectIO
	}
	return f
}

// maxAttempts bounds the claims of a free device that Attach makes when other
// attachers keep winning the race for it.
const maxAttempts = 32

// method is how a loop device is bound.
type method int

const (
	// useConfigure: LOOP_CONFIGURE, falling back to useSetFD when the
	// kernel (before 5.8) does not know it.
	useConfigure method = iota
	// useSetFD: LOOP_SET_FD then LOOP_SET_STATUS64 (and LOOP_SET_DIRECT_IO).
	useSetFD
)

// Attach binds the file at path to a free loop device and returns a handle
// on it. It asks /dev/loop-control for a free device (the kernel makes one
// when none is free), and binds it with LOOP_CONFIGURE, or with LOOP_SET_FD
// and LOOP_SET_STATUS64 on kernels without it. When another attacher binds
// the same free device first (EBUSY), Attach asks for another one, a bounded
// number of times (then ErrNoFreeDevice). The flags asked for are checked in
// the kernel's status afterwards.
//
// The handle keeps the loop node open until Close or Detach. The file is
// not checked for size; a file shorter than 512 bytes gives an empty device.
func Attach(path string, opts Options) (*Device, error) {
	return attach(path, opts, useConfigure)
}

func attach(path string, opts Options, m method) (*Device, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, &Error{Op: "attach", Path: path, Err: err}
	}
	fileFlags := unix.O_RDWR | unix.O_CLOEXEC
	if opts.ReadOnly {
		fileFlags = unix.O_RDONLY | unix.O_CLOEXEC
	}
	if opts.DirectIO {
		fileFlags |= unix.O_DIRECT
	}
	file, err := openRetry(abs, fileFlags, 0)
	if err != nil {
		if opts.DirectIO && errors.Is(err, unix.EINVAL) {
			err = fmt.Errorf("%w: the file system refuses O_DIRECT: %w", ErrDirectIO, err)
		}
		return nil, &Error{Op: "open", Path: abs, Err: err}
	}
	defer unix.Close(file) // the kernel holds its own reference once bound

	ctl, err := openRetry(controlPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &Error{Op: "open", Path: controlPath, Err: err}
	}
	defer unix.Close(ctl)

	var lastErr error
	for attempt := 0; attempt < maxAttempts; attempt++ {
		if attempt > 0 {
			time.Sleep(time.Duration(attempt) * 100 * time.Microsecond)
		}
		n, err := unix.IoctlRetInt(ctl, unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, &Error{Op: "LOOP_CTL_GET_FREE", Path: controlPath, File: abs, Err: err}
		}
		d, err := openNumber(devDir, n, unix.O_RDWR)
		if err != nil {
			// The device went away (LOOP_CTL_REMOVE) or is held
			// exclusively: ask for another.
			if errors.Is(err, unix.ENXIO) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EBUSY) {
				lastErr = err
				continue
			}
			return nil, err
		}
		d.backing = abs
		err = d.bind(file, opts, m)
		if err == nil {
			return d, nil
		}
		err = joinErrs(err, d.Close())
		if errors.Is(err, unix.EBUSY) {
			lastErr = err
			continue
		}
		return nil, err
	}
	return nil, &Error{Op: "attach", Path: abs,
		Err: fmt.Errorf("%w after %d attempts: %w", ErrNoFreeDevice, maxAttempts, lastErr)}
}

// bind binds file to the device and checks the flags the kernel applied. On
// error the device is left unbound (by this call) and the handle open.
func (d *Device) bind(file int, opts Options, m method) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.bindLocked(file, opts, m); err != nil {
		return err
	}
	info, err := unix.IoctlLoopGetStatus64(d.fd)
	if err != nil {
		return joinErrs(d.errLocked("LOOP_GET_STATUS64", err), d.clearLocked())
	}
	got, want := Flags(info.Flags), opts.flags()
	switch {
	case want.Has(FlagDirectIO) && !got.Has(FlagDirectIO):
		return joinErrs(d.errLocked("LOOP_GET_STATUS64",
			fmt.Errorf("%w: the kernel did not enable it for this file (flags %v)", ErrDirectIO, got)),
			d.clearLocked())
	case !got.Has(want):
		return joinErrs(d.errLocked("LOOP_GET_STATUS64",
			fmt.Errorf("kernel applied flags %v, asked for %v", got, want)),
			d.clearLocked())
	}
	return nil
}

func (d *Device) bindLocked(file int, opts Options, m method) error {
	if m == useConfigure {
		var cfg unix.LoopConfig
		cfg.Fd = uint32(file)
		cfg.Info.Flags = uint32(opts.flags())
		setFileName(&cfg.Info, d.backing)
		err := unix.IoctlLoopConfigure(d.fd, &cfg)
		// Before 5.8 the kernel answers an unknown loop ioctl with EINVAL
		// (or ENOTTY); a real EINVAL from LOOP_CONFIGURE comes back from
		// LOOP_SET_FD too.
		if err == nil || !(errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTTY)) {
			return d.errLocked("LOOP_CONFIGURE", err)
		}
	}
	if err := unix.IoctlSetInt(d.fd, unix.LOOP_SET_FD, file); err != nil {
		return d.errLocked("LOOP_SET_FD", err)
	}
	// LOOP_SET_FD made the device read-only if the file was opened so;
	// autoclear is the one flag LOOP_SET_STATUS64 sets that we want.
	var info unix.LoopInfo64
	info.Flags = uint32(opts.flags() & FlagAutoclear)
	setFileName(&info, d.backing)
	if err := unix.IoctlLoopSetStatus64(d.fd, &info); err != nil {
		return joinErrs(d.errLocked("LOOP_SET_STATUS64", err), d.clearLocked())
	}
	if opts.DirectIO {
		if err := unix.IoctlSetInt(d.fd, unix.LOOP_SET_DIRECT_IO, 1); err != nil {
			return joinErrs(d.errLocked("LOOP_SET_DIRECT_IO", fmt.Errorf("%w: %w", ErrDirectIO, err)), d.clearLocked())
		}
	}
	return nil
}

// clearLocked undoes a bind that failed half-way.
func (d *Device) clearLocked() error {
	return d.errLocked("LOOP_CLR_FD", unix.IoctlSetInt(d.fd, unix.LOOP_CLR_FD, 0))
}

// errLocked wraps err (nil stays nil) with the device and its file.
func (d *Device) errLocked(op string, err error) error {
	if err == nil {
		return nil
	}
	return &Error{Op: op, Path: d.path, File: d.backing, Err: err}
}
