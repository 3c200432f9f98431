package devlabel

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// alignedBlock returns a Size-byte buffer aligned for O_DIRECT.
func alignedBlock() []byte {
	b := make([]byte, 2*Size)
	off := int((Size - uintptr(unsafe.Pointer(&b[0]))%Size) % Size)
	return b[off : off+Size]
}

// Read reads the label of the block device at path, bypassing the page
// cache (O_DIRECT), so that it sees what is on the device.
func Read(path string) (Label, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return Label{}, fmt.Errorf("devlabel: read %s: %w", path, &os.PathError{Op: "open", Path: path, Err: err})
	}
	defer unix.Close(fd)
	b := alignedBlock()
	n, err := unix.Pread(fd, b, 0)
	if err != nil {
		return Label{}, fmt.Errorf("devlabel: read %s: %w", path, &os.PathError{Op: "read", Path: path, Err: err})
	}
	l, err := Decode(b[:n])
	if err != nil {
		return Label{}, fmt.Errorf("%s: %w", path, err)
	}
	return l, nil
}

// Write writes l at offset 0 of the block device at path with O_DIRECT and
// O_DSYNC, then fsyncs: when it returns nil the label is on the device.
func Write(path string, l Label) error {
	enc, err := l.Encode()
	if err != nil {
		return err
	}
	b := alignedBlock()
	copy(b, enc)
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_DIRECT|unix.O_DSYNC|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("devlabel: write %s: %w", path, &os.PathError{Op: "open", Path: path, Err: err})
	}
	n, err := unix.Pwrite(fd, b, 0)
	if err == nil && n != Size {
		err = fmt.Errorf("short write: %d of %d bytes", n, Size)
	}
	if err == nil {
		err = unix.Fsync(fd)
	}
	cerr := unix.Close(fd)
	if err != nil {
		return fmt.Errorf("devlabel: write %s: %w", path, err)
	}
	if cerr != nil {
		return fmt.Errorf("devlabel: write %s: close: %w", path, cerr)
	}
	return nil
}
