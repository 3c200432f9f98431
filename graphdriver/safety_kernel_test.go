package graphdriver

import (
	"context"
	"github.com/moby/sys/mountinfo"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/dmthin/dmthin/layerstore"
	"github.com/dmthin/dmthin/thinpool"
)

// mountCount counts the mounts whose mount point is path, stacked ones
// included.
func mountCount(t *testing.T, path string) int {
	t.Helper()
	// Every mount at path, stacked ones included.
	mounts, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) { return m.Mountpoint != path, false })
	require.NoError(t, err)
	return len(mounts)
}

// Issue 7 item 6: only the driver's own layer mounts are adopted at Init.
// A mount of one of our devices at a name that is no layer is unmounted; a
// foreign mount is left alone; Get of an id that does not exist fails.
func TestAdoptOnlyOwnLayerMounts(t *testing.T) {
	home := newHome(t)
	d1 := initDriver(t, home, smallPool)
	require.NoError(t, d1.Create("a", "", nil))
	withLayer(t, d1, "a", func(root string) { writeFile(t, root, "f", "a\n") })
	mustGet(t, d1, "a")
	meta, err := d1.GetMetadata("a")
	require.NoError(t, err)
	mnt := filepath.Join(home, "mnt")
	// Ours, under a name that is no layer: a's device mounted again.
	ghost := filepath.Join(mnt, "ghost")
	require.NoError(t, os.Mkdir(ghost, 0o700))
	require.NoError(t, unix.Mount(meta["DevicePath"], ghost, "ext4", 0, ""))
	t.Cleanup(func() { _ = unix.Unmount(ghost, unix.MNT_DETACH) })
	// Someone else's, under a name that is no layer.
	foreign := filepath.Join(mnt, "foreign")
	require.NoError(t, os.Mkdir(foreign, 0o700))
	require.NoError(t, unix.Mount("tmpfs", foreign, "tmpfs", 0, "size=1m"))
	t.Cleanup(func() { _ = unix.Unmount(foreign, unix.MNT_DETACH) })
	require.NoError(t, d1.store.Pool().Close()) // the process dies

	d := openDriver(t, home)
	assert.False(t, d.Exists("ghost"))
	_, err = d.Get("ghost", "")
	assert.ErrorIs(t, err, ErrNotFound, "Get of an id that does not exist")
	assert.Zero(t, mountCount(t, ghost), "our device mounted at a non-layer is unmounted")
	assert.Equal(t, 1, mountCount(t, foreign), "a foreign mount is left alone")
	_, err = d.Get("foreign", "")
	assert.ErrorIs(t, err, ErrNotFound)

	root := mustGet(t, d, "a")
	assert.Equal(t, "a\n", readFile(t, root, "f"), "the layer's own mount is adopted")
	assert.Equal(t, 1, mountCount(t, filepath.Join(mnt, "a")))
	require.NoError(t, d.Put("a"))
	assert.Zero(t, mountCount(t, filepath.Join(mnt, "a")))
	require.NoError(t, unix.Unmount(foreign, 0))
}

// Issue 7 item 12: Remove of a layer with a Get still held is refused with
// ErrBusy; the holder's Put works, and Remove after it.
func TestRemoveRefusedWhileGetHeld(t *testing.T) {
	d := openDriver(t, newHome(t))
	require.NoError(t, d.Create("held", "", nil))
	root := mustGet(t, d, "held")
	err := d.Remove("held")
	assert.ErrorIs(t, err, ErrBusy)
	assert.True(t, d.Exists("held"))
	writeFile(t, root, "still-there", "yes\n") // the holder's mount is intact
	require.NoError(t, d.Put("held"), "the holder's Put")
	require.NoError(t, d.Remove("held"))
	assert.False(t, d.Exists("held"))
}

// Issue 7 item 14: a home reached through a symbolic link. Mounts a
// previous process left are found (not stacked on), and Home is the
// resolved path, the one the kernel shows.
func TestHomeThroughSymlink(t *testing.T) {
	testenv.RequireDM(t)
	real := newHome(t)
	require.NoError(t, os.MkdirAll(real, 0o700))
	link := filepath.Join(t.TempDir(), "link-"+testenv.Suffix(t))
	require.NoError(t, os.Symlink(real, link))

	d1 := initDriver(t, link, smallPool)
	require.NoError(t, d1.Create("l", "", nil))
	mustGet(t, d1, "l")
	require.NoError(t, d1.store.Pool().Close()) // the process dies with l mounted

	d := openDriver(t, link)
	assert.Equal(t, real, d.Home(), "the home is resolved")
	mp := filepath.Join(real, "mnt", "l")
	assert.Equal(t, 1, mountCount(t, mp))
	root := mustGet(t, d, "l")
	assert.Equal(t, filepath.Join(real, "mnt", "l", "rootfs"), root)
	assert.Equal(t, 1, mountCount(t, mp), "Get uses the adopted mount, it does not stack another")
	require.NoError(t, d.Put("l"))
	assert.Zero(t, mountCount(t, mp))
}

// Issue 7 item 13: a half-made layer (its device made, its filesystem not
// finished, as a crash leaves it) does not exist for Exists, Get or
// GetMetadata, and Create and Remove both work on it.
func TestHalfMadeLayer(t *testing.T) {
	d := openDriver(t, newHome(t))
	ctx := context.Background()
	pool := d.store.Pool()
	half := thinpool.WithLabels(map[string]string{layerstore.LabelState: layerstore.StateIncomplete})
	for _, id := range []string{"half1", "half2"} {
		_, err := pool.Snapshot(ctx, layerstore.DeviceName(id), "base", 0, half)
		require.NoError(t, err)
		assert.False(t, d.Exists(id), id)
		_, err = d.Get(id, "")
		assert.ErrorIs(t, err, ErrNotFound, id)
		_, err = d.GetMetadata(id)
		assert.ErrorIs(t, err, ErrNotFound, id)
	}
	require.NoError(t, d.Create("half1", "", nil), "Create over a half-made layer")
	assert.True(t, d.Exists("half1"))
	withLayer(t, d, "half1", func(root string) { assert.Empty(t, dirNames(t, root)) })
	require.NoError(t, d.Remove("half2"), "Remove of a half-made layer")
	_, err := pool.Lookup(layerstore.DeviceName("half2"))
	assert.ErrorIs(t, err, thinpool.ErrNotFound)
	assert.Equal(t, "1", statusMap(d)["Layers"])
}
