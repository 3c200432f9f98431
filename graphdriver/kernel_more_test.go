package graphdriver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/devmapper"
	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/dmthin/dmthin/layerstore"
	"github.com/dmthin/dmthin/loopback"
	"github.com/dmthin/dmthin/thinpool"
)

// Calls for different ids run at the same time; Get/Put of one id from many
// goroutines keeps a correct count.
func TestConcurrentLayers(t *testing.T) {
	d := openDriver(t, newHome(t))
	require.NoError(t, d.Create("os", "", nil))
	withLayer(t, d, "os", func(root string) { writeFile(t, root, "etc/os", "os\n") })

	const workers = 6
	errs := make(chan error, 4*workers)
	var wg sync.WaitGroup
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("ctr-%d", i)
			errs <- func() error {
				if err := d.Create(id, "os", nil); err != nil {
					return err
				}
				for j := 0; j < 3; j++ {
					root, err := d.Get(id, "")
					if err != nil {
						return err
					}
					if b, err := os.ReadFile(filepath.Join(root, "etc/os")); err != nil || string(b) != "os\n" {
						return fmt.Errorf("%s: read etc/os: %q, %v", id, b, err)
					}
					if err := os.WriteFile(filepath.Join(root, fmt.Sprintf("f%d", j)), []byte(id), 0o644); err != nil {
						return err
					}
					if err := d.Put(id); err != nil {
						return err
					}
				}
				changes, err := d.Changes(id, "os")
				if err != nil {
					return err
				}
				if len(changes) != 3 {
					return fmt.Errorf("%s: %d changes, want 3: %v", id, len(changes), changes)
				}
				return d.Remove(id)
			}()
		}()
		// Readers of the shared parent.
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- func() error {
				for j := 0; j < 3; j++ {
					root, err := d.Get("os", "")
					if err != nil {
						return err
					}
					if _, err := os.Stat(filepath.Join(root, "etc/os")); err != nil {
						return err
					}
					if err := d.Put("os"); err != nil {
						return err
					}
				}
				return nil
			}()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		assert.NoError(t, err)
	}
	assert.False(t, isMounted(t, d, "os"), "every Get was matched by a Put")
	assert.Equal(t, "1", statusMap(d)["Layers"])
}

// heldDevice is a layer's block device opened the way a stray process
// would hold it.
type heldDevice struct {
	*os.File
	sysDir string // /sys/dev/block/MAJ:MIN
}

// holdDevice mounts layer id (the caller puts it) and opens its device.
func holdDevice(t *testing.T, d *Driver, id string) heldDevice {
	t.Helper()
	mustGet(t, d, id)
	meta, err := d.GetMetadata(id)
	require.NoError(t, err)
	require.NotEmpty(t, meta["DevicePath"])
	f, err := os.Open(meta["DevicePath"])
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	var st unix.Stat_t
	require.NoError(t, unix.Fstat(int(f.Fd()), &st))
	return heldDevice{f, fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))}
}

// closeAndWaitGone closes a device whose removal was deferred and waits for
// the kernel to finish removing it: it does so in a work queue after the
// last close returns, and the device's sysfs entry goes last, after its
// table (and so its hold on the thin device) is gone.
func (h heldDevice) closeAndWaitGone(t *testing.T) {
	t.Helper()
	require.NoError(t, h.Close())
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := os.Stat(h.sysDir)
		if errors.Is(err, os.ErrNotExist) {
			return
		}
		require.True(t, time.Now().Before(deadline), "%s still there 10s after the last close", h.sysDir)
		time.Sleep(10 * time.Millisecond)
	}
}

// Without deferred removal, a layer whose device is held elsewhere cannot
// be removed, and stays.
func TestRemoveBusyLayer(t *testing.T) {
	d := openDriver(t, newHome(t))
	require.NoError(t, d.Create("held", "", nil))
	f := holdDevice(t, d, "held")
	assert.ErrorIs(t, d.Put("held"), ErrBusy, "unmounted, but the device cannot be deactivated")
	assert.False(t, isMounted(t, d, "held"))
	err := d.Remove("held")
	assert.ErrorIs(t, err, ErrBusy)
	assert.True(t, d.Exists("held"))
	require.NoError(t, f.Close())
	require.NoError(t, d.Remove("held"))
	assert.False(t, d.Exists("held"))
}

// With deferred removal and deletion and synchronous removal (the
// behaviour before asynchronous removal), a busy layer is gone for the
// driver at once and its device is deleted when closed: on the next
// attempt, or at the next start; its id is taken until then.
func TestDeferredDeletion(t *testing.T) {
	home := newHome(t)
	deferred := []string{"dm.use_deferred_removal=true", "dm.use_deferred_deletion=true", "dm.sync_remove=true"}
	d := initDriver(t, home, append(smallPool, deferred...))
	poolName := d.store.Pool().Name()

	require.NoError(t, d.Create("busy", "", nil))
	f := holdDevice(t, d, "busy")
	require.NoError(t, d.Put("busy"), "deactivation is deferred")
	require.NoError(t, d.Remove("busy"))
	assert.False(t, d.Exists("busy"))
	st := statusMap(d)
	assert.Equal(t, "1", st["Deferred Deleted Device Count"])
	assert.Equal(t, "true", st["Deferred Deletion Enabled"])
	assert.Equal(t, "0", st["Layers"])
	err := d.Create("busy", "", nil)
	assert.ErrorIs(t, err, ErrExists, "still being deleted")
	_, err = d.Get("busy", "")
	assert.ErrorIs(t, err, ErrNotFound)

	f.closeAndWaitGone(t)
	require.NoError(t, d.Create("busy", "", nil), "the deferred deletion completes, the id is free again")
	assert.Equal(t, "0", statusMap(d)["Deferred Deleted Device Count"])

	// A deferred deletion left at shutdown is done at the next start.
	require.NoError(t, d.Create("busy2", "", nil))
	f = holdDevice(t, d, "busy2")
	require.NoError(t, d.Put("busy2"))
	require.NoError(t, d.Remove("busy2"))
	assert.Equal(t, "1", statusMap(d)["Deferred Deleted Device Count"])
	f.closeAndWaitGone(t)
	require.NoError(t, d.Cleanup())
	assertNothingLeft(t, home, poolName)

	d = openDriver(t, home, deferred...)
	assert.Equal(t, "0", statusMap(d)["Deferred Deleted Device Count"])
	assert.False(t, d.Exists("busy2"))
	assert.True(t, d.Exists("busy"))
}

// With asynchronous removal (the default) and deferred deletion, a busy
// layer is gone for the driver at once and its id is free at once; its
// device is deleted once closed, and a deletion left at shutdown is done
// at the next start.
func TestDeferredDeletionAsync(t *testing.T) {
	home := newHome(t)
	deferred := []string{"dm.use_deferred_removal=true", "dm.use_deferred_deletion=true"}
	d := initDriver(t, home, append(smallPool, deferred...))
	poolName := d.store.Pool().Name()

	require.NoError(t, d.Create("busy", "", nil))
	f := holdDevice(t, d, "busy")
	require.NoError(t, d.Put("busy"))
	require.NoError(t, d.Remove("busy"))
	assert.False(t, d.Exists("busy"))
	assert.Equal(t, "1", statusMap(d)["Deferred Deleted Device Count"])
	assert.Equal(t, "0", statusMap(d)["Layers"])
	require.NoError(t, d.Create("busy", "", nil), "the id is free at once, while the old device is held")
	withLayer(t, d, "busy", func(root string) { assert.Empty(t, dirNames(t, root), "a new layer") })
	require.NoError(t, f.Close())
	require.NoError(t, d.Drain(context.Background()))
	assert.Equal(t, "0", statusMap(d)["Deferred Deleted Device Count"])

	// Held through shutdown: recorded, and done at the next start.
	require.NoError(t, d.Create("busy2", "", nil))
	f = holdDevice(t, d, "busy2")
	require.NoError(t, d.Put("busy2"))
	require.NoError(t, d.Remove("busy2"))
	require.Error(t, d.Cleanup(), "a device held elsewhere cannot be deactivated")
	require.NoError(t, f.Close())
	d = openDriver(t, home, deferred...)
	require.NoError(t, d.Drain(context.Background()))
	assert.Equal(t, "0", statusMap(d)["Deferred Deleted Device Count"])
	assert.False(t, d.Exists("busy2"))
	assert.True(t, d.Exists("busy"))
	require.NoError(t, d.Cleanup())
	assertNothingLeft(t, home, poolName)
}

// The background worker finishes deferred deletions without being asked,
// with synchronous removal (the pool's deferred deletion) and with the
// default asynchronous one (the deletion of the retired device).
func TestDeferredDeletionWorker(t *testing.T) {
	old := deferredInterval
	deferredInterval = 50 * time.Millisecond
	t.Cleanup(func() { deferredInterval = old })
	for _, mode := range []string{"dm.sync_remove=true", "dm.sync_remove=false"} {
		t.Run(mode, func(t *testing.T) {
			d := openDriver(t, newHome(t), "dm.use_deferred_removal=true", "dm.use_deferred_deletion=true", mode)
			require.NoError(t, d.Create("busy", "", nil))
			f := holdDevice(t, d, "busy")
			require.NoError(t, d.Put("busy"))
			require.NoError(t, d.Remove("busy"))
			assert.Equal(t, "1", statusMap(d)["Deferred Deleted Device Count"])
			// No waiting for the kernel here: the worker may well fire while
			// the kernel is still tearing the device down.
			require.NoError(t, f.Close())
			deadline := time.Now().Add(10 * time.Second)
			for statusMap(d)["Deferred Deleted Device Count"] != "0" {
				require.True(t, time.Now().Before(deadline), "the deferred deletion was not finished within 10s")
				time.Sleep(20 * time.Millisecond)
			}
			_, present := layerDevices(t, d)[layerstore.DeviceName("busy")]
			assert.False(t, present)
		})
	}
}

// A pool over given block devices: dm.datadev and dm.metadatadev.
func TestPoolOnDevices(t *testing.T) {
	testenv.RequireDM(t)
	dir := t.TempDir()
	var paths []string
	for _, f := range []struct {
		name string
		size int64
	}{{"data-" + testenv.Suffix(t), 1 << 30}, {"meta-" + testenv.Suffix(t), 32 << 20}} {
		p := filepath.Join(dir, f.name)
		require.NoError(t, loopback.CreateSparse(p, f.size))
		l, err := loopback.Attach(p, loopback.Options{})
		require.NoError(t, err)
		t.Cleanup(func() { assert.NoError(t, l.Detach()) })
		paths = append(paths, l.Path())
	}
	home := newHome(t)
	d := initDriver(t, home, []string{"dm.datadev=" + paths[0], "dm.metadatadev=" + paths[1], "dm.basesize=64M"})
	st := statusMap(d)
	assert.Equal(t, paths[0], st["Data file"])
	assert.Equal(t, paths[1], st["Metadata file"])
	assert.Equal(t, "false", st["Discard On Removal"], "blkdiscard is off by default over devices")
	require.NoError(t, d.Create("l", "", nil))
	withLayer(t, d, "l", func(root string) { writeFile(t, root, "f", "on devices\n") })
	poolName := d.store.Pool().Name()
	require.NoError(t, d.Cleanup())
	assertNothingLeft(t, home, poolName)
	assert.NotContains(t, dmNames(t), poolName, "the pool made over given devices is torn down by Cleanup")

	d = initDriver(t, home, []string{"dm.datadev=" + paths[0], "dm.metadatadev=" + paths[1]})
	withLayer(t, d, "l", func(root string) { assert.Equal(t, "on devices\n", readFile(t, root, "f")) })
	require.NoError(t, d.Cleanup())
}

// An external pool (dm.thinpooldev) is used but left as it was by Cleanup.
func TestExternalPool(t *testing.T) {
	testenv.RequireDM(t)
	zero := 0
	ext, err := thinpool.Open(context.Background(), thinpool.Options{
		Root: filepath.Join(t.TempDir(), "extpool-"+testenv.Suffix(t)), LoopDataSize: 1 << 30, LoopMetadataSize: 32 << 20,
		MinFreeSpacePercent: &zero,
	})
	require.NoError(t, err)
	poolName := ext.Name()
	require.NoError(t, ext.Close()) // the pool stays, as someone else's would
	t.Cleanup(func() {
		c, err := devmapper.Open(devmapper.Options{})
		require.NoError(t, err)
		defer c.Close()
		assert.NoError(t, c.Remove(poolName, devmapper.RemoveOptions{}), "remove the external pool")
	})

	home := newHome(t)
	opts := []string{"dm.thinpooldev=/dev/mapper/" + poolName, "dm.basesize=64M"}
	d := initDriver(t, home, opts)
	st := statusMap(d)
	assert.Equal(t, poolName, st["Pool Name"])
	assert.Contains(t, st["Pool Device"], "external")
	require.NoError(t, d.Create("l", "", nil))
	root := mustGet(t, d, "l")
	writeFile(t, root, "f", "external\n")
	meta, err := d.GetMetadata("l")
	require.NoError(t, err)
	layerPrefix := strings.TrimSuffix(filepath.Base(meta["DevicePath"]), "-l-l")
	require.NoError(t, d.Cleanup(), "cleanup with the layer mounted")

	names := dmNames(t)
	assert.Contains(t, names, poolName, "the external pool is left in place")
	for _, n := range names {
		assert.False(t, strings.HasPrefix(n, layerPrefix+"-"), "thin device %s left active", n)
	}
	mounts, err := mountsUnder(filepath.Join(home, "mnt"))
	require.NoError(t, err)
	assert.Empty(t, mounts)

	d = initDriver(t, home, opts)
	withLayer(t, d, "l", func(root string) { assert.Equal(t, "external\n", readFile(t, root, "f")) })
	require.NoError(t, d.Remove("l"))
	require.NoError(t, d.Cleanup())
}

// Diff's stream can be closed before it is read to the end.
func TestDiffClosedEarly(t *testing.T) {
	d := openDriver(t, newHome(t))
	require.NoError(t, d.Create("l", "", nil))
	withLayer(t, d, "l", func(root string) {
		for i := 0; i < 50; i++ {
			writeFile(t, root, fmt.Sprintf("d/%02d", i), strings.Repeat("x", 64<<10))
		}
	})
	rc, err := d.Diff("l", "")
	require.NoError(t, err)
	_, err = io.CopyN(io.Discard, rc, 100<<10)
	require.NoError(t, err)
	require.NoError(t, rc.Close())
	assert.False(t, isMounted(t, d, "l"))
	require.NoError(t, d.Remove("l"))
}
