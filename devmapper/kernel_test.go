package devmapper_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/devmapper"
	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/dmthin/dmthin/loopback"
)

// These tests need root and a kernel with device-mapper and dm-thin-pool:
// run them through hack/vm.sh test on a machine without one.

func client(t *testing.T) *devmapper.Client {
	t.Helper()
	testenv.RequireDM(t)
	c, err := devmapper.Open(devmapper.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// devName returns a name unique to this test process.
func devName(t *testing.T, what string) string {
	return fmt.Sprintf("%s-%s", testenv.Suffix(t), what)
}

// removeOnCleanup removes the device at the end of the test, whatever
// happened.
func removeOnCleanup(t *testing.T, c *devmapper.Client, name string) {
	t.Cleanup(func() {
		for i := 0; i < 50; i++ {
			err := c.Remove(name, devmapper.RemoveOptions{})
			if err == nil || devmapper.IsNotFound(err) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Errorf("cleanup: device %s could not be removed", name)
	})
}

// zeroDevice activates a small zero-target device, removed at cleanup.
func zeroDevice(t *testing.T, c *devmapper.Client, what string) string {
	t.Helper()
	name := devName(t, what)
	removeOnCleanup(t, c, name)
	_, err := c.Activate(name, "", devmapper.Table{{Length: 8, Params: devmapper.RawParams{Type: "zero"}}}, false)
	require.NoError(t, err)
	return name
}

// loopDev makes a sparse file of size bytes and attaches it.
func loopDev(t *testing.T, size int64) devmapper.Dev {
	t.Helper()
	path := filepath.Join(t.TempDir(), "backing")
	require.NoError(t, loopback.CreateSparse(path, size))
	l, err := loopback.Attach(path, loopback.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, l.Detach()) })
	maj, min := l.Dev()
	return devmapper.Dev{Major: maj, Minor: min}
}

func TestKernelVersionAndTargets(t *testing.T) {
	c := client(t)
	v, err := c.Version()
	require.NoError(t, err)
	assert.Equal(t, uint32(4), v.Major)
	t.Logf("device-mapper interface %s", v)
	tp, err := c.TargetVersion("thin-pool")
	require.NoError(t, err, "dm-thin-pool must be loaded")
	assert.True(t, tp.AtLeast(devmapper.Version{1, 0, 0}))
	_, err = c.TargetVersion("no-such-target")
	assert.ErrorIs(t, err, unix.ENOENT)
}

func TestLifecycleZeroTarget(t *testing.T) {
	c := client(t)
	name := devName(t, "zero")
	removeOnCleanup(t, c, name)

	info, err := c.Create(name, name+"-uuid")
	require.NoError(t, err)
	assert.False(t, info.LiveTable)
	_, err = c.Create(name, "")
	assert.ErrorIs(t, err, unix.EBUSY, "the kernel answers EBUSY for a duplicate name")

	tab := devmapper.Table{{Length: 2048, Params: devmapper.RawParams{Type: "zero"}}}
	require.NoError(t, c.Load(name, tab, false))
	info, err = c.Info(name)
	require.NoError(t, err)
	assert.True(t, info.InactiveTable)
	assert.False(t, info.LiveTable)

	info, err = c.Resume(name)
	require.NoError(t, err)
	info, err = c.Info(name)
	require.NoError(t, err)
	assert.True(t, info.LiveTable)
	assert.False(t, info.Suspended)
	assert.Equal(t, name+"-uuid", info.UUID)

	// The node is made without udev and reads zeros.
	var st unix.Stat_t
	require.NoError(t, unix.Stat(c.NodePath(name), &st))
	assert.Equal(t, info.Dev, devmapper.DecodeDev(st.Rdev))
	buf := make([]byte, 4096)
	f, err := os.Open(c.NodePath(name))
	require.NoError(t, err)
	n, err := f.ReadAt(buf, 0)
	require.NoError(t, err)
	assert.Equal(t, 4096, n)
	assert.Equal(t, make([]byte, 4096), buf)

	// Open device: remove is EBUSY.
	err = c.Remove(name, devmapper.RemoveOptions{})
	assert.ErrorIs(t, err, unix.EBUSY)
	require.NoError(t, f.Close())

	got, err := c.Table(name)
	require.NoError(t, err)
	assert.Equal(t, tab, got)

	require.NoError(t, c.Suspend(name, devmapper.SuspendOptions{NoFlush: true, SkipLockfs: true}))
	info, err = c.Info(name)
	require.NoError(t, err)
	assert.True(t, info.Suspended)
	// Load then clear an inactive table while suspended.
	require.NoError(t, c.Load(name, devmapper.Table{{Length: 4096, Params: devmapper.RawParams{Type: "error"}}}, false))
	require.NoError(t, c.ClearInactive(name))
	info, err = c.Resume(name)
	require.NoError(t, err)
	assert.False(t, info.InactiveTable)
	got, err = c.Table(name)
	require.NoError(t, err)
	assert.Equal(t, tab, got, "cleared table must not have replaced the live one")

	require.NoError(t, c.Remove(name, devmapper.RemoveOptions{}))
	_, err = c.Info(name)
	assert.ErrorIs(t, err, unix.ENXIO)
	_, err = os.Stat(c.NodePath(name))
	assert.ErrorIs(t, err, os.ErrNotExist, "node removed with the device")
	err = c.Remove(name, devmapper.RemoveOptions{})
	assert.ErrorIs(t, err, unix.ENXIO)
	var de *devmapper.Error
	require.ErrorAs(t, err, &de)
	assert.Equal(t, name, de.Name)
}

// TestRename uses a device that never had a table cleared: on Debian's 6.1
// and 6.12 kernels, load, clear, rename and remove of one device hits a
// double free in dm-ima and takes the kernel down (dmsetup alone reproduces
// it; see hack/README.md).
func TestRename(t *testing.T) {
	c := client(t)
	name := zeroDevice(t, c, "torename")
	var err error
	// Rename moves the node.
	newName := name + "-renamed"
	removeOnCleanup(t, c, newName)
	require.NoError(t, c.Rename(name, newName))
	_, err = os.Stat(c.NodePath(name))
	assert.ErrorIs(t, err, os.ErrNotExist)
	_, err = os.Stat(c.NodePath(newName))
	assert.NoError(t, err)
	_, err = c.Info(name)
	assert.True(t, devmapper.IsNotFound(err))

	require.NoError(t, c.Remove(newName, devmapper.RemoveOptions{}))
	_, err = os.Stat(c.NodePath(newName))
	assert.ErrorIs(t, err, os.ErrNotExist)
}

func TestDeferredRemove(t *testing.T) {
	c := client(t)
	name := zeroDevice(t, c, "deferred")
	f, err := os.Open(c.NodePath(name))
	require.NoError(t, err)
	require.NoError(t, c.Remove(name, devmapper.RemoveOptions{Deferred: true}))
	info, err := c.Info(name)
	require.NoError(t, err, "still there while open")
	assert.True(t, info.DeferredRemove)

	// Cancel, then defer again and close: the kernel removes it.
	require.NoError(t, c.CancelDeferredRemove(name))
	info, err = c.Info(name)
	require.NoError(t, err)
	assert.False(t, info.DeferredRemove)
	require.NoError(t, c.Remove(name, devmapper.RemoveOptions{Deferred: true}))
	require.NoError(t, f.Close())
	require.Eventually(t, func() bool {
		_, err := c.Info(name)
		return devmapper.IsNotFound(err)
	}, 5*time.Second, 10*time.Millisecond)
	require.NoError(t, c.PruneNodes())
	_, err = os.Stat(c.NodePath(name))
	assert.ErrorIs(t, err, os.ErrNotExist, "PruneNodes removes the node a deferred remove left")
}

func TestThinPoolMessagesAndIO(t *testing.T) {
	c := client(t)
	meta := loopDev(t, 16<<20)
	data := loopDev(t, 256<<20)
	pool := devName(t, "pool")
	removeOnCleanup(t, c, pool)
	params := devmapper.ThinPoolParams{Metadata: meta, Data: data, BlockSize: 128, LowWaterMark: 0,
		Features: devmapper.ThinPoolFeatures{ErrorIfNoSpace: true}}
	require.NoError(t, params.Validate())
	poolInfo, err := c.Activate(pool, "", devmapper.Table{{Length: 256 << 20 / 512, Params: params}}, false)
	require.NoError(t, err)

	got, err := c.Table(pool)
	require.NoError(t, err)
	assert.Equal(t, params, got[0].Params, "kernel prints back the table we loaded")

	st := poolStatus(t, c, pool)
	assert.Equal(t, devmapper.PoolReadWrite, st.Mode)
	assert.Equal(t, uint64(0), st.TransactionID)
	assert.Equal(t, uint64(256<<20/(64<<10)), st.TotalDataBlocks)
	assert.Equal(t, devmapper.ErrorIfNoSpace, st.NoSpace)

	_, err = c.Message(pool, 0, "create_thin 1")
	require.NoError(t, err)
	_, err = c.Message(pool, 0, "create_thin 1")
	assert.ErrorIs(t, err, unix.EEXIST, "duplicate thin id")
	_, err = c.Message(pool, 0, "set_transaction_id 0 1")
	require.NoError(t, err)
	_, err = c.Message(pool, 0, "set_transaction_id 0 2")
	assert.ErrorIs(t, err, unix.EINVAL, "wrong old transaction id")
	assert.Equal(t, uint64(1), poolStatus(t, c, pool).TransactionID)

	thin := devName(t, "thin1")
	removeOnCleanup(t, c, thin)
	thinTab := devmapper.Table{{Length: 64 << 20 / 512, Params: devmapper.ThinParams{Pool: poolInfo.Dev, ID: 1}}}
	_, err = c.Activate(thin, "", thinTab, false)
	require.NoError(t, err)
	tt, err := c.Table(thin)
	require.NoError(t, err)
	assert.Equal(t, thinTab, tt)

	pattern := make([]byte, 1<<20)
	for i := range pattern {
		pattern[i] = byte(i * 7)
	}
	writeAt(t, c.NodePath(thin), pattern, 4<<20)
	ts := thinStatus(t, c, thin)
	assert.Equal(t, devmapper.Sectors(1<<20/512), ts.MappedSectors)

	// Snapshot: suspend the origin, create_snap, resume.
	require.NoError(t, c.Suspend(thin, devmapper.SuspendOptions{}))
	_, err = c.Message(pool, 0, "create_snap 2 1")
	resumeErr := func() error { _, err := c.Resume(thin); return err }()
	require.NoError(t, err)
	require.NoError(t, resumeErr)
	snap := devName(t, "snap2")
	removeOnCleanup(t, c, snap)
	_, err = c.Activate(snap, "", devmapper.Table{{Length: 64 << 20 / 512, Params: devmapper.ThinParams{Pool: poolInfo.Dev, ID: 2}}}, false)
	require.NoError(t, err)
	assert.Equal(t, pattern, readAt(t, c.NodePath(snap), len(pattern), 4<<20), "snapshot sees origin's data")
	writeAt(t, c.NodePath(snap), make([]byte, 4096), 4<<20)
	assert.Equal(t, pattern, readAt(t, c.NodePath(thin), len(pattern), 4<<20), "origin unchanged by snapshot write")

	// Delete of an active thin device is refused; after remove it works.
	_, err = c.Message(pool, 0, "delete 2")
	assert.Error(t, err)
	require.NoError(t, c.Remove(snap, devmapper.RemoveOptions{}))
	_, err = c.Message(pool, 0, "delete 2")
	require.NoError(t, err)
	_, err = c.Message(pool, 0, "delete 2")
	assert.ErrorIs(t, err, unix.ENODATA, "deleting a missing id")

	// A thin table naming a missing id is refused with ENODATA.
	probe := devName(t, "probe")
	removeOnCleanup(t, c, probe)
	_, err = c.Create(probe, "")
	require.NoError(t, err)
	err = c.Load(probe, devmapper.Table{{Length: 8, Params: devmapper.ThinParams{Pool: poolInfo.Dev, ID: 99}}}, true)
	assert.ErrorIs(t, err, unix.ENODATA)
	require.NoError(t, c.Remove(probe, devmapper.RemoveOptions{}))

	// Metadata snapshot for userspace tools, answered with output.
	_, err = c.Message(pool, 0, "reserve_metadata_snap")
	require.NoError(t, err)
	st = poolStatus(t, c, pool)
	assert.NotNil(t, st.HeldMetadataRoot)
	_, err = c.Message(pool, 0, "release_metadata_snap")
	require.NoError(t, err)

	require.NoError(t, c.Remove(thin, devmapper.RemoveOptions{}))
	require.NoError(t, c.Remove(pool, devmapper.RemoveOptions{}))
}

func TestEventLowWater(t *testing.T) {
	c := client(t)
	meta := loopDev(t, 8<<20)
	data := loopDev(t, 64<<20)
	pool := devName(t, "evpool")
	removeOnCleanup(t, c, pool)
	// Low-water mark of 1000 blocks of 1024: crossed by the first write.
	params := devmapper.ThinPoolParams{Metadata: meta, Data: data, BlockSize: 128, LowWaterMark: 1000}
	_, err := c.Activate(pool, "", devmapper.Table{{Length: 64 << 20 / 512, Params: params}}, false)
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// The pool was resumed by Activate; crossing its low-water mark
	// raises an event that WaitEvent sees.
	_, err = c.Message(pool, 0, "create_thin 0")
	require.NoError(t, err)
	thin := devName(t, "evthin")
	removeOnCleanup(t, c, thin)
	pinfo, err := c.Info(pool)
	require.NoError(t, err)
	_, err = c.Activate(thin, "", devmapper.Table{{Length: 16 << 20 / 512, Params: devmapper.ThinParams{Pool: pinfo.Dev, ID: 0}}}, false)
	require.NoError(t, err)
	// Wait first, in the background, so the wake-up is what is tested.
	var wg sync.WaitGroup
	var got devmapper.Info
	var waitErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		got, waitErr = c.WaitEvent(ctx, pool, pinfo.EventNr)
	}()
	time.Sleep(200 * time.Millisecond)
	writeAt(t, c.NodePath(thin), make([]byte, 4<<20), 0)
	wg.Wait()
	require.NoError(t, waitErr)
	assert.Greater(t, got.EventNr, pinfo.EventNr)

	// A cancelled context ends the wait.
	short, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	_, err = c.WaitEvent(short, pool, got.EventNr)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
}

func TestListManyDevices(t *testing.T) {
	c := client(t)
	const n = 2000
	names := make([]string, n)
	for i := range names {
		names[i] = devName(t, fmt.Sprintf("many-%04d", i))
	}
	t.Cleanup(func() {
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				for i := w; i < n; i += 4 {
					if err := c.Remove(names[i], devmapper.RemoveOptions{}); err != nil && !devmapper.IsNotFound(err) {
						errs <- err
					}
				}
			}(w)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < n; i += 4 {
				if _, err := c.Create(names[i], ""); err != nil {
					errs <- err
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	list, err := c.List()
	require.NoError(t, err)
	seen := map[string]bool{}
	for _, l := range list {
		seen[l.Name] = true
	}
	for _, name := range names {
		if !seen[name] {
			t.Fatalf("List of %d entries misses %s", len(list), name)
		}
	}
	assert.GreaterOrEqual(t, len(list), n)
}

func TestErrorsCarryErrno(t *testing.T) {
	c := client(t)
	_, err := c.Info(devName(t, "absent"))
	var de *devmapper.Error
	require.True(t, errors.As(err, &de))
	assert.Equal(t, "DM_DEV_STATUS", de.Op)
	assert.ErrorIs(t, err, unix.ENXIO)
	_, err = c.Message(devName(t, "absent"), 0, "create_thin 1")
	assert.ErrorIs(t, err, unix.ENXIO)
	_, err = c.Create("bad/name", "")
	assert.ErrorIs(t, err, devmapper.ErrBadName)
}

func poolStatus(t *testing.T, c *devmapper.Client, name string) devmapper.ThinPoolStatus {
	t.Helper()
	lines, err := c.Status(name, devmapper.StatusOptions{NoFlush: true})
	require.NoError(t, err)
	require.Len(t, lines, 1)
	require.Equal(t, "thin-pool", lines[0].Type)
	t.Logf("thin-pool status: %q", lines[0].Params)
	st, err := devmapper.ParseThinPoolStatus(lines[0].Params)
	require.NoError(t, err)
	return st
}

func thinStatus(t *testing.T, c *devmapper.Client, name string) devmapper.ThinStatus {
	t.Helper()
	lines, err := c.Status(name, devmapper.StatusOptions{})
	require.NoError(t, err)
	require.Len(t, lines, 1)
	st, err := devmapper.ParseThinStatus(lines[0].Params)
	require.NoError(t, err)
	return st
}

func writeAt(t *testing.T, path string, b []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT, 0)
	if errors.Is(err, unix.EINVAL) {
		f, err = os.OpenFile(path, os.O_WRONLY|os.O_SYNC, 0)
	}
	require.NoError(t, err)
	defer f.Close()
	_, err = f.WriteAt(alignedCopy(b), off)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
}

func readAt(t *testing.T, path string, n int, off int64) []byte {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECT, 0)
	require.NoError(t, err)
	defer f.Close()
	buf := alignedCopy(make([]byte, n))
	_, err = f.ReadAt(buf, off)
	require.NoError(t, err)
	return append([]byte(nil), buf...)
}

// alignedCopy returns b copied into a 4096-aligned buffer for O_DIRECT.
func alignedCopy(b []byte) []byte {
	raw := make([]byte, len(b)+4096)
	off := 0
	if r := int(uintptr(unsafePointer(raw)) % 4096); r != 0 {
		off = 4096 - r
	}
	out := raw[off : off+len(b)]
	copy(out, b)
	return out
}
