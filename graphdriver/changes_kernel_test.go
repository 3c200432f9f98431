package graphdriver

import (
	"bytes"
	"encoding/binary"
	"io"
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

	"github.com/dmthin/dmthin/internal/changes"
)

func changeList(c []archive.Change) []string {
	var out []string
	for _, ch := range c {
		out = append(out, ch.Kind.String()+" "+ch.Path)
	}
	sort.Strings(out)
	return out
}

// fullWalk is what the two-tree walk says layer id changed against parent.
func fullWalk(t *testing.T, d *Driver, id, parent string) []archive.Change {
	t.Helper()
	layerRoot, parentRoot, release, err := d.mountPair(id, parent)
	require.NoError(t, err)
	defer func() { require.NoError(t, release()) }()
	c, err := changesDirs(layerRoot, parentRoot)
	require.NoError(t, err)
	return c
}

// Changes, DiffSize and Diff of a snapshot layer against its parent skip
// what the layer's ctimes say it did not touch, and give what the full
// two-tree walk gives, on real thin snapshots, for each kind of change a
// layer makes.
func TestChangesOfSnapshotMatchFullWalk(t *testing.T) {
	d := openDriver(t, newHome(t))
	require.NoError(t, d.Create("os", "", nil))
	withLayer(t, d, "os", func(root string) {
		for _, f := range []string{"etc/passwd", "etc/hosts", "etc/deep/a/b/c", "usr/bin/tool", "usr/lib/x.so",
			"var/log/old", "mv/from", "mvdir/sub/f", "link/target", "retype/file", "retype/dir/f", "meta/chmod",
			"meta/chown", "meta/touch", "meta/cap", "back/same", "untouched/a/b/c/d", "xchg/a", "xchg/b"} {
			writeFile(t, root, f, "os "+f)
		}
		// Sizes differ, so swapping the two is a change the walk can see.
		writeFile(t, root, "xchg/b", "a longer body than a's")
		require.NoError(t, os.Symlink("passwd", filepath.Join(root, "etc/link")))
		old := time.Unix(1600000000, 0)
		require.NoError(t, os.Chtimes(filepath.Join(root, "back/same"), old, old))
	})
	// The parent's inodes must be older than the snapshot by more than the
	// slack, as a parent layer made earlier than its child is.
	time.Sleep(changes.Slack + 100*time.Millisecond)
	require.NoError(t, d.Create("app", "os", nil))

	scenarios := []struct {
		name string
		do   func(in func(string) string)
	}{
		{"nothing", func(func(string) string) {}},
		{"edit", func(in func(string) string) { writeFile(t, in(""), "etc/passwd", "app edit") }},
		{"add", func(in func(string) string) { writeFile(t, in(""), "new/dir/file", "added") }},
		{"delete", func(in func(string) string) {
			require.NoError(t, os.Remove(in("etc/hosts")))
			require.NoError(t, os.RemoveAll(in("var/log")))
		}},
		{"rename file across directories", func(in func(string) string) {
			require.NoError(t, os.Rename(in("mv/from"), in("etc/deep/moved")))
		}},
		{"rename directory", func(in func(string) string) {
			require.NoError(t, os.Rename(in("mvdir/sub"), in("usr/sub-moved")))
		}},
		{"exchange", func(in func(string) string) {
			require.NoError(t, unix.Renameat2(unix.AT_FDCWD, in("xchg/a"), unix.AT_FDCWD, in("xchg/b"), unix.RENAME_EXCHANGE))
		}},
		{"hard link", func(in func(string) string) {
			require.NoError(t, os.Link(in("link/target"), in("usr/bin/hardlink")))
		}},
		{"retype", func(in func(string) string) {
			require.NoError(t, os.Remove(in("retype/file")))
			require.NoError(t, os.Mkdir(in("retype/file"), 0o755))
			require.NoError(t, os.RemoveAll(in("retype/dir")))
			writeFile(t, in(""), "retype/dir", "was a directory")
		}},
		{"metadata", func(in func(string) string) {
			require.NoError(t, os.Chmod(in("meta/chmod"), 0o600))
			require.NoError(t, os.Chown(in("meta/chown"), 1000, 1000))
			require.NoError(t, os.Chtimes(in("meta/touch"), time.Unix(1, 0), time.Unix(1, 0)))
			caps := make([]byte, 20)
			binary.LittleEndian.PutUint32(caps[0:], 0x02000001)
			binary.LittleEndian.PutUint32(caps[4:], 1<<unix.CAP_NET_RAW)
			require.NoError(t, unix.Setxattr(in("meta/cap"), "security.capability", caps, 0))
		}},
		{"changed and changed back", func(in func(string) string) {
			writeFile(t, in(""), "back/same", "OS back/same")
			writeFile(t, in(""), "back/same", "os back/same")
			require.NoError(t, os.Chtimes(in("back/same"), time.Unix(1600000000, 0), time.Unix(1600000000, 0)))
		}},
		{"symlink retargeted", func(in func(string) string) {
			require.NoError(t, os.Remove(in("etc/link")))
			require.NoError(t, os.Symlink("hosts", in("etc/link")))
		}},
	}
	// Each scenario adds to the layer; the lists are compared after each.
	for _, s := range scenarios {
		t.Run(s.name, func(t *testing.T) {
			withLayer(t, d, "app", func(root string) {
				s.do(func(p string) string { return filepath.Join(root, p) })
			})
			want := fullWalk(t, d, "app", "os")
			got, err := d.Changes("app", "os")
			require.NoError(t, err)
			assert.Equal(t, changeList(want), changeList(got))

			layerRoot := mustGet(t, d, "app")
			wantSize, err := diffSize(layerRoot, want)
			require.NoError(t, err)
			require.NoError(t, d.Put("app"))
			size, err := d.DiffSize("app", "os")
			require.NoError(t, err)
			assert.Equal(t, wantSize, size, "DiffSize")

			rc, err := d.Diff("app", "os")
			require.NoError(t, err)
			var buf bytes.Buffer
			_, err = io.Copy(&buf, rc)
			require.NoError(t, err)
			require.NoError(t, rc.Close())
			var whiteouts int
			for name := range tarNames(t, &buf) {
				if strings.HasPrefix(filepath.Base(name), ".wh.") {
					whiteouts++
				}
			}
			var deletes int
			for _, c := range want {
				if c.Kind == archive.ChangeDelete {
					deletes++
				}
			}
			assert.Equal(t, deletes, whiteouts, "one whiteout per deletion in Diff's stream")
		})
	}
	all, err := d.Changes("app", "os")
	require.NoError(t, err)
	assert.Contains(t, changeList(all), "C /etc/passwd")
	assert.Contains(t, changeList(all), "D /mv/from")
	assert.Contains(t, changeList(all), "C /xchg/a")
	assert.NotContains(t, changeList(all), "C /back/same")

	// The parent is not read where the layer is untouched: a change made to
	// the parent behind the layer's back (never done by an engine; it is
	// what lets this test see the walk skip) is invisible to Changes, while
	// the full walk sees it.
	withLayer(t, d, "os", func(root string) { writeFile(t, root, "untouched/a/b/c/d", "changed under the child") })
	assert.Contains(t, changeList(fullWalk(t, d, "app", "os")), "C /untouched/a/b/c/d")
	got, err := d.Changes("app", "os")
	require.NoError(t, err)
	assert.Equal(t, changeList(all), changeList(got))
}

// For a pair that is not snapshot and origin, Changes walks both trees.
func TestChangesOfUnrelatedLayersWalkBoth(t *testing.T) {
	d := openDriver(t, newHome(t))
	require.NoError(t, d.Create("a", "", nil))
	require.NoError(t, d.Create("b", "", nil))
	withLayer(t, d, "a", func(root string) { writeFile(t, root, "f", "a") })
	withLayer(t, d, "b", func(root string) { writeFile(t, root, "g", "b") })
	got, err := d.Changes("b", "a")
	require.NoError(t, err)
	assert.Equal(t, changeList(fullWalk(t, d, "b", "a")), changeList(got))
	assert.Contains(t, changeList(got), "D /f")
}
