package tarapply

import (
	"archive/tar"
	"bufio"
	"fmt"
	"io"
	"math"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	whiteoutPrefix     = ".wh."
	whiteoutMetaPrefix = whiteoutPrefix + whiteoutPrefix // AUFS metadata
	whiteoutLinkDir    = whiteoutMetaPrefix + "plnk"
	whiteoutOpaque     = whiteoutMetaPrefix + ".opq"
	paxXattr           = "SCHILY.xattr."
	impliedDirMode     = 0o755 // a parent directory the tar does not list
)

// Options tune Apply. The zero value is usable.
type Options struct {
	// Workers is the number of goroutines writing file contents; 0 means
	// 2 x GOMAXPROCS, at least 4 (they mostly wait for the kernel).
	Workers int
	// MaxBuffered is the largest file, in bytes, handed to a worker; larger
	// files are written in order by Apply's own goroutine. 0 means 4 MiB.
	MaxBuffered int64
	// MaxInFlight bounds the bytes of file contents held in memory for the
	// workers at once. 0 means 64 MiB.
	MaxInFlight int64
	// Sync makes the applied layer durable with one syncfs of the root's
	// filesystem before Apply returns.
	Sync bool
}

func (o Options) withDefaults() Options {
	if o.Workers <= 0 {
		o.Workers = max(4, 2*runtime.GOMAXPROCS(0))
	}
	if o.MaxBuffered <= 0 {
		o.MaxBuffered = 4 << 20
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 64 << 20
	}
	o.MaxBuffered = min(o.MaxBuffered, o.MaxInFlight)
	return o
}

// Apply applies the uncompressed layer tar read from r to the directory
// root and returns the sum of the entries' sizes (the bytes of file
// contents the layer carried), as go-archive's ApplyUncompressedLayer does.
//
// An entry replaces what is at its path unless both are directories, which
// merge (the entry's owner, mode, times and xattrs apply). ".wh.NAME"
// removes NAME; ".wh..wh..opq" removes from its directory everything this
// layer did not put there. A name or hard-link target leading out of root
// is refused with ErrOutsideRoot; symlinks met while resolving a parent
// directory resolve inside root, as if root were "/".
//
// On error, root holds part of the layer. Apply may read r past the end of
// the tar.
func Apply(root string, r io.Reader, opts Options) (int64, error) {
	a, err := newApplier(root, opts.withDefaults())
	if err != nil {
		return 0, err
	}
	// tar.Reader reads headers 512 bytes at a time; a large buffer turns
	// those into few reads of the stream.
	size, err := a.run(tar.NewReader(bufio.NewReaderSize(r, 1<<20)))
	a.close()
	return size, err
}

// dirTimes is a directory whose times are set when everything is written.
type dirTimes struct {
	name string
	ts   [2]unix.Timespec
}

func (a *applier) run(tr *tar.Reader) (int64, error) {
	var size int64
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return size, fmt.Errorf("tarapply: read tar: %w", err)
		}
		size += hdr.Size
		if err := a.trimDirs(); err != nil {
			return size, err
		}
		if err := a.entry(hdr, tr); err != nil {
			return size, err
		}
		if err := a.pool.failed(); err != nil {
			return size, err
		}
	}
	if err := a.pool.wait(); err != nil {
		return size, err
	}
	if err := a.setDirTimes(); err != nil {
		return size, err
	}
	if a.opts.Sync {
		if err := unix.Syncfs(a.rootFd); err != nil {
			return size, fmt.Errorf("tarapply: syncfs %s: %w", a.root, err)
		}
	}
	return size, nil
}

// entry applies one tar entry.
func (a *applier) entry(hdr *tar.Header, tr *tar.Reader) error {
	name := path.Clean(strings.TrimLeft(hdr.Name, "/"))
	if name == "." {
		return nil
	}
	if !filepath.IsLocal(name) {
		return fmt.Errorf("%w: name %q", ErrOutsideRoot, hdr.Name)
	}
	if strings.HasPrefix(name, whiteoutMetaPrefix) && name != whiteoutOpaque {
		// AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): not layer contents.
		return nil
	}
	dir, base := path.Split(name)
	dir = strings.TrimSuffix(dir, "/")

	if base == whiteoutOpaque {
		return a.opaque(dir)
	}
	if victim, ok := strings.CutPrefix(base, whiteoutPrefix); ok {
		return a.whiteout(dir, victim)
	}

	meta, err := newMeta(hdr)
	if err != nil {
		return fmt.Errorf("tarapply: %s: %w", name, err)
	}
	if _, dup := a.seen[name]; dup {
		// An earlier entry of this name may still be in a worker.
		if err := a.pool.wait(); err != nil {
			return err
		}
	}
	switch hdr.Typeflag {
	//lint:ignore SA1019 tars written before POSIX (and some writers since) still carry TypeRegA
	case tar.TypeReg, tar.TypeRegA:
		err = a.regular(entryName{dir, base, name}, hdr.Size, meta, tr)
	case tar.TypeDir:
		err = a.directory(entryName{dir, base, name}, meta)
	case tar.TypeSymlink:
		err = a.symlink(entryName{dir, base, name}, hdr.Linkname, meta)
	case tar.TypeLink:
		err = a.hardlink(entryName{dir, base, name}, hdr.Linkname, meta)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		err = a.node(entryName{dir, base, name}, hdr, meta)
	case tar.TypeXGlobalHeader:
		return nil
	default:
		return fmt.Errorf("tarapply: %s: unsupported tar entry type %q", name, hdr.Typeflag)
	}
	if err != nil {
		return err
	}
	a.seen[name] = struct{}{}
	return nil
}

// meta is what an entry's header says about its inode.
type meta struct {
	uid, gid int
	perm     uint32 // permission bits with setuid, setgid and sticky
	times    [2]unix.Timespec
	xattrs   []xattr
}

type xattr struct {
	name  string
	value []byte
}

func newMeta(hdr *tar.Header) (meta, error) {
	m := meta{uid: hdr.Uid, gid: hdr.Gid, perm: uint32(hdr.Mode & 0o7777)}
	if hdr.Uid < 0 || hdr.Gid < 0 || hdr.Uid > math.MaxUint32 || hdr.Gid > math.MaxUint32 {
		return m, fmt.Errorf("owner %d:%d out of range", hdr.Uid, hdr.Gid)
	}
	mtime := boundTime(hdr.ModTime)
	atime := boundTime(hdr.AccessTime)
	if atime.Before(mtime) {
		atime = mtime
	}
	m.times = [2]unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
	for k, v := range hdr.PAXRecords {
		if x, ok := strings.CutPrefix(k, paxXattr); ok {
			m.xattrs = append(m.xattrs, xattr{x, []byte(v)})
		}
	}
	return m, nil
}

// boundTime maps a time the kernel cannot store (or a zero time) to the
// epoch, as go-archive does.
func boundTime(t time.Time) time.Time {
	if t.Before(time.Unix(0, 0)) || t.After(time.Unix(0, math.MaxInt64)) {
		return time.Unix(0, 0)
	}
	return t
}
