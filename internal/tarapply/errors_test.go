package tarapply

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

var atimeField = regexp.MustCompile(` atime=\S+`)

// snapshot is treeState without atimes, for comparing a tree before and
// after an Apply: reading the files for one snapshot may move their atimes.
func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	s := treeState(t, root, time.Now().Add(time.Hour))
	for p, desc := range s {
		s[p] = atimeField.ReplaceAllString(desc, "")
	}
	return s
}

// rawTar writes headers as given, for what ent cannot say (GNU base-256
// numbers, owners past the octal fields, global headers).
func rawTar(t *testing.T, hdrs ...*tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		require.NoError(t, tw.WriteHeader(h), h.Name)
	}
	require.NoError(t, tw.Close())
	return buf.Bytes()
}

// A tar that breaks off or is corrupt stops Apply with the reader's error,
// wherever it breaks: in a header, or in a file's contents on their way to
// a worker or written in order.
func TestApplyMalformedTar(t *testing.T) {
	two := []ent{{name: "a", body: "a"}, {name: "b", body: "b"}}
	full := makeTar(t, two)
	// b starts where a one-entry tar ends its last two (zero) blocks, with
	// a PAX header block (t0 has nanoseconds), its records, then its own.
	second := len(makeTar(t, two[:1])) - 2*512
	corrupt := bytes.Clone(full)
	corrupt[second+148] ^= 0xff // the checksum of b's first header

	big := strings.Repeat("x", 5000)
	inWorkerDir := makeTar(t, []ent{{name: "d/", typ: tar.TypeDir}, {name: "d/f", body: big}})
	inRoot := makeTar(t, []ent{{name: "f", body: big}})
	inBody := func(b []byte) []byte { return b[:len(b)-2*512-2000] } // cuts into the contents

	cases := map[string]struct {
		layer []byte
		opts  Options
		want  error
	}{
		"truncated header":         {full[:second+100], Options{}, io.ErrUnexpectedEOF},
		"corrupt header":           {corrupt, Options{}, tar.ErrHeader},
		"truncated file, worker":   {inBody(inWorkerDir), Options{}, io.ErrUnexpectedEOF},
		"truncated file, in order": {inBody(inWorkerDir), Options{MaxBuffered: 1}, io.ErrUnexpectedEOF},
		"truncated file, in root":  {inBody(inRoot), Options{}, io.ErrUnexpectedEOF},
		"truncated PAX records":    {full[:second+512+10], Options{}, io.ErrUnexpectedEOF},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			_, err := Apply(root, bytes.NewReader(c.layer), c.opts)
			assert.ErrorIs(t, err, c.want)
		})
	}
}

// Entries that are malformed or point where they must not are refused,
// and the tree is left as it was: nothing is removed, linked or created.
func TestApplyRefusesBadEntries(t *testing.T) {
	requireRoot(t)
	gnu := func(h tar.Header) *tar.Header { h.Format = tar.FormatGNU; return &h }
	cases := map[string]struct {
		entries []ent
		hdrs    []*tar.Header // instead of entries
		want    error         // nil: an error no sentinel names
		changed []string      // what entries before the bad one change
	}{
		"whiteout of nothing":         {entries: []ent{{name: "etc/.wh."}}},
		"whiteout of its directory":   {entries: []ent{{name: "etc/.wh.."}}},
		"whiteout of the parent":      {entries: []ent{{name: "etc/sub/.wh..."}}},
		"whiteout of the root's":      {entries: []ent{{name: ".wh..."}}},
		"whiteout above the root":     {entries: []ent{{name: "../.wh.etc"}}, want: ErrOutsideRoot},
		"whiteout below a file":       {entries: []ent{{name: "etc/passwd/.wh.x"}}, want: unix.ENOTDIR},
		"opaque above the root":       {entries: []ent{{name: "../.wh..wh..opq"}}, want: ErrOutsideRoot},
		"opaque below a file":         {entries: []ent{{name: "etc/passwd/.wh..wh..opq"}}, want: unix.ENOTDIR},
		"hard link to the root":       {entries: []ent{{name: "h", typ: tar.TypeLink, link: "/"}}, want: ErrOutsideRoot},
		"hard link to dot":            {entries: []ent{{name: "h", typ: tar.TypeLink, link: "./"}}, want: ErrOutsideRoot},
		"hard link out, mid-path":     {entries: []ent{{name: "h", typ: tar.TypeLink, link: "etc/../../x"}}, want: ErrOutsideRoot},
		"hard link to nothing":        {entries: []ent{{name: "h", typ: tar.TypeLink, link: "etc/nothing"}}, want: fs.ErrNotExist},
		"hard link to a directory":    {entries: []ent{{name: "h", typ: tar.TypeLink, link: "etc"}}, want: unix.EPERM},
		"hard link below a file":      {entries: []ent{{name: "h", typ: tar.TypeLink, link: "etc/passwd/x"}}, want: unix.ENOTDIR},
		"hard link into AUFS's links": {entries: []ent{{name: "h", typ: tar.TypeLink, link: ".wh..wh.plnk/1234.5"}}},
		"hard link to a whited-out file": {entries: []ent{
			{name: "etc/.wh.passwd"}, {name: "h", typ: tar.TypeLink, link: "etc/passwd"},
		}, want: fs.ErrNotExist, changed: []string{"etc", "etc/passwd"}},
		"unknown entry type":    {entries: []ent{{name: "etc/x", typ: 'Z'}}},
		"contiguous file entry": {entries: []ent{{name: "etc/x", typ: tar.TypeCont}}},
		"owner past 32 bits": {hdrs: []*tar.Header{{
			Name: "etc/x", Typeflag: tar.TypeReg, Mode: 0o644, Uid: math.MaxUint32 + 1, Format: tar.FormatPAX,
		}}},
		"negative group":            {hdrs: []*tar.Header{gnu(tar.Header{Name: "etc/x", Typeflag: tar.TypeReg, Mode: 0o644, Gid: -1})}},
		"device major past 32 bits": {hdrs: []*tar.Header{gnu(tar.Header{Name: "etc/c", Typeflag: tar.TypeChar, Mode: 0o600, Devmajor: math.MaxUint32 + 1})}},
		"negative device minor":     {hdrs: []*tar.Header{gnu(tar.Header{Name: "etc/b", Typeflag: tar.TypeBlock, Mode: 0o600, Devminor: -1})}},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			base(t, root)
			layer := rawTar(t, c.hdrs...)
			if c.entries != nil {
				layer = makeTar(t, c.entries)
			}
			before := snapshot(t, root)
			_, err := Apply(root, bytes.NewReader(layer), Options{})
			require.Error(t, err)
			if c.want != nil {
				assert.ErrorIs(t, err, c.want)
			}
			after := snapshot(t, root)
			for _, p := range c.changed {
				delete(before, p)
				delete(after, p)
			}
			assert.Equal(t, before, after, "Apply changed the tree: %v", err)
		})
	}
}

// An entry made over a symlink replaces the symlink; it never changes,
// links or removes what the symlink points at, even when that is outside
// the root.
func TestApplyNeverActsThroughSymlinks(t *testing.T) {
	requireRoot(t)
	xattr := map[string]string{"trusted.tarapply": "x"}
	cases := map[string]struct {
		below   map[string]string // symlinks in root before the layer (name -> target; "OUT" is the outside directory)
		entries []ent
		want    map[string]fs.FileMode // types in root after the layer
	}{
		"directory over a symlink": {
			below:   map[string]string{"escape": "OUT"},
			entries: []ent{{name: "escape/", typ: tar.TypeDir, mode: 0o777, uid: 4242, xattrs: xattr}},
			want:    map[string]fs.FileMode{"escape": fs.ModeDir},
		},
		"file over a symlink": {
			below:   map[string]string{"escape": "OUT/secret"},
			entries: []ent{{name: "escape", body: "overwritten", mode: 0o777, uid: 4242}},
			want:    map[string]fs.FileMode{"escape": 0},
		},
		"hard link over a symlink": {
			below:   map[string]string{"escape": "OUT/secret"},
			entries: []ent{{name: "t", body: "t"}, {name: "escape", typ: tar.TypeLink, link: "t", mode: 0o777, uid: 4242}},
			want:    map[string]fs.FileMode{"escape": 0, "t": 0},
		},
		"fifo over a symlink": {
			below:   map[string]string{"escape": "OUT/secret"},
			entries: []ent{{name: "escape", typ: tar.TypeFifo, mode: 0o777, uid: 4242}},
			want:    map[string]fs.FileMode{"escape": fs.ModeNamedPipe},
		},
		"owner and xattrs of a symlink": {
			entries: []ent{{name: "escape", typ: tar.TypeSymlink, link: "OUT/secret", uid: 4242, xattrs: xattr}},
			want:    map[string]fs.FileMode{"escape": fs.ModeSymlink},
		},
		"hard link to a symlink": {
			entries: []ent{
				{name: "escape", typ: tar.TypeSymlink, link: "OUT/secret"},
				{name: "h", typ: tar.TypeLink, link: "escape", mode: 0o777, uid: 4242, xattrs: xattr},
			},
			want: map[string]fs.FileMode{"escape": fs.ModeSymlink, "h": fs.ModeSymlink},
		},
		"whiteout of a symlink": {
			below:   map[string]string{"escape": "OUT"},
			entries: []ent{{name: ".wh.escape"}},
			want:    map[string]fs.FileMode{},
		},
		"opaque directory, symlink below": {
			below:   map[string]string{"d/escape": "OUT"},
			entries: []ent{{name: "d/.wh..wh..opq"}},
			want:    map[string]fs.FileMode{"d": fs.ModeDir},
		},
		"opaque directory, symlink of the layer": {
			entries: []ent{{name: "d/escape", typ: tar.TypeSymlink, link: "OUT"}, {name: "d/.wh..wh..opq"}},
			want:    map[string]fs.FileMode{"d": fs.ModeDir, "d/escape": fs.ModeSymlink},
		},
		"opaque root, symlink of the layer": {
			entries: []ent{{name: "escape", typ: tar.TypeSymlink, link: "OUT"}, {name: ".wh..wh..opq"}},
			want:    map[string]fs.FileMode{"escape": fs.ModeSymlink},
		},
		"file over a directory holding a symlink": {
			below:   map[string]string{"d/escape": "OUT"},
			entries: []ent{{name: "d", body: "now a file"}},
			want:    map[string]fs.FileMode{"d": 0},
		},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			root, outside := filepath.Join(dir, "root"), filepath.Join(dir, "outside")
			require.NoError(t, os.Mkdir(root, 0o755))
			require.NoError(t, os.Mkdir(outside, 0o700))
			require.NoError(t, os.WriteFile(filepath.Join(outside, "secret"), []byte("s"), 0o600))
			for p, target := range c.below {
				require.NoError(t, os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755))
				require.NoError(t, os.Symlink(strings.Replace(target, "OUT", outside, 1), filepath.Join(root, p)))
			}
			entries := append([]ent(nil), c.entries...)
			for i := range entries {
				entries[i].link = strings.Replace(entries[i].link, "OUT", outside, 1)
			}
			before := snapshot(t, outside)

			_, err := Apply(root, bytes.NewReader(makeTar(t, entries)), Options{})
			require.NoError(t, err)

			assert.Equal(t, before, snapshot(t, outside), "the layer changed what is outside its root")
			got := map[string]fs.FileMode{}
			require.NoError(t, filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
				if err == nil && p != root {
					rel, _ := filepath.Rel(root, p)
					got[rel] = d.Type()
				}
				return err
			}))
			assert.Equal(t, c.want, got)
		})
	}
}

// A file written by a worker that fails stops Apply with the worker's
// error, naming the file, whatever entry comes next.
func TestApplyWorkerFailure(t *testing.T) {
	requireRoot(t)
	bad := ent{name: "d/bad", body: "x", xattrs: map[string]string{"nosuchnamespace.x": "1"}}
	many := make([]ent, 200)
	for i := range many {
		many[i] = ent{name: "d/f" + strings.Repeat("x", i), body: "f"}
	}
	cases := map[string][]ent{
		"last entry":      nil,
		"more files":      many,
		"same name":       {{name: "d/bad", body: "again"}},
		"whiteout":        {{name: "d/.wh.bad"}},
		"opaque":          {{name: "d/.wh..wh..opq"}},
		"hard link to it": {{name: "d/h", typ: tar.TypeLink, link: "d/bad"}},
		"replacing":       {{name: "etc", body: "a file where a directory was"}},
	}
	for name, next := range cases {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			require.NoError(t, os.Mkdir(filepath.Join(root, "etc"), 0o755))
			layer := makeTar(t, append([]ent{{name: "d/", typ: tar.TypeDir}, bad}, next...))
			_, err := Apply(root, bytes.NewReader(layer), Options{Workers: 1})
			require.ErrorIs(t, err, unix.EOPNOTSUPP)
			var pe *fs.PathError
			require.ErrorAs(t, err, &pe)
			assert.Equal(t, "d/bad", pe.Path)
		})
	}
}

// An xattr the filesystem refuses fails the entry, for every kind of
// entry, with the errno and the entry's name.
func TestApplyXattrFailure(t *testing.T) {
	requireRoot(t)
	bad := map[string]string{"nosuchnamespace.x": "1"}
	cases := map[string][]ent{
		"file, in order": {{name: "f", body: "x", xattrs: bad}},
		"directory":      {{name: "d/", typ: tar.TypeDir, xattrs: bad}},
		"symlink":        {{name: "s", typ: tar.TypeSymlink, link: "x", xattrs: bad}},
		"fifo":           {{name: "p", typ: tar.TypeFifo, xattrs: bad}},
		"hard link to a file": {
			{name: "t", body: "t"}, {name: "h", typ: tar.TypeLink, link: "t", xattrs: bad},
		},
		"hard link to a symlink": {
			{name: "t", typ: tar.TypeSymlink, link: "x"}, {name: "h", typ: tar.TypeLink, link: "t", xattrs: bad},
		},
	}
	for name, entries := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Apply(t.TempDir(), bytes.NewReader(makeTar(t, entries)), Options{})
			require.ErrorIs(t, err, unix.EOPNOTSUPP)
			var pe *fs.PathError
			require.ErrorAs(t, err, &pe, "the error names no entry: %v", err)
			want := strings.TrimSuffix(entries[len(entries)-1].name, "/")
			assert.Equal(t, want, pe.Path)
		})
	}
}

const immutableFlag = 0x10 // FS_IMMUTABLE_FL, linux/fs.h

// setImmutable sets chattr +i on p (clearing it when the test ends), or
// skips the test on a filesystem without the flag.
func setImmutable(t *testing.T, p string) {
	t.Helper()
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(fd)
	flags, err := unix.IoctlGetInt(fd, unix.FS_IOC_GETFLAGS)
	if err == nil {
		err = unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, flags|immutableFlag)
	}
	if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
		t.Skipf("the filesystem of %s has no immutable flag: %v", p, err)
	}
	require.NoError(t, err)
	t.Cleanup(func() {
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		require.NoError(t, err)
		defer unix.Close(fd)
		require.NoError(t, unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, flags))
	})
}

// What even root may not change (an immutable file or directory) fails
// the entry with EPERM, whichever operation meets it, and stays as it was.
func TestApplyPermissionFailure(t *testing.T) {
	requireRoot(t)
	cases := map[string][]ent{
		"file into the directory":         {{name: "ro/new", body: "x"}},
		"directory into the directory":    {{name: "ro/sub/", typ: tar.TypeDir}},
		"implied directory":               {{name: "ro/sub/f", body: "x"}},
		"symlink into the directory":      {{name: "ro/l", typ: tar.TypeSymlink, link: "x"}},
		"fifo into the directory":         {{name: "ro/p", typ: tar.TypeFifo}},
		"directory merged into it":        {{name: "ro/", typ: tar.TypeDir, mode: 0o700}},
		"file over its file":              {{name: "ro/old", body: "new"}},
		"file over the immutable file":    {{name: "frozen", body: "new"}},
		"symlink over the immutable file": {{name: "frozen", typ: tar.TypeSymlink, link: "x"}},
		"whiteout of the immutable file":  {{name: ".wh.frozen"}},
		"whiteout of its file":            {{name: "ro/.wh.old"}},
		"whiteout of the directory":       {{name: ".wh.ro"}},
		"opaque directory":                {{name: "ro/.wh..wh..opq"}},
		"file over the directory":         {{name: "ro", body: "x"}},
		"hard link to the immutable file": {{name: "h", typ: tar.TypeLink, link: "frozen"}},
		"hard link over the immutable file": {
			{name: "t", body: "t"}, {name: "frozen", typ: tar.TypeLink, link: "t"},
		},
	}
	for name, entries := range cases {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			require.NoError(t, os.Mkdir(filepath.Join(root, "ro"), 0o755))
			require.NoError(t, os.WriteFile(filepath.Join(root, "ro", "old"), []byte("old"), 0o644))
			require.NoError(t, os.WriteFile(filepath.Join(root, "frozen"), []byte("frozen"), 0o644))
			setImmutable(t, filepath.Join(root, "ro"))
			setImmutable(t, filepath.Join(root, "frozen"))
			before := snapshot(t, root)

			_, err := Apply(root, bytes.NewReader(makeTar(t, entries)), Options{})
			assert.ErrorIs(t, err, fs.ErrPermission)

			after := snapshot(t, root)
			for _, p := range []string{"ro", "ro/old", "frozen"} {
				assert.Equal(t, before[p], after[p], p)
			}
			names, rerr := os.ReadDir(filepath.Join(root, "ro"))
			require.NoError(t, rerr)
			assert.Len(t, names, 1, "ro holds only its old file")
		})
	}
}
