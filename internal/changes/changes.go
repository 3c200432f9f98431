package changes

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	archive "github.com/moby/go-archive"
	"golang.org/x/sys/unix"
)

// Slack is how much older than the snapshot a ctime may be and still be
// taken as a possible change: the kernel stamps ctimes from a coarse clock
// that may lag the time the snapshot was recorded with by a tick.
const Slack = 2 * time.Second

// Since lists the paths layerRoot added, modified or deleted relative to
// parentRoot ("" for an empty tree), given that layerRoot was a copy of
// parentRoot at created (see the package documentation). Paths are
// absolute within the layer ("/etc/passwd") and sorted. A directory
// holding a change is listed as modified, as go-archive does.
func Since(layerRoot, parentRoot string, created time.Time) ([]archive.Change, error) {
	w := &walker{since: created.Add(-Slack).UnixNano()}
	root := node{rel: "/", layer: layerRoot, parent: parentRoot, changed: true, reported: true}
	if parentRoot == "" {
		root.changed = false
	}
	if err := w.dir(root); err != nil {
		return nil, err
	}
	slices.SortFunc(w.changes, func(a, b archive.Change) int { return strings.Compare(a.Path, b.Path) })
	return w.changes, nil
}

type walker struct {
	since   int64 // ctimes at or after this (ns since the epoch) may be changes
	changes []archive.Change
}

// node is a directory of the layer and its counterpart in the parent.
type node struct {
	rel    string // "/" or "/a/b"
	layer  string // its path in the layer
	parent string // its path in the parent; "" if the parent has no directory there
	// changed: its ctime is new, so names may have come or gone.
	changed bool
	// reported: the directory itself is already listed (added or modified).
	reported bool
}

func (w *walker) dir(n node) error {
	names, err := readNames(n.layer)
	if err != nil {
		return err
	}
	var parentNames map[string]bool
	if n.parent != "" && n.changed {
		pn, err := readNames(n.parent)
		if err != nil {
			return err
		}
		parentNames = make(map[string]bool, len(pn))
		for _, p := range pn {
			parentNames[p] = true
		}
	}
	start := len(w.changes)
	for _, name := range names {
		child := node{rel: path.Join(n.rel, name), layer: path.Join(n.layer, name)}
		var st unix.Stat_t
		if err := unix.Lstat(child.layer, &st); err != nil {
			return fmt.Errorf("changes: %w", &os.PathError{Op: "lstat", Path: child.layer, Err: err})
		}
		isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
		inParent := n.parent != ""
		if inParent && n.changed {
			inParent = parentNames[name]
			delete(parentNames, name)
		}
		switch {
		case !inParent:
			// Added, and everything in it.
			w.add(child.rel, archive.ChangeAdd)
			child.reported = true
		case st.Ctim.Nano() >= w.since:
			// Touched since the snapshot: compare with the parent's.
			child.parent = path.Join(n.parent, name)
			child.changed = true
			var pst unix.Stat_t
			if err := unix.Lstat(child.parent, &pst); err != nil {
				return fmt.Errorf("changes: %w", &os.PathError{Op: "lstat", Path: child.parent, Err: err})
			}
			differ, err := different(&pst, &st, child.parent, child.layer)
			if err != nil {
				return err
			}
			if differ {
				w.add(child.rel, archive.ChangeModify)
				child.reported = true
			}
			if pst.Mode&unix.S_IFMT != unix.S_IFDIR {
				child.parent = "" // a file became a directory: all in it is new
			}
		default:
			// The same inode as in the parent, untouched.
			child.parent = path.Join(n.parent, name)
		}
		if isDir {
			if err := w.dir(child); err != nil {
				return err
			}
		}
	}
	for name := range parentNames {
		w.add(path.Join(n.rel, name), archive.ChangeDelete)
	}
	if len(w.changes) > start && !n.reported {
		w.add(n.rel, archive.ChangeModify)
	}
	return nil
}

func (w *walker) add(rel string, kind archive.ChangeType) {
	w.changes = append(w.changes, archive.Change{Path: rel, Kind: kind})
}

// different is go-archive's test: mode, owner or device differ, or for a
// non-directory mtime or size, or the file capabilities differ.
func different(old, cur *unix.Stat_t, oldPath, curPath string) (bool, error) {
	isDir := old.Mode&unix.S_IFMT == unix.S_IFDIR
	if old.Mode != cur.Mode || old.Uid != cur.Uid || old.Gid != cur.Gid || old.Rdev != cur.Rdev ||
		!isDir && (!sameTime(old.Mtim, cur.Mtim) || old.Size != cur.Size) {
		return true, nil
	}
	oc, err := capability(oldPath)
	if err != nil {
		return false, err
	}
	cc, err := capability(curPath)
	if err != nil {
		return false, err
	}
	return !bytes.Equal(oc, cc), nil
}

// sameTime is go-archive's: equal, or equal seconds where one side has no
// nanoseconds (a filesystem or tar that keeps only seconds).
func sameTime(a, b unix.Timespec) bool {
	return a == b || a.Sec == b.Sec && (a.Nsec == 0 || b.Nsec == 0)
}

func capability(p string) ([]byte, error) {
	buf := make([]byte, 64)
	for {
		n, err := unix.Lgetxattr(p, "security.capability", buf)
		switch {
		case errors.Is(err, unix.ERANGE):
			buf = make([]byte, 2*len(buf))
			continue
		case errors.Is(err, unix.ENODATA), errors.Is(err, unix.ENOTSUP):
			return nil, nil
		case err != nil:
			return nil, fmt.Errorf("changes: %w", &os.PathError{Op: "lgetxattr", Path: p, Err: err})
		}
		return buf[:n], nil
	}
}

func readNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("changes: %w", err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("changes: %w", err)
	}
	return names, nil
}
