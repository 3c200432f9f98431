package tarapply

import (
	"errors"
	"fmt"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// maxCachedDirs bounds the open directory descriptors Apply keeps.
const maxCachedDirs = 512

type applier struct {
	root   string
	rootFd int
	opts   Options
	pool   *pool

	// dirs holds an O_PATH descriptor per resolved parent directory, by
	// its name in the tar. Descriptors are closed only while no worker
	// runs (after pool.wait), so a worker never sees one closed.
	dirs map[string]int
	// fresh holds the directories this Apply created empty (mkdirat): a
	// name in one that the tar has not used yet cannot exist, so its file
	// can go to a worker with O_EXCL and no check. Any removal clears it:
	// after one, a name may resolve differently than when it was made.
	fresh map[string]bool
	// seen holds every name this Apply created, for opaque directories.
	seen map[string]struct{}
	// dirTimes are set last, after the contents of the directories.
	dirTimes []dirTimes
	// copyBuf carries the files written in order, not by a worker.
	copyBuf []byte
}

func newApplier(root string, opts Options) (*applier, error) {
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("tarapply: open root: %w", &os.PathError{Op: "open", Path: root, Err: err})
	}
	return &applier{
		root:   root,
		rootFd: fd,
		opts:   opts,
		pool:   newPool(opts),
		dirs:   map[string]int{},
		fresh:  map[string]bool{},
		seen:   map[string]struct{}{},
	}, nil
}

// close stops the workers and closes every descriptor.
func (a *applier) close() {
	a.pool.stop()
	a.dropDirs()
	unix.Close(a.rootFd)
}

// trimDirs closes the cached descriptors once there are too many. It runs
// between entries only: an entry may hold two descriptors (a hard link's
// and its target's directory) that must stay open until it is made.
func (a *applier) trimDirs() error {
	if len(a.dirs) < maxCachedDirs {
		return nil
	}
	if err := a.pool.wait(); err != nil {
		return err
	}
	a.dropDirs()
	return nil
}

// dropDirs closes the cached directory descriptors; the pool must be idle.
func (a *applier) dropDirs() {
	for _, fd := range a.dirs {
		unix.Close(fd)
	}
	clear(a.dirs)
}

// dir returns a descriptor of the directory name ("" is the root),
// resolved inside the root: ".." stops at the root and absolute symlinks
// start from it. With create, missing directories on the way are made
// (mode 0755, as go-archive does for parents the tar does not list).
func (a *applier) dir(name string, create bool) (int, error) {
	if name == "" {
		return a.rootFd, nil
	}
	if fd, ok := a.dirs[name]; ok {
		return fd, nil
	}
	fd, err := a.openDir(name)
	if errors.Is(err, unix.ENOENT) && create {
		if _, ok := a.seen[name]; ok {
			// A file of this name may still be in a worker: let it land,
			// so that the error is the one a plain walk would meet.
			if err := a.pool.wait(); err != nil {
				return -1, err
			}
		}
		parent, base := path.Split(name)
		pfd, perr := a.dir(strings.TrimSuffix(parent, "/"), true)
		if perr != nil {
			return -1, perr
		}
		switch err := mkdirMode(pfd, base, impliedDirMode); {
		case err == nil:
			a.fresh[name] = true
			// Its parent now holds a name no entry used: a file of that
			// name must replace the directory, not go to a worker.
			delete(a.fresh, strings.TrimSuffix(parent, "/"))
		case !errors.Is(err, unix.EEXIST):
			return -1, a.pathErr("mkdir", name, err)
		}
		fd, err = a.openDir(name)
	}
	if err != nil {
		return -1, a.pathErr("open directory", name, err)
	}
	a.dirs[name] = fd
	return fd, nil
}

func (a *applier) openDir(name string) (int, error) {
	for {
		fd, err := unix.Openat2(a.rootFd, name, &unix.OpenHow{
			Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
		})
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue // a rename raced with the lookup; RESOLVE_IN_ROOT asks to retry
		}
		return fd, err
	}
}

// mkdirMode makes a directory with exactly perm, whatever the umask.
func mkdirMode(dirfd int, name string, perm uint32) error {
	if err := unix.Mkdirat(dirfd, name, 0o700); err != nil {
		return err
	}
	return unix.Fchmodat(dirfd, name, perm, 0)
}

// removed is called after anything was removed from the tree: a cached
// descriptor may now point at a deleted directory, and a fresh name may
// now resolve through a symlink a later entry puts in its place.
func (a *applier) removed() {
	a.dropDirs()
	clear(a.fresh)
}

// removeAll removes name in dirfd and, if it is a directory, everything
// in it. A missing name is not an error. The pool must be idle.
func removeAll(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return err
	}
	fd, oerr := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(oerr, unix.ENOTDIR) || errors.Is(oerr, unix.ELOOP) {
		return err // not a directory: the unlink's EPERM says why it stays
	}
	if oerr != nil {
		return oerr
	}
	names, err := readNames(fd)
	if err == nil {
		for _, n := range names {
			if err = removeAll(fd, n); err != nil {
				break
			}
		}
	}
	unix.Close(fd)
	if err != nil {
		return err
	}
	err = unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	return err
}

// readNames lists a directory opened for reading (fd stays open).
func readNames(fd int) ([]string, error) {
	dup, err := unix.Dup(fd)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(dup), "")
	defer f.Close()
	return f.Readdirnames(-1)
}

// whiteout removes victim from dir.
func (a *applier) whiteout(dir, victim string) error {
	name := path.Join(dir, victim)
	if victim == "" || victim == "." || victim == ".." {
		return fmt.Errorf("tarapply: invalid whiteout %q", path.Join(dir, whiteoutPrefix+victim))
	}
	if err := a.pool.wait(); err != nil {
		return err
	}
	d, err := a.dir(dir, true)
	if err != nil {
		return err
	}
	err = removeAll(d, victim)
	a.removed()
	if err != nil {
		return a.pathErr("remove whiteout target", name, err)
	}
	return nil
}

// opaque removes from dir everything this Apply did not create.
func (a *applier) opaque(dir string) error {
	if err := a.pool.wait(); err != nil {
		return err
	}
	d, err := a.dir(dir, true)
	if err != nil {
		return err
	}
	fd, err := unix.Openat(d, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return a.pathErr("open", dir, err)
	}
	err = a.keepSeen(fd, dir)
	unix.Close(fd)
	a.removed()
	if err != nil {
		return a.pathErr("empty opaque directory", dir, err)
	}
	return nil
}

// keepSeen removes what is in the directory fd (named dir in the tar)
// unless this Apply created it, descending into directories it created.
func (a *applier) keepSeen(fd int, dir string) error {
	names, err := readNames(fd)
	if err != nil {
		return err
	}
	for _, n := range names {
		name := path.Join(dir, n)
		if _, ok := a.seen[name]; !ok {
			if err := removeAll(fd, n); err != nil {
				return err
			}
			continue
		}
		sub, err := unix.Openat(fd, n, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
			continue
		}
		if err != nil {
			return err
		}
		err = a.keepSeen(sub, name)
		unix.Close(sub)
		if err != nil {
			return err
		}
	}
	return nil
}

// replace makes room for a new entry at base in dirfd: whatever is there
// goes (the pool must be idle).
func (a *applier) replace(dirfd int, name, base string) error {
	if err := a.pool.wait(); err != nil {
		return err
	}
	err := removeAll(dirfd, base)
	a.removed()
	if err != nil {
		return a.pathErr("replace", name, err)
	}
	return nil
}

func (a *applier) pathErr(op, name string, err error) error {
	return fmt.Errorf("tarapply: %w", &os.PathError{Op: op, Path: name, Err: err})
}
