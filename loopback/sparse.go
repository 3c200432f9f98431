package loopback

import (
	"errors"
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// SectorSize is the unit loop devices count in: a backing file's size should
// be a multiple of it, or the kernel ignores the tail.
const SectorSize = 512

// CreateSparse makes path a sparse regular file of size bytes: it creates
// the file (mode 0600) if it does not exist, or grows it to size, keeping its
// contents. A file already of that size is left alone. It never shrinks a
// file: a larger file gives ErrShrink and is not touched. The file, and the
// directory entry of a new file, are fsynced before it returns.
//
// size must be a positive multiple of SectorSize (ErrBadSize otherwise).
// CreateSparse does not tell an attached loop device about the new size; call
// Device.SetCapacity after it.
func CreateSparse(path string, size int64) error {
	if size <= 0 || size%SectorSize != 0 {
		return &Error{Op: "create", Path: path, Err: fmt.Errorf("%w: got %d", ErrBadSize, size)}
	}
	created := true
	fd, err := openRetry(path, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o600)
	if errors.Is(err, unix.EEXIST) {
		created = false
		fd, err = openRetry(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return &Error{Op: "open", Path: path, Err: err}
	}
	err = growFD(fd, path, size)
	if cerr := unix.Close(fd); cerr != nil && err == nil {
		err = &Error{Op: "close", Path: path, Err: cerr}
	}
	if err != nil {
		return err
	}
	if created {
		return syncDir(filepath.Dir(path))
	}
	return nil
}

// growFD grows the open file fd to size and fsyncs it.
func growFD(fd int, path string, size int64) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return &Error{Op: "fstat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return &Error{Op: "create", Path: path, Err: ErrNotRegular}
	}
	switch {
	case st.Size > size:
		return &Error{Op: "grow", Path: path,
			Err: fmt.Errorf("%w: file has %d bytes, asked for %d", ErrShrink, st.Size, size)}
	case st.Size < size:
		if err := unix.Ftruncate(fd, size); err != nil {
			return &Error{Op: "ftruncate", Path: path, Err: err}
		}
	}
	if err := unix.Fsync(fd); err != nil {
		return &Error{Op: "fsync", Path: path, Err: err}
	}
	return nil
}

// syncDir fsyncs a directory, so that a new entry in it survives a crash.
func syncDir(dir string) error {
	fd, err := openRetry(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &Error{Op: "open", Path: dir, Err: err}
	}
	err = unix.Fsync(fd)
	cerr := unix.Close(fd)
	if err != nil {
		return &Error{Op: "fsync", Path: dir, Err: err}
	}
	if cerr != nil {
		return &Error{Op: "close", Path: dir, Err: cerr}
	}
	return nil
}

// openRetry is unix.Open retried on EINTR (opening a file on a network file
// system or a FUSE mount can be interrupted by a signal).
func openRetry(path string, flags int, mode uint32) (int, error) {
	for {
		fd, err := unix.Open(path, flags, mode)
		if !errors.Is(err, unix.EINTR) {
			return fd, err
		}
	}
}
