package tarapply

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	archive "github.com/moby/go-archive"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// ent is a tar entry for the tests; zero fields get defaults in makeTar.
type ent struct {
	name, body, link string
	typ              byte
	mode             int64
	uid, gid         int
	mtime, atime     time.Time
	major, minor     int64
	xattrs           map[string]string
}

var t0 = time.Unix(1700000000, 123456789)

func makeTar(t *testing.T, entries []ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{
			Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: e.mode,
			Uid: e.uid, Gid: e.gid, ModTime: e.mtime, AccessTime: e.atime,
			Devmajor: e.major, Devminor: e.minor, Format: tar.FormatPAX,
		}
		if hdr.Typeflag == 0 {
			hdr.Typeflag = tar.TypeReg
		}
		if hdr.Typeflag == tar.TypeReg {
			hdr.Size = int64(len(e.body))
		}
		if hdr.Mode == 0 {
			hdr.Mode = 0o644
			if hdr.Typeflag == tar.TypeDir {
				hdr.Mode = 0o755
			}
		}
		if hdr.ModTime.IsZero() {
			hdr.ModTime = t0
		}
		for k, v := range e.xattrs {
			if hdr.PAXRecords == nil {
				hdr.PAXRecords = map[string]string{}
			}
			hdr.PAXRecords["SCHILY.xattr."+k] = v
		}
		require.NoError(t, tw.WriteHeader(hdr), e.name)
		if hdr.Size > 0 {
			_, err := tw.Write([]byte(e.body))
			require.NoError(t, err)
		}
	}
	require.NoError(t, tw.Close())
	return buf.Bytes()
}

// fileCaps is a security.capability value (VFS_CAP_REVISION_2) granting
// CAP_NET_BIND_SERVICE, effective.
func fileCaps() string {
	b := make([]byte, 20)
	binary.LittleEndian.PutUint32(b[0:], 0x02000001)
	binary.LittleEndian.PutUint32(b[4:], 1<<unix.CAP_NET_BIND_SERVICE)
	return string(b)
}

// treeState describes every entry below root as a user comparing trees
// would: type, mode, owner, size, atime and mtime to the nanosecond
// (directories included), device numbers, link targets, xattrs, content
// hash and hard-link groups. Stats are taken before any content is read,
// so reading cannot move an atime. A time after since is the clock's, not
// the layer's, and shows as "now".
func treeState(t *testing.T, root string, since time.Time) map[string]string {
	t.Helper()
	state := map[string]string{}
	inodes := map[uint64]string{}
	var regular []string
	var names []string
	require.NoError(t, filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		names = append(names, p)
		return nil
	}))
	sort.Strings(names)
	for _, p := range names {
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		require.NoError(t, unix.Lstat(p, &st))
		desc := fmt.Sprintf("type=%o perm=%o uid=%d gid=%d", st.Mode&unix.S_IFMT, st.Mode&0o7777, st.Uid, st.Gid)
		typ := st.Mode & unix.S_IFMT
		ts := func(ts unix.Timespec) string {
			if time.Unix(ts.Unix()).After(since) {
				return "now"
			}
			return fmt.Sprintf("%d.%09d", ts.Sec, ts.Nsec)
		}
		if rel != "." {
			desc += " mtime=" + ts(st.Mtim)
			if typ != unix.S_IFDIR {
				desc += " atime=" + ts(st.Atim)
			}
		}
		switch typ {
		case unix.S_IFREG:
			desc += fmt.Sprintf(" size=%d", st.Size)
			if first, ok := inodes[st.Ino]; ok {
				desc += " hardlink-of=" + first
			} else {
				inodes[st.Ino] = rel
				regular = append(regular, rel)
			}
		case unix.S_IFLNK:
			target, err := os.Readlink(p)
			require.NoError(t, err)
			desc += " -> " + target
		case unix.S_IFCHR, unix.S_IFBLK:
			desc += fmt.Sprintf(" rdev=%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		}
		desc += xattrState(t, p)
		state[rel] = desc
	}
	for _, rel := range regular {
		data, err := os.ReadFile(filepath.Join(root, rel))
		require.NoError(t, err)
		state[rel] += fmt.Sprintf(" sha=%x", sha256.Sum256(data))
	}
	return state
}

func xattrState(t *testing.T, p string) string {
	t.Helper()
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		return ""
	}
	var keys []string
	for _, k := range strings.Split(string(buf[:n]), "\x00") {
		if k != "" && !strings.HasPrefix(k, "security.selinux") {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var out string
	for _, k := range keys {
		v := make([]byte, 4096)
		n, err := unix.Lgetxattr(p, k, v)
		require.NoError(t, err)
		out += fmt.Sprintf(" %s=%x", k, v[:n])
	}
	return out
}

// base is what the layers below put in root before a layer is applied.
func base(t *testing.T, root string) {
	t.Helper()
	for _, d := range []string{"etc/sub", "usr/lib", "var/cache/x", "opq/keep", "todir", "dir2sym"} {
		require.NoError(t, os.MkdirAll(filepath.Join(root, d), 0o755))
	}
	for _, f := range []string{"etc/passwd", "etc/sub/a", "usr/lib/libc.so", "var/cache/x/y", "opq/old", "opq/keep/old", "tofile-was-file", "todir/inner"} {
		require.NoError(t, os.WriteFile(filepath.Join(root, f), []byte("below "+f), 0o644))
	}
	require.NoError(t, os.WriteFile(filepath.Join(root, "becomes-dir"), []byte("x"), 0o644))
	require.NoError(t, os.Symlink("/usr/lib", filepath.Join(root, "lib")))
	require.NoError(t, os.Symlink("usr", filepath.Join(root, "relusr")))
	// Fixed times, so the trees compare equal before the layer.
	require.NoError(t, filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{{Sec: 1600000000}, {Sec: 1600000000}}, unix.AT_SYMLINK_NOFOLLOW)
	}))
}

func richLayer(t *testing.T) []ent {
	long := strings.Repeat("long-directory-name/", 8) + strings.Repeat("f", 120)
	big := strings.Repeat("0123456789abcdef", 40000) // 640 KB
	return []ent{
		{name: "bin/", typ: tar.TypeDir, mode: 0o750, uid: 0, gid: 0, mtime: t0.Add(time.Hour)},
		{name: "bin/tool", body: "#!/bin/sh\n", mode: 0o4755, uid: 1000, gid: 1001},
		{name: "bin/capped", body: "caps", mode: 0o755, xattrs: map[string]string{"security.capability": fileCaps(), "user.note": "hi"}},
		{name: "bin/atime", body: "a", atime: t0.Add(48 * time.Hour), mtime: t0.Add(time.Minute)},
		{name: "bin/old-atime", body: "a", atime: t0.Add(-48 * time.Hour)},
		{name: "bin/empty", body: ""},
		{name: "bin/big", body: big, mode: 0o600, uid: 7, gid: 8},
		{name: "bin/link", typ: tar.TypeSymlink, link: "tool", uid: 1000, gid: 1001, mtime: t0.Add(2 * time.Hour)},
		{name: "bin/abs-link", typ: tar.TypeSymlink, link: "/etc/passwd"},
		{name: "bin/hard", typ: tar.TypeLink, link: "bin/tool", mode: 0o4755, uid: 1000, gid: 1001},
		{name: "bin/abs-hard", typ: tar.TypeLink, link: "/bin/big", mode: 0o600, uid: 7, gid: 8},
		{name: "dev/", typ: tar.TypeDir, mode: 0o755},
		{name: "dev/null", typ: tar.TypeChar, mode: 0o666, major: 1, minor: 3},
		{name: "dev/loop9", typ: tar.TypeBlock, mode: 0o660, major: 7, minor: 9, gid: 6},
		{name: "dev/fifo", typ: tar.TypeFifo, mode: 0o640},
		{name: "sgid/", typ: tar.TypeDir, mode: 0o2775, gid: 50, xattrs: map[string]string{"user.dir": "d"}},
		{name: "sgid/file", body: "in sgid", gid: 50},
		{name: "sticky/", typ: tar.TypeDir, mode: 0o1777},
		{name: long, body: "long name"},
		{name: "linkdir/" + strings.Repeat("l", 150), typ: tar.TypeSymlink, link: strings.Repeat("t/", 80)},
		{name: "implied/a/b/c", body: "implied parents"},
		{name: "etc/", typ: tar.TypeDir, mode: 0o755, mtime: t0.Add(3 * time.Hour)},
		{name: "etc/passwd", body: "root:x:0:0\n", mode: 0o644},
		{name: "etc/sub/a", body: "replaced", mode: 0o640},
		{name: "lib/libnew.so", body: "through an absolute symlink"},
		{name: "relusr/lib/librel.so", body: "through a relative symlink"},
		{name: "./dot/./name", body: "cleaned"},
		{name: "/abs/name", body: "leading slash"},
	}
}

func replaceLayer() []ent {
	return []ent{
		{name: "etc/.wh.passwd"},
		{name: "var/.wh.cache"},
		{name: "opq/", typ: tar.TypeDir},
		{name: "opq/.wh..wh..opq"},
		{name: "opq/new", body: "new"},
		{name: "opq/keep/", typ: tar.TypeDir},
		{name: "tofile-was-file", body: "replaced file"},
		{name: "todir", body: "a file where a directory was"},
		{name: "becomes-dir/", typ: tar.TypeDir, mode: 0o700},
		{name: "becomes-dir/x", body: "x"},
		{name: "dir2sym", typ: tar.TypeSymlink, link: "etc"},
		{name: "dup", body: "first"},
		{name: "dup", body: "second"},
		{name: "dupdir/", typ: tar.TypeDir, mode: 0o700},
		{name: "dupdir/f", body: "f"},
		{name: "dupdir/", typ: tar.TypeDir, mode: 0o751, mtime: t0.Add(time.Hour)},
		{name: "sym2file", typ: tar.TypeSymlink, link: "etc"},
		{name: "sym2file", body: "not a link now"},
		{name: "gone/", typ: tar.TypeDir},
		{name: "gone/x", body: "x"},
		{name: "gone/.wh.x"},
		{name: "missing/.wh.nothing"},
		// In a directory the layer makes, so the first entries go to workers.
		{name: "fresh/", typ: tar.TypeDir},
		{name: "fresh/file-then-dir", body: "a file first"},
		{name: "fresh/file-then-dir/", typ: tar.TypeDir, mode: 0o700},
		{name: "fresh/file-then-dir/inside", body: "then a directory"},
		{name: "fresh/file-then-link", body: "a file first"},
		{name: "fresh/file-then-link", typ: tar.TypeSymlink, link: "etc"},
		{name: "fresh/file-then-fifo", body: "a file first"},
		{name: "fresh/file-then-fifo", typ: tar.TypeFifo},
		{name: "newdir/", typ: tar.TypeDir},
		{name: "newdir/.wh..wh..opq"},
		{name: "newdir/kept", body: "kept"},
	}
}

// manyDirsLayer has three times more directories than Apply keeps open,
// each with a file and, past the first cache's worth, a hard link to the
// file of a directory long out of the cache: the cache fills up while
// links are being made, some with their target's directory not cached.
func manyDirsLayer() []ent {
	var out []ent
	for i := range 3 * maxCachedDirs {
		d := fmt.Sprintf("d%04d/", i)
		out = append(out, ent{name: d, typ: tar.TypeDir}, ent{name: d + "f", body: d})
		if i >= maxCachedDirs {
			out = append(out, ent{name: d + "link", typ: tar.TypeLink, link: fmt.Sprintf("d%04d/f", i-maxCachedDirs)})
		}
		if i == maxCachedDirs+1 {
			// One more cached directory, so the cache fills up on a
			// link's target as well as on a file's directory.
			out = append(out, ent{name: "odd/one", body: "shifts the count"})
		}
	}
	return out
}

// applyBoth applies the layer with go-archive into one copy of the base
// and with Apply into another, and requires the same trees and sizes.
func applyBoth(t *testing.T, layer []byte, opts Options) string {
	t.Helper()
	dir := t.TempDir()
	want, got := filepath.Join(dir, "go-archive"), filepath.Join(dir, "tarapply")
	require.NoError(t, os.Mkdir(want, 0o755))
	require.NoError(t, os.Mkdir(got, 0o755))
	base(t, want)
	base(t, got)
	since := time.Now().Add(-time.Second)
	wantN, err := archive.ApplyUncompressedLayer(want, bytes.NewReader(layer), &archive.TarOptions{})
	require.NoError(t, err)
	gotN, err := Apply(got, bytes.NewReader(layer), opts)
	require.NoError(t, err)
	assert.Equal(t, wantN, gotN, "size")
	ws, gs := treeState(t, want, since), treeState(t, got, since)
	for p, w := range ws {
		assert.Equal(t, w, gs[p], p)
	}
	for p, g := range gs {
		if _, ok := ws[p]; !ok {
			assert.Fail(t, "only in tarapply's tree", "%s: %s", p, g)
		}
	}
	return got
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the layers set owners and make device nodes")
	}
}

// The same layers applied by go-archive and by Apply give the same trees,
// with files written by the workers and, with a tiny MaxBuffered, by
// Apply's own goroutine.
func TestApplyMatchesGoArchive(t *testing.T) {
	requireRoot(t)
	layers := map[string][]ent{"rich": richLayer(t), "replace": replaceLayer(), "many-dirs": manyDirsLayer()}
	for name, entries := range layers {
		layer := makeTar(t, entries)
		for _, o := range []struct {
			what string
			opts Options
		}{
			{"workers", Options{}},
			{"in-order", Options{MaxBuffered: 1}},
			{"one-worker-sync", Options{Workers: 1, Sync: true}},
		} {
			if name == "many-dirs" && o.what != "workers" {
				continue // slow, and about the descriptor cache only
			}
			t.Run(name+"/"+o.what, func(t *testing.T) { applyBoth(t, layer, o.opts) })
		}
	}
}

// Spot checks of what the differential test compares, so a shared
// mistake of both appliers cannot pass unnoticed.
func TestApplySemantics(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	base(t, root)
	_, err := Apply(root, bytes.NewReader(makeTar(t, append(richLayer(t), replaceLayer()...))), Options{})
	require.NoError(t, err)
	in := func(p string) string { return filepath.Join(root, p) }
	var st unix.Stat_t

	require.NoError(t, unix.Lstat(in("bin/tool"), &st))
	assert.Equal(t, uint32(0o4755), st.Mode&0o7777, "setuid survives the chown")
	assert.Equal(t, [2]uint32{1000, 1001}, [2]uint32{st.Uid, st.Gid})
	assert.Equal(t, unix.Timespec{Sec: t0.Unix(), Nsec: int64(t0.Nanosecond())}, st.Mtim)
	var hard unix.Stat_t
	require.NoError(t, unix.Lstat(in("bin/hard"), &hard))
	assert.Equal(t, st.Ino, hard.Ino, "hard link shares the inode")

	caps := make([]byte, 64)
	n, err := unix.Getxattr(in("bin/capped"), "security.capability", caps)
	require.NoError(t, err)
	assert.Equal(t, fileCaps(), string(caps[:n]))

	require.NoError(t, unix.Lstat(in("bin/atime"), &st))
	assert.Equal(t, t0.Add(48*time.Hour).Unix(), st.Atim.Sec)
	require.NoError(t, unix.Lstat(in("bin/old-atime"), &st))
	assert.Equal(t, t0.Unix(), st.Atim.Sec, "atime is never before mtime")

	require.NoError(t, unix.Lstat(in("bin/link"), &st))
	assert.Equal(t, uint32(1000), st.Uid, "lchown, not chown of the target")
	assert.Equal(t, t0.Add(2*time.Hour).Unix(), st.Mtim.Sec, "symlink's own mtime")

	require.NoError(t, unix.Lstat(in("dev/null"), &st))
	assert.Equal(t, uint32(unix.S_IFCHR), st.Mode&unix.S_IFMT)
	assert.Equal(t, uint64(unix.Mkdev(1, 3)), st.Rdev)
	require.NoError(t, unix.Lstat(in("dev/fifo"), &st))
	assert.Equal(t, uint32(unix.S_IFIFO), st.Mode&unix.S_IFMT)

	require.NoError(t, unix.Lstat(in("bin"), &st))
	assert.Equal(t, t0.Add(time.Hour).Unix(), st.Mtim.Sec, "directory mtime set after its contents")
	require.NoError(t, unix.Lstat(in("dupdir"), &st))
	assert.Equal(t, uint32(0o751), st.Mode&0o7777, "the last entry for a directory wins")

	_, err = os.ReadFile(in("usr/lib/libnew.so"))
	assert.NoError(t, err, "an absolute symlink resolves inside the root")
	for _, gone := range []string{"etc/passwd", "var/cache", "opq/old", "opq/keep/old", "gone/x", "gone/.wh.x", "opq/.wh..wh..opq"} {
		_, err := os.Lstat(in(gone))
		assert.ErrorIs(t, err, fs.ErrNotExist, gone)
	}
	b, err := os.ReadFile(in("dup"))
	require.NoError(t, err)
	assert.Equal(t, "second", string(b))
	fi, err := os.Lstat(in("todir"))
	require.NoError(t, err)
	assert.True(t, fi.Mode().IsRegular())
	fi, err = os.Lstat(in("dir2sym"))
	require.NoError(t, err)
	assert.Equal(t, fs.ModeSymlink, fi.Mode().Type())
}

// Modes are set explicitly: the process umask neither matters nor changes.
func TestApplyIgnoresUmask(t *testing.T) {
	old := unix.Umask(0o077)
	defer unix.Umask(old)
	root := t.TempDir()
	_, err := Apply(root, bytes.NewReader(makeTar(t, []ent{
		{name: "d/", typ: tar.TypeDir, mode: 0o775},
		{name: "d/f", body: "f", mode: 0o664},
		{name: "implied/g", body: "g", mode: 0o666},
	})), Options{})
	require.NoError(t, err)
	for p, want := range map[string]os.FileMode{"d": 0o775, "d/f": 0o664, "implied": 0o755, "implied/g": 0o666} {
		fi, err := os.Stat(filepath.Join(root, p))
		require.NoError(t, err)
		assert.Equal(t, want, fi.Mode().Perm(), p)
	}
	assert.Equal(t, 0o077, unix.Umask(0o077))
}

// Nothing is ever written outside the root: "../" names and hard-link
// targets are refused; symlinks met on the way resolve inside the root.
func TestApplyStaysInsideRoot(t *testing.T) {
	outsideLink := func(t *testing.T, outside string) []ent {
		return []ent{
			{name: "escape", typ: tar.TypeSymlink, link: outside},
			{name: "escape/evil", body: "x"},
		}
	}
	cases := map[string]struct {
		entries func(t *testing.T, outside string) []ent
		refused bool
	}{
		"dotdot name":        {func(*testing.T, string) []ent { return []ent{{name: "../outside/evil", body: "x"}} }, true},
		"dotdot inside name": {func(*testing.T, string) []ent { return []ent{{name: "a/../../outside/evil", body: "x"}} }, true},
		"dotdot hard link": {func(*testing.T, string) []ent {
			return []ent{{name: "h", typ: tar.TypeLink, link: "../outside/secret"}}
		}, true},
		"absolute symlink parent": {outsideLink, false},
		"relative symlink parent": {func(*testing.T, string) []ent {
			return []ent{
				{name: "up", typ: tar.TypeSymlink, link: "../../../../../../../../outside"},
				{name: "up/evil", body: "x"},
			}
		}, false},
		"symlink then whiteout": {func(_ *testing.T, outside string) []ent {
			return []ent{
				{name: "escape", typ: tar.TypeSymlink, link: outside},
				{name: "escape/.wh.secret"},
			}
		}, false},
		"symlink then opaque": {func(_ *testing.T, outside string) []ent {
			return []ent{
				{name: "escape", typ: tar.TypeSymlink, link: outside},
				{name: "escape/.wh..wh..opq"},
			}
		}, false},
		"hard link through symlink": {func(_ *testing.T, outside string) []ent {
			return []ent{
				{name: "escape", typ: tar.TypeSymlink, link: outside},
				{name: "h", typ: tar.TypeLink, link: "escape/secret"},
			}
		}, false},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			root, outside := filepath.Join(dir, "root"), filepath.Join(dir, "outside")
			require.NoError(t, os.Mkdir(root, 0o755))
			require.NoError(t, os.Mkdir(outside, 0o755))
			require.NoError(t, os.WriteFile(filepath.Join(outside, "secret"), []byte("s"), 0o600))
			_, err := Apply(root, bytes.NewReader(makeTar(t, c.entries(t, outside))), Options{})
			if c.refused {
				assert.ErrorIs(t, err, ErrOutsideRoot)
			}
			entries, rerr := os.ReadDir(outside)
			require.NoError(t, rerr)
			require.Len(t, entries, 1, "a layer wrote outside its root (apply error: %v)", err)
			assert.Equal(t, "secret", entries[0].Name())
			var st unix.Stat_t
			require.NoError(t, unix.Stat(filepath.Join(outside, "secret"), &st))
			assert.Equal(t, uint64(1), uint64(st.Nlink), "a hard link to a file outside the root was made")
		})
	}
}

// A bad tar stops Apply with the reader's error; a failing worker stops it
// with the worker's error, and nothing is left running.
func TestApplyErrors(t *testing.T) {
	root := t.TempDir()
	layer := makeTar(t, []ent{{name: "a", body: strings.Repeat("x", 5000)}})
	_, err := Apply(root, bytes.NewReader(layer[:3000]), Options{})
	assert.Error(t, err)

	_, err = Apply(filepath.Join(root, "missing"), bytes.NewReader(layer), Options{})
	assert.ErrorIs(t, err, fs.ErrNotExist)

	_, err = Apply(t.TempDir(), bytes.NewReader(makeTar(t, []ent{{name: "x", typ: 'Z'}})), Options{})
	assert.ErrorContains(t, err, "unsupported tar entry type")
}
