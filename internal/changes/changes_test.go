package changes

import (
	"encoding/binary"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
	"time"

	archive "github.com/moby/go-archive"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/loopback"
)

// A snapshot without a device-mapper: an ext4 image holding the parent is
// copied block for block, so the copy's inodes keep their ctimes, as a
// thin snapshot's do. Both are mounted through loop devices.
func snapshotPair(t *testing.T, build func(root string)) (parent, child string, created time.Time) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to attach loop devices and mount ext4")
	}
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		t.Skip("needs mkfs.ext4")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "parent.img")
	require.NoError(t, loopback.CreateSparse(img, 64<<20))
	out, err := exec.Command(mkfs, "-q", "-F", "-I", "256", img).CombinedOutput()
	require.NoError(t, err, "%s", out)

	attach := func(image string) string {
		loop, err := loopback.Attach(image, loopback.Options{})
		if err != nil {
			t.Skipf("cannot attach a loop device here: %v", err)
		}
		t.Cleanup(func() { assert.NoError(t, loop.Detach()) })
		return loop.Path()
	}
	mount := func(dev, name string, flags uintptr) string {
		mp := filepath.Join(dir, name)
		if _, err := os.Stat(mp); err != nil {
			require.NoError(t, os.Mkdir(mp, 0o755))
		}
		require.NoError(t, unix.Mount(dev, mp, "ext4", flags, ""))
		t.Cleanup(func() { _ = unix.Unmount(mp, 0) })
		return mp
	}
	parentDev := attach(img)
	parent = mount(parentDev, "parent", 0)
	build(parent)
	// Let the build's ctimes fall out of the slack window, as they would for
	// a parent layer made earlier than its child.
	time.Sleep(Slack + 100*time.Millisecond)
	require.NoError(t, unix.Unmount(parent, 0))
	created = time.Now()
	copyFile(t, img, filepath.Join(dir, "child.img"))
	mount(parentDev, "parent", unix.MS_RDONLY)
	child = mount(attach(filepath.Join(dir, "child.img")), "child", 0)
	return parent, child, created
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	require.NoError(t, err)
	defer in.Close()
	out, err := os.Create(dst)
	require.NoError(t, err)
	_, err = io.Copy(out, in)
	require.NoError(t, err)
	require.NoError(t, out.Close())
}

func write(t *testing.T, p, body string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
	require.NoError(t, os.WriteFile(p, []byte(body), 0o644))
}

func list(changes []archive.Change) []string {
	var out []string
	for _, c := range changes {
		out = append(out, c.Kind.String()+" "+c.Path)
	}
	sort.Strings(out)
	return out
}

func capValue() []byte {
	b := make([]byte, 20)
	binary.LittleEndian.PutUint32(b[0:], 0x02000001)
	binary.LittleEndian.PutUint32(b[4:], 1<<unix.CAP_NET_RAW)
	return b
}

// Since gives the same list as the full two-tree walk of go-archive for
// the changes a layer makes: adds, edits, deletes, renames, hard links,
// re-typing, metadata-only changes, capabilities, and a file changed and
// changed back.
func TestSinceMatchesFullWalk(t *testing.T) {
	parent, child, created := snapshotPair(t, func(root string) {
		for _, f := range []string{"etc/passwd", "etc/hosts", "etc/deep/a/b/c", "usr/bin/tool", "usr/lib/x.so",
			"var/log/old", "mv/from", "mvdir/sub/f", "link/target", "retype/file", "retype/dir/f", "meta/chmod",
			"meta/chown", "meta/touch", "meta/cap", "back/same", "untouched/a/b/c/d"} {
			write(t, filepath.Join(root, f), "parent "+f)
		}
		require.NoError(t, os.Symlink("passwd", filepath.Join(root, "etc/link")))
		old := time.Unix(1600000000, 0)
		require.NoError(t, os.Chtimes(filepath.Join(root, "back/same"), old, old))
	})
	in := func(p string) string { return filepath.Join(child, p) }
	write(t, in("etc/passwd"), "child edit")
	write(t, in("new/dir/file"), "added")
	require.NoError(t, os.Remove(in("etc/hosts")))
	require.NoError(t, os.RemoveAll(in("var/log")))
	require.NoError(t, os.Rename(in("mv/from"), in("etc/deep/moved")))
	require.NoError(t, os.Rename(in("mvdir/sub"), in("usr/sub-moved")))
	require.NoError(t, os.Link(in("link/target"), in("usr/bin/hardlink")))
	require.NoError(t, os.Remove(in("retype/file")))
	require.NoError(t, os.Mkdir(in("retype/file"), 0o755))
	require.NoError(t, os.RemoveAll(in("retype/dir")))
	write(t, in("retype/dir"), "was a directory")
	require.NoError(t, os.Chmod(in("meta/chmod"), 0o600))
	require.NoError(t, os.Chown(in("meta/chown"), 1000, 1000))
	require.NoError(t, os.Chtimes(in("meta/touch"), time.Unix(1, 0), time.Unix(1, 0)))
	require.NoError(t, unix.Setxattr(in("meta/cap"), "security.capability", capValue(), 0))
	// Changed and changed back: new ctime, same contents, size and mtime.
	write(t, in("back/same"), "PARENT back/same")
	write(t, in("back/same"), "parent back/same")
	require.NoError(t, os.Chtimes(in("back/same"), time.Unix(1600000000, 0), time.Unix(1600000000, 0)))
	require.NoError(t, os.Remove(in("etc/link")))
	require.NoError(t, os.Symlink("hosts", in("etc/link")))

	want, err := archive.ChangesDirs(child, parent)
	require.NoError(t, err)
	got, err := Since(child, parent, created)
	require.NoError(t, err)
	assert.Equal(t, list(want), list(got))
	assert.Contains(t, list(got), "C /etc/passwd")
	assert.Contains(t, list(got), "D /var/log")
	assert.Contains(t, list(got), "A /etc/deep/moved")
	assert.Contains(t, list(got), "D /mv/from")
	assert.Contains(t, list(got), "C /meta/cap")
	assert.NotContains(t, list(got), "C /back/same")
	for i := 1; i < len(got); i++ {
		assert.Less(t, got[i-1].Path, got[i].Path, "sorted by path")
	}

	// Against an empty tree everything is added, as with ChangesDirs.
	want, err = archive.ChangesDirs(child, "")
	require.NoError(t, err)
	got, err = Since(child, "", created)
	require.NoError(t, err)
	assert.Equal(t, list(want), list(got))
}

// Since does not read the parent where the layer is untouched: a change
// made to the parent behind the layer's back (which the driver never
// does) in an untouched directory is invisible to it, while the full walk
// sees it. This is the saving, and the reason the parent must not change.
func TestSinceSkipsUntouchedParts(t *testing.T) {
	parent, child, created := snapshotPair(t, func(root string) {
		write(t, filepath.Join(root, "untouched/deep/file"), "same")
		write(t, filepath.Join(root, "edited/file"), "same")
	})
	write(t, filepath.Join(child, "edited/file"), "child")
	// Behind the layer's back.
	require.NoError(t, unix.Mount("", parent, "", unix.MS_REMOUNT, ""))
	write(t, filepath.Join(parent, "untouched/deep/file"), "parent changed after the snapshot")

	full, err := archive.ChangesDirs(child, parent)
	require.NoError(t, err)
	assert.Contains(t, list(full), "C /untouched/deep/file")
	got, err := Since(child, parent, created)
	require.NoError(t, err)
	assert.Equal(t, []string{"C /edited", "C /edited/file"}, list(got))
}
