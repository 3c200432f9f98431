package graphdriver

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	archive "github.com/moby/go-archive"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// writeTree makes files under root; a value ending in "/" is a directory,
// "->target" a symlink, anything else a regular file's content.
func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		v := files[p]
		full := filepath.Join(root, p)
		require.NoError(t, os.MkdirAll(filepath.Dir(full), 0o755))
		switch {
		case v == "/":
			require.NoError(t, os.MkdirAll(full, 0o755))
		case len(v) > 2 && v[:2] == "->":
			require.NoError(t, os.Symlink(v[2:], full))
		default:
			require.NoError(t, os.WriteFile(full, []byte(v), 0o644))
		}
	}
}

// copyTree copies src to dst keeping modes, owners, times and hard links
// (in Go: busybox's cp -a, in the test VM, drops symlink times).
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	links := map[uint64]string{}
	type dirTimes struct {
		path string
		ts   []unix.Timespec
	}
	var dirs []dirTimes
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		out := filepath.Join(dst, rel)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		ts := []unix.Timespec{st.Atim, st.Mtim}
		mode := st.Mode & 0o7777
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			if err := os.Mkdir(out, 0o700); err != nil {
				return err
			}
			dirs = append(dirs, dirTimes{out, ts})
		case unix.S_IFREG:
			if first, ok := links[st.Ino]; ok && st.Nlink > 1 {
				return os.Link(first, out)
			}
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if err := os.WriteFile(out, data, 0o600); err != nil {
				return err
			}
			links[st.Ino] = out
		case unix.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, out); err != nil {
				return err
			}
		case unix.S_IFIFO:
			if err := unix.Mkfifo(out, 0o600); err != nil {
				return err
			}
		default:
			return fmt.Errorf("copyTree: %s: unsupported file type %o", p, st.Mode&unix.S_IFMT)
		}
		if err := os.Lchown(out, int(st.Uid), int(st.Gid)); err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT != unix.S_IFLNK {
			if err := unix.Chmod(out, mode); err != nil {
				return err
			}
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			return nil // after its contents
		}
		return unix.UtimesNanoAt(unix.AT_FDCWD, out, ts, unix.AT_SYMLINK_NOFOLLOW)
	})
	require.NoError(t, err)
	for i := len(dirs) - 1; i >= 0; i-- {
		require.NoError(t, unix.UtimesNanoAt(unix.AT_FDCWD, dirs[i].path, dirs[i].ts, 0))
	}
}

// treeState describes every entry below root the way a user comparing two
// trees would: type, permissions, owner, content, link target, mtime of
// non-directories (to the second, as tar keeps it) and hard-link groups.
func treeState(t *testing.T, root string) map[string]string {
	t.Helper()
	state := map[string]string{}
	inodes := map[uint64]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		desc := fmt.Sprintf("%v uid=%d gid=%d", fi.Mode(), st.Uid, st.Gid)
		switch {
		case fi.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" sha=%x mtime=%d", sha256.Sum256(data), fi.ModTime().Unix())
			if st.Nlink > 1 {
				if first, ok := inodes[st.Ino]; ok {
					desc += " hardlink-of=" + first
				} else {
					inodes[st.Ino] = rel
				}
			}
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			desc += " -> " + target
		case fi.IsDir():
		default:
			desc += fmt.Sprintf(" rdev=%d mtime=%d", st.Rdev, fi.ModTime().Unix())
		}
		state[rel] = desc
		return nil
	})
	require.NoError(t, err)
	return state
}

func tarNames(t *testing.T, r io.Reader) map[string]*tar.Header {
	t.Helper()
	names := map[string]*tar.Header{}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return names
		}
		require.NoError(t, err)
		names[hdr.Name] = hdr
	}
}

func mustChanges(t *testing.T, layer, parent string) []archive.Change {
	t.Helper()
	changes, err := changesDirs(layer, parent)
	require.NoError(t, err)
	return changes
}

func changeSet(changes []archive.Change) map[string]string {
	m := map[string]string{}
	for _, c := range changes {
		m[c.Path] = c.Kind.String()
	}
	return m
}

// makeParentAndChild builds a parent tree and a child that adds, modifies,
// deletes, re-types, chmods and chowns entries, the way a layer does.
func makeParentAndChild(t *testing.T) (parent, child string) {
	t.Helper()
	base := t.TempDir()
	parent, child = filepath.Join(base, "parent"), filepath.Join(base, "child")
	writeTree(t, parent, map[string]string{
		"etc/hostname":       "parent\n",
		"etc/passwd":         "root:x:0:0::/root:/bin/sh\n",
		"etc/keep.conf":      "unchanged\n",
		"bin/sh":             "#!binary\n",
		"bin/link":           "->sh",
		"usr/share/doc/a":    "doc a\n",
		"usr/share/doc/b":    "doc b\n",
		"usr/share/keep":     "keep\n",
		"var/lib/data/x":     "x\n",
		"opt/file":           "a file that becomes a directory\n",
		"hard/one":           "hard\n",
		"mode.sh":            "echo\n",
		"owner":              "owned\n",
		"empty-dir/":         "/",
		"replace-symlink":    "->bin/sh",
		"usr/share/keep-dir": "/",
	})
	require.NoError(t, os.Link(filepath.Join(parent, "hard/one"), filepath.Join(parent, "hard/two")))
	// Files older than the copy so that modifications change mtimes.
	old := time.Now().Add(-time.Hour)
	require.NoError(t, filepath.WalkDir(parent, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.Type()&fs.ModeSymlink != 0 {
			return err
		}
		return os.Chtimes(p, old, old)
	}))
	copyTree(t, parent, child)

	in := func(p string) string { return filepath.Join(child, p) }
	require.NoError(t, os.WriteFile(in("etc/hostname"), []byte("child\n"), 0o644))
	require.NoError(t, os.Remove(in("etc/passwd")))
	require.NoError(t, os.RemoveAll(in("usr/share/doc")))
	require.NoError(t, os.RemoveAll(in("var/lib/data")))
	require.NoError(t, os.WriteFile(in("var/lib/data"), []byte("now a file\n"), 0o600))
	require.NoError(t, os.Remove(in("opt/file")))
	require.NoError(t, os.MkdirAll(in("opt/file/inside"), 0o750))
	require.NoError(t, os.Chmod(in("mode.sh"), 0o755))
	require.NoError(t, os.Chown(in("owner"), 1000, 1001))
	require.NoError(t, os.Remove(in("replace-symlink")))
	require.NoError(t, os.Symlink("/elsewhere", in("replace-symlink")))
	writeTree(t, child, map[string]string{
		"new/dir/file.txt": "new file\n",
		"new/empty/":       "/",
		"new/link":         "->dir/file.txt",
		"new/h1":           "linked\n",
	})
	require.NoError(t, os.Link(in("new/h1"), in("new/h2")))
	require.NoError(t, unix.Mkfifo(in("new/fifo"), 0o640))
	return parent, child
}

func TestChangesDirs(t *testing.T) {
	parent, child := makeParentAndChild(t)
	changes, err := changesDirs(child, parent)
	require.NoError(t, err)
	assert.Equal(t, map[string]string{
		"/etc":              "C",
		"/etc/hostname":     "C",
		"/etc/passwd":       "D",
		"/usr":              "C",
		"/usr/share":        "C",
		"/usr/share/doc":    "D",
		"/var":              "C",
		"/var/lib":          "C",
		"/var/lib/data":     "C",
		"/opt":              "C",
		"/opt/file":         "C",
		"/opt/file/inside":  "A",
		"/mode.sh":          "C",
		"/owner":            "C",
		"/replace-symlink":  "C",
		"/new":              "A",
		"/new/dir":          "A",
		"/new/dir/file.txt": "A",
		"/new/empty":        "A",
		"/new/link":         "A",
		"/new/h1":           "A",
		"/new/h2":           "A",
		"/new/fifo":         "A",
	}, changeSet(changes))
}

func TestDiffHoldsChangesAndWhiteouts(t *testing.T) {
	parent, child := makeParentAndChild(t)
	rc, err := exportDiff(child, mustChanges(t, child, parent))
	require.NoError(t, err)
	var buf bytes.Buffer
	_, err = io.Copy(&buf, rc)
	require.NoError(t, err)
	require.NoError(t, rc.Close())

	names := tarNames(t, bytes.NewReader(buf.Bytes()))
	for _, want := range []string{"etc/.wh.passwd", "usr/share/.wh.doc", "etc/hostname", "new/dir/file.txt", "new/h2", "opt/file/inside/", "var/lib/data"} {
		assert.Contains(t, names, want)
	}
	for _, unchanged := range []string{"etc/keep.conf", "bin/sh", "bin/link", "usr/share/keep", "hard/one", "etc/passwd", "usr/share/doc/a"} {
		assert.NotContains(t, names, unchanged)
	}
	assert.Equal(t, byte(tar.TypeLink), names["new/h2"].Typeflag, "the second name of a hard link is a link entry")
	assert.Equal(t, byte(tar.TypeSymlink), names["replace-symlink"].Typeflag)
	assert.Equal(t, "/elsewhere", names["replace-symlink"].Linkname)
	assert.Equal(t, 1000, names["owner"].Uid)
}

// Applying the diff onto a copy of the parent reproduces the child, deletions
// included, and the size applied equals the diff size.
func TestApplyDiffReproducesChild(t *testing.T) {
	parent, child := makeParentAndChild(t)
	rc, err := exportDiff(child, mustChanges(t, child, parent))
	require.NoError(t, err)
	defer rc.Close()

	target := filepath.Join(t.TempDir(), "target")
	copyTree(t, parent, target)
	n, err := applyDiffDir(target, rc)
	require.NoError(t, err)

	assert.Equal(t, treeState(t, child), treeState(t, target))
	for _, gone := range []string{"etc/passwd", "usr/share/doc"} {
		_, err := os.Lstat(filepath.Join(target, gone))
		assert.ErrorIs(t, err, fs.ErrNotExist, gone)
	}
	size, err := diffSize(child, mustChanges(t, child, parent))
	require.NoError(t, err)
	assert.Equal(t, size, n)
	// Content bytes of added and modified regular files: hostname(6),
	// data(11), file.txt(9), h1 and h2 (7, one inode), and mode.sh (5) and
	// owner (6) whose metadata changed; symlinks and directories hold none.
	assert.Equal(t, int64(6+11+9+7+5+6), size)

	again, err := changesDirs(target, child)
	require.NoError(t, err)
	assert.Empty(t, again, "the applied tree differs from the child")
}

// A layer made from the base device diffs against an empty tree: everything
// is added, and applying it onto an empty directory reproduces it.
func TestDiffAgainstEmptyParent(t *testing.T) {
	_, child := makeParentAndChild(t)
	changes, err := changesDirs(child, "")
	require.NoError(t, err)
	for _, c := range changes {
		assert.Equal(t, archive.ChangeType(archive.ChangeAdd), c.Kind, c.Path)
	}
	rc, err := exportDiff(child, mustChanges(t, child, ""))
	require.NoError(t, err)
	defer rc.Close()
	target := t.TempDir()
	n, err := applyDiffDir(target, rc)
	require.NoError(t, err)
	assert.Equal(t, treeState(t, child), treeState(t, target))
	size, err := diffSize(child, mustChanges(t, child, ""))
	require.NoError(t, err)
	assert.Equal(t, size, n)
}

type tarEntry struct {
	name, body, link string
	typ              byte
}

func makeTar(t *testing.T, entries []tarEntry) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: 0o644, Size: int64(len(e.body)), ModTime: time.Unix(1700000000, 0)}
		if e.typ == 0 {
			hdr.Typeflag = tar.TypeReg
		}
		if hdr.Typeflag == tar.TypeDir {
			hdr.Mode = 0o755
		}
		require.NoError(t, tw.WriteHeader(hdr))
		_, err := tw.Write([]byte(e.body))
		require.NoError(t, err)
	}
	require.NoError(t, tw.Close())
	return &buf
}

// An OCI layer may mark a directory opaque: what the layers below had in it
// is gone, what the layer itself puts there stays.
func TestApplyDiffOpaqueDirectory(t *testing.T) {
	root := t.TempDir()
	writeTree(t, root, map[string]string{"etc/a": "a", "etc/sub/b": "b", "other/c": "c"})
	layer := makeTar(t, []tarEntry{
		{name: "etc/", typ: tar.TypeDir},
		{name: "etc/.wh..wh..opq"},
		{name: "etc/only", body: "only\n"},
		{name: "other/.wh.c"},
	})
	n, err := applyDiffDir(root, layer)
	require.NoError(t, err)
	assert.Equal(t, int64(5), n)
	entries, err := os.ReadDir(filepath.Join(root, "etc"))
	require.NoError(t, err)
	require.Len(t, entries, 1)
	assert.Equal(t, "only", entries[0].Name())
	_, err = os.Lstat(filepath.Join(root, "other/c"))
	assert.ErrorIs(t, err, fs.ErrNotExist)
	_, err = os.Lstat(filepath.Join(root, "etc/.wh..wh..opq"))
	assert.ErrorIs(t, err, fs.ErrNotExist, "whiteout markers are not left as files")
}

// Entries that would land outside the layer are refused, through ".." or
// through a symlink the same layer planted.
func TestApplyDiffStaysInsideRoot(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	outside := filepath.Join(dir, "outside")
	require.NoError(t, os.Mkdir(root, 0o755))
	require.NoError(t, os.Mkdir(outside, 0o755))

	_, err := applyDiffDir(root, makeTar(t, []tarEntry{{name: "../outside/evil", body: "x"}}))
	assert.Error(t, err)

	_, _ = applyDiffDir(root, makeTar(t, []tarEntry{
		{name: "escape", typ: tar.TypeSymlink, link: outside},
		{name: "escape/evil", body: "x"},
	}))
	entries, err := os.ReadDir(outside)
	require.NoError(t, err)
	assert.Empty(t, entries, "a layer wrote outside its root")
}

// Applying sets modes explicitly: the process's umask never changes, even
// with extractions running at the same time, and does not mask the modes.
func TestApplyDiffLeavesUmaskAlone(t *testing.T) {
	old := unix.Umask(0o027)
	defer unix.Umask(old)

	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			root := t.TempDir()
			_, err := applyDiffDir(root, makeTar(t, []tarEntry{{name: "d/", typ: tar.TypeDir}, {name: "d/f", body: "f"}}))
			assert.NoError(t, err)
			fi, err := os.Stat(filepath.Join(root, "d/f"))
			if assert.NoError(t, err) {
				assert.Equal(t, fs.FileMode(0o644), fi.Mode().Perm(), "the umask masked a mode")
			}
		}()
	}
	wg.Wait()
	now := unix.Umask(0o027)
	assert.Equal(t, 0o027, now)
}
