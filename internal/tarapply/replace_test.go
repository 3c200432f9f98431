package tarapply

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// A later entry of a name replaces what an earlier entry of the same
// layer put there, including a directory and what it holds, and keeps its
// own times: the times of the directory it replaced, set after everything
// else, do not land on it.
func TestApplyLaterEntryReplaces(t *testing.T) {
	requireRoot(t)
	t1, t2 := t0.Add(time.Hour), t0.Add(2*time.Hour)
	type want struct {
		typ   fs.FileMode
		body  string // of a regular file
		mtime time.Time
	}
	cases := map[string]struct {
		entries []ent
		want    map[string]want
	}{
		"file over a directory": {
			entries: []ent{{name: "d/", typ: tar.TypeDir, mtime: t1}, {name: "d/x", body: "x"}, {name: "d", body: "file", mtime: t2}},
			want:    map[string]want{"d": {0, "file", t2}},
		},
		"file over a directory with subdirectories": {
			entries: []ent{
				{name: "d/", typ: tar.TypeDir, mtime: t1}, {name: "d/sub/", typ: tar.TypeDir, mtime: t1},
				{name: "d/sub/deeper/", typ: tar.TypeDir}, {name: "d", body: "file", mtime: t2},
			},
			want: map[string]want{"d": {0, "file", t2}},
		},
		"symlink over a directory": {
			entries: []ent{{name: "d/", typ: tar.TypeDir, mtime: t1}, {name: "d", typ: tar.TypeSymlink, link: "elsewhere", mtime: t2}},
			want:    map[string]want{"d": {fs.ModeSymlink, "", t2}},
		},
		"fifo over a directory": {
			entries: []ent{{name: "d/", typ: tar.TypeDir, mtime: t1}, {name: "d", typ: tar.TypeFifo, mtime: t2}},
			want:    map[string]want{"d": {fs.ModeNamedPipe, "", t2}},
		},
		"directory over a file over a directory": {
			entries: []ent{{name: "d/", typ: tar.TypeDir, mtime: t1}, {name: "d", body: "file"}, {name: "d/", typ: tar.TypeDir, mtime: t2}},
			want:    map[string]want{"d": {fs.ModeDir, "", t2}},
		},
		"file over an implied directory": {
			entries: []ent{{name: "d/", typ: tar.TypeDir, mtime: t1}, {name: "d/f/g", body: "g"}, {name: "d/f", body: "f", mtime: t2}},
			want:    map[string]want{"d": {fs.ModeDir, "", t1}, "d/f": {0, "f", t2}},
		},
		"file over an implied directory, no directory entries": {
			entries: []ent{{name: "d/f/g", body: "g"}, {name: "d/f", body: "f", mtime: t2}},
			want:    map[string]want{"d": {fs.ModeDir, "", time.Time{}}, "d/f": {0, "f", t2}},
		},
		"whiteout of a directory holding a directory": {
			entries: []ent{
				{name: "d/", typ: tar.TypeDir, mtime: t1}, {name: "d/sub/", typ: tar.TypeDir, mtime: t1},
				{name: ".wh.d"}, {name: "e", body: "e", mtime: t2},
			},
			want: map[string]want{"e": {0, "e", t2}},
		},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			_, err := Apply(root, bytes.NewReader(makeTar(t, c.entries)), Options{})
			require.NoError(t, err)
			got := map[string]want{}
			require.NoError(t, filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
				if err != nil || p == root {
					return err
				}
				rel, _ := filepath.Rel(root, p)
				var st unix.Stat_t
				require.NoError(t, unix.Lstat(p, &st))
				w := want{typ: d.Type(), mtime: time.Unix(st.Mtim.Unix())}
				if d.Type().IsRegular() {
					b, err := os.ReadFile(p)
					require.NoError(t, err)
					w.body = string(b)
				}
				got[rel] = w
				return nil
			}))
			for p, w := range c.want {
				if assert.Contains(t, got, p) {
					assert.Equal(t, w.typ, got[p].typ, p)
					assert.Equal(t, w.body, got[p].body, p)
					if !w.mtime.IsZero() { // zero: the clock's, an implied directory
						assert.True(t, w.mtime.Equal(got[p].mtime), "%s: mtime %v, want %v", p, got[p].mtime, w.mtime)
					}
				}
			}
			for p := range got {
				if _, ok := c.want[p]; !ok {
					assert.Fail(t, "left over", p)
				}
			}
		})
	}
}

// An opaque directory keeps what this layer put in it, however deep, and
// nothing of the layers below: also below a directory the layer re-lists.
func TestApplyOpaqueAfterContents(t *testing.T) {
	requireRoot(t)
	layer := makeTar(t, []ent{
		{name: "opq/", typ: tar.TypeDir},
		{name: "opq/keep/", typ: tar.TypeDir},
		{name: "opq/keep/new", body: "new"},
		{name: "opq/keep/deeper/", typ: tar.TypeDir},
		{name: "opq/file", body: "file"},
		{name: "opq/lnk", typ: tar.TypeSymlink, link: "keep"},
		{name: "opq/.wh..wh..opq"},
	})
	root := applyBoth(t, layer, Options{})
	for _, p := range []string{"opq/keep/new", "opq/keep/deeper", "opq/file", "opq/lnk"} {
		_, err := os.Lstat(filepath.Join(root, p))
		assert.NoError(t, err, p)
	}
	for _, p := range []string{"opq/old", "opq/keep/old"} {
		_, err := os.Lstat(filepath.Join(root, p))
		assert.ErrorIs(t, err, fs.ErrNotExist, p)
	}
}

// Entries that carry no layer contents (the root itself, AUFS metadata, a
// PAX global header) leave nothing in the tree.
func TestApplySkipsMetadataEntries(t *testing.T) {
	requireRoot(t)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Typeflag: tar.TypeXGlobalHeader, PAXRecords: map[string]string{"comment": "global"}},
		{Name: "./", Typeflag: tar.TypeDir, Mode: 0o700, ModTime: t0},
		{Name: ".wh..wh.plnk/", Typeflag: tar.TypeDir, Mode: 0o700, ModTime: t0},
		{Name: ".wh..wh.plnk/1234.5", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1, ModTime: t0},
		{Name: ".wh..wh.aufs", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: t0},
		{Name: "kept", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: t0},
	} {
		require.NoError(t, tw.WriteHeader(h))
		if h.Size > 0 {
			_, err := tw.Write([]byte("x"))
			require.NoError(t, err)
		}
	}
	require.NoError(t, tw.Close())
	root := applyBoth(t, buf.Bytes(), Options{})
	for _, p := range []string{".wh..wh.plnk", ".wh..wh.aufs", "pax_global_header"} {
		_, err := os.Lstat(filepath.Join(root, p))
		assert.ErrorIs(t, err, fs.ErrNotExist, p)
	}
	fi, err := os.Stat(root)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o755), fi.Mode().Perm(), "the root keeps its mode")
	_, err = os.Lstat(filepath.Join(root, "kept"))
	assert.NoError(t, err)
}

// With a budget of file contents held in memory smaller than the layer's
// files together, the workers' files wait for room and the tree is the
// same.
func TestApplySmallInFlightBudget(t *testing.T) {
	requireRoot(t)
	entries := []ent{{name: "d/", typ: tar.TypeDir}}
	for i := range 200 {
		entries = append(entries, ent{name: fmt.Sprintf("d/f%03d", i), body: fmt.Sprintf("contents %03d", i)})
	}
	entries = append(entries, richLayer(t)...)
	applyBoth(t, makeTar(t, entries), Options{Workers: 1, MaxInFlight: 32})
}
