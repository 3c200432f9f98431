package tarapply

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"math"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// entryName is an entry's cleaned name and its two halves ("" is the root).
type entryName struct {
	dir, base, name string
}

// create runs mk in the entry's parent directory; if the name is taken,
// what is there is removed first and mk runs again. It returns the parent
// descriptor the entry was made in.
func (a *applier) create(e entryName, op string, mk func(dirfd int) error) (int, error) {
	d, err := a.dir(e.dir, true)
	if err != nil {
		return -1, err
	}
	err = mk(d)
	if errors.Is(err, unix.EEXIST) {
		if err := a.replace(d, e.name, e.base); err != nil {
			return -1, err
		}
		if d, err = a.dir(e.dir, true); err != nil {
			return -1, err
		}
		err = mk(d)
	}
	if err != nil {
		return -1, a.pathErr(op, e.name, err)
	}
	return d, nil
}

// regular writes a regular file: through a worker when its directory is
// one this Apply made and the name is new, else here, replacing what is
// at the name.
func (a *applier) regular(e entryName, size int64, m meta, r io.Reader) error {
	if _, dup := a.seen[e.name]; !dup && a.fresh[e.dir] && size <= a.opts.MaxBuffered {
		d, err := a.dir(e.dir, true)
		if err != nil {
			return err
		}
		data := a.pool.acquire(size)
		if _, err := io.ReadFull(r, data); err != nil {
			a.pool.release(size)
			return fmt.Errorf("tarapply: read %s: %w", e.name, err)
		}
		a.pool.submit(job{dirfd: d, name: e.name, base: e.base, meta: m, data: data})
		return nil
	}
	var fd int
	_, err := a.create(e, "create", func(d int) (err error) {
		fd, err = unix.Openat(d, e.base, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o600)
		return err
	})
	if err != nil {
		return err
	}
	if a.copyBuf == nil {
		a.copyBuf = make([]byte, 1<<20)
	}
	err = copyTo(fd, r, a.copyBuf)
	if err == nil {
		err = finishFile(fd, m)
	}
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err != nil {
		return a.pathErr("write", e.name, err)
	}
	return nil
}

// copyTo writes what r holds to fd.
func copyTo(fd int, r io.Reader, buf []byte) error {
	for {
		n, rerr := r.Read(buf)
		if n > 0 {
			if err := writeAll(fd, buf[:n]); err != nil {
				return err
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// finishFile sets an open file's owner, xattrs, mode and times, in that
// order: chown clears setuid bits and file capabilities, so it goes first.
func finishFile(fd int, m meta) error {
	if err := unix.Fchown(fd, m.uid, m.gid); err != nil {
		return err
	}
	for _, x := range m.xattrs {
		if err := unix.Fsetxattr(fd, x.name, x.value, 0); err != nil {
			return fmt.Errorf("set xattr %s: %w", x.name, err)
		}
	}
	if err := unix.Fchmod(fd, m.perm); err != nil {
		return err
	}
	return futimens(fd, &m.times)
}

// futimens is utimensat(fd, NULL, times, 0), which x/sys/unix does not wrap.
func futimens(fd int, ts *[2]unix.Timespec) error {
	_, _, errno := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(ts)), 0, 0, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// directory makes a directory, or merges into the one already there.
func (a *applier) directory(e entryName, m meta) error {
	made := false
	d, err := a.create(e, "mkdir", func(d int) error {
		err := unix.Mkdirat(d, e.base, 0o700)
		if errors.Is(err, unix.EEXIST) {
			var st unix.Stat_t
			if serr := unix.Fstatat(d, e.base, &st, unix.AT_SYMLINK_NOFOLLOW); serr == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
				return nil // merge
			}
			return err
		}
		made = err == nil
		return err
	})
	if err != nil {
		return err
	}
	if err := a.setMetaAt(d, e, m, true); err != nil {
		return err
	}
	if made {
		a.fresh[e.name] = true
	}
	a.dirTimes = append(a.dirTimes, dirTimes{name: e.name, ts: m.times})
	return nil
}

// symlink makes a symlink; its target is stored as the tar gives it.
func (a *applier) symlink(e entryName, target string, m meta) error {
	d, err := a.create(e, "symlink", func(d int) error { return unix.Symlinkat(target, d, e.base) })
	if err != nil {
		return err
	}
	if err := unix.Fchownat(d, e.base, m.uid, m.gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return a.pathErr("lchown", e.name, err)
	}
	if err := setXattrsAt(d, e.base, m.xattrs); err != nil {
		return a.pathErr("lsetxattr", e.name, err)
	}
	if err := unix.UtimesNanoAt(d, e.base, m.times[:], unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return a.pathErr("lutimes", e.name, err)
	}
	return nil
}

// hardlink links the entry to an earlier one of the layer. The header's
// owner, xattrs, mode and times then apply to the shared inode (unless it
// is a symlink), as go-archive does.
func (a *applier) hardlink(e entryName, linkname string, m meta) error {
	target := path.Clean(strings.TrimLeft(linkname, "/"))
	if target == "." || !filepath.IsLocal(target) {
		return fmt.Errorf("%w: hard link %s to %q", ErrOutsideRoot, e.name, linkname)
	}
	if strings.HasPrefix(target, whiteoutLinkDir) {
		return fmt.Errorf("tarapply: hard link %s into %s: AUFS link directories are not supported", e.name, whiteoutLinkDir)
	}
	if err := a.pool.wait(); err != nil { // the target may still be in a worker
		return err
	}
	tdir, tbase := path.Split(target)
	tdir = strings.TrimSuffix(tdir, "/")
	d, err := a.create(e, "link", func(d int) error {
		td, err := a.dir(tdir, false)
		if err != nil {
			return err
		}
		return unix.Linkat(td, tbase, d, e.base, 0)
	})
	if err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstatat(d, e.base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return a.pathErr("lstat", e.name, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		if err := unix.Fchownat(d, e.base, m.uid, m.gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return a.pathErr("lchown", e.name, err)
		}
		if err := setXattrsAt(d, e.base, m.xattrs); err != nil {
			return a.pathErr("lsetxattr", e.name, err)
		}
		return nil
	}
	return a.setMetaAt(d, e, m, false)
}

// node makes a character or block device or a fifo.
func (a *applier) node(e entryName, hdr *tar.Header, m meta) error {
	mode := m.perm
	switch hdr.Typeflag {
	case tar.TypeChar:
		mode |= unix.S_IFCHR
	case tar.TypeBlock:
		mode |= unix.S_IFBLK
	default:
		mode |= unix.S_IFIFO
	}
	if hdr.Devmajor < 0 || hdr.Devmajor > math.MaxUint32 || hdr.Devminor < 0 || hdr.Devminor > math.MaxUint32 {
		return fmt.Errorf("tarapply: %s: device number %d:%d out of range", e.name, hdr.Devmajor, hdr.Devminor)
	}
	dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
	d, err := a.create(e, "mknod", func(d int) error { return unix.Mknodat(d, e.base, mode, int(dev)) })
	if err != nil {
		return err
	}
	return a.setMetaAt(d, e, m, false)
}

// setMetaAt sets owner, xattrs, mode and (unless deferTimes, for
// directories) times of a non-symlink entry by its name in dirfd.
func (a *applier) setMetaAt(d int, e entryName, m meta, deferTimes bool) error {
	if err := unix.Fchownat(d, e.base, m.uid, m.gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return a.pathErr("lchown", e.name, err)
	}
	if err := setXattrsAt(d, e.base, m.xattrs); err != nil {
		return a.pathErr("lsetxattr", e.name, err)
	}
	if err := unix.Fchmodat(d, e.base, m.perm, 0); err != nil {
		return a.pathErr("chmod", e.name, err)
	}
	if deferTimes {
		return nil
	}
	if err := unix.UtimesNanoAt(d, e.base, m.times[:], unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return a.pathErr("utimes", e.name, err)
	}
	return nil
}

// setXattrsAt sets xattrs on base in dirfd without following a symlink
// there. There is no lsetxattrat, so the path goes through /proc's link
// to dirfd, which stays inside the directory already resolved.
func setXattrsAt(dirfd int, base string, xattrs []xattr) error {
	if len(xattrs) == 0 {
		return nil
	}
	p := "/proc/self/fd/" + strconv.Itoa(dirfd) + "/" + base
	for _, x := range xattrs {
		if err := unix.Lsetxattr(p, x.name, x.value, 0); err != nil {
			return fmt.Errorf("set xattr %s: %w", x.name, err)
		}
	}
	return nil
}

// setDirTimes sets the directories' times once everything is in them. A
// directory a later entry removed or replaced (itself or a parent) is
// skipped: what replaced it keeps its own times.
func (a *applier) setDirTimes() error {
	for _, dt := range a.dirTimes {
		parent, base := path.Split(dt.name)
		d, err := a.dir(strings.TrimSuffix(parent, "/"), false)
		var st unix.Stat_t
		if err == nil {
			err = unix.Fstatat(d, base, &st, unix.AT_SYMLINK_NOFOLLOW)
		}
		if err == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR {
			continue // a file, symlink or node took its name
		}
		if err == nil {
			err = unix.UtimesNanoAt(d, base, dt.ts[:], unix.AT_SYMLINK_NOFOLLOW)
		}
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			continue
		}
		if err != nil {
			return a.pathErr("utimes", dt.name, err)
		}
	}
	return nil
}
