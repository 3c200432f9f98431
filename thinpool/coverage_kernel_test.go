package thinpool

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmthin/dmthin/devmapper"
	"github.com/dmthin/dmthin/internal/testenv"
)

// These kernel tests drive the refusals and the error and recovery paths a
// user meets: bad input, devices in the wrong state, open devices, leftovers
// of a crash. Each checks what the user would check afterwards.

// deviceNames lists the names of the pool's records.
func deviceNames(t *testing.T, p *Pool) []string {
	t.Helper()
	ds, err := p.List()
	require.NoError(t, err)
	names := []string{}
	for _, d := range ds {
		names = append(names, d.Name)
	}
	return names
}

func TestBadInputIsRefused(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	_, err := tp.Create(ctx, "base", 8*MiB)
	require.NoError(t, err)

	for _, size := range []int64{0, -512, 1000, 8*MiB + 1} {
		_, err := tp.Create(ctx, "bad-size", size)
		assert.ErrorContains(t, err, fmt.Sprint(size), "create of %d bytes", size)
		err = tp.Resize(ctx, "base", size)
		assert.Error(t, err, "resize to %d bytes", size)
	}
	for _, name := range []string{"", ".", "..", "a/b", "x..y", "nul\x00", "pool", "probe-1", strings.Repeat("n", 200)} {
		_, err := tp.Create(ctx, name, 8*MiB)
		assert.ErrorIs(t, err, ErrInvalidName, "create %q", name)
		_, err = tp.Snapshot(ctx, name, "base", 0)
		assert.ErrorIs(t, err, ErrInvalidName, "snapshot %q", name)
	}
	_, err = tp.Create(ctx, "base", 8*MiB)
	assert.ErrorIs(t, err, ErrExists)
	_, err = tp.Snapshot(ctx, "base", "base", 0)
	assert.ErrorIs(t, err, ErrExists)

	// Snapshots: no parent, a missing parent, smaller than the parent.
	_, err = tp.Snapshot(ctx, "snap", "", 0)
	assert.ErrorIs(t, err, ErrInvalidName)
	_, err = tp.Snapshot(ctx, "snap", "missing", 0)
	assert.ErrorIs(t, err, ErrNotFound)
	_, err = tp.Snapshot(ctx, "snap", "base", 4*MiB)
	assert.ErrorContains(t, err, "smaller than its parent")
	_, err = tp.Snapshot(ctx, "snap", "base", 8*MiB+100)
	assert.ErrorContains(t, err, "multiple of 512")
	// A bigger snapshot is fine and has the bigger size.
	d, err := tp.Snapshot(ctx, "snap", "base", 16*MiB)
	require.NoError(t, err)
	assert.Equal(t, int64(16*MiB), d.Size)

	// Devices that do not exist.
	_, err = tp.Activate(ctx, "missing")
	assert.ErrorIs(t, err, ErrNotFound)
	assert.ErrorIs(t, tp.Deactivate(ctx, "missing", false), ErrNotFound)
	assert.ErrorIs(t, tp.Delete(ctx, "missing", DeleteOptions{}), ErrNotFound)
	assert.ErrorIs(t, tp.Resize(ctx, "missing", 16*MiB), ErrNotFound)
	_, err = tp.Get("missing")
	assert.ErrorIs(t, err, ErrNotFound)
	_, err = tp.Lookup("missing")
	assert.ErrorIs(t, err, ErrNotFound)

	// Shrinking is refused and changes nothing; the same size is a no-op.
	assert.ErrorContains(t, tp.Resize(ctx, "base", 4*MiB), "shrinking")
	require.NoError(t, tp.Resize(ctx, "base", 8*MiB))
	d, err = tp.Lookup("base")
	require.NoError(t, err)
	assert.Equal(t, int64(8*MiB), d.Size)

	// A cancelled context stops a create before anything is made.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = tp.Create(cctx, "cancelled", 8*MiB)
	assert.ErrorIs(t, err, context.Canceled)

	// Nothing refused left a device behind.
	assert.Equal(t, []string{"base", "snap"}, deviceNames(t, tp.Pool))
	assertPoolMatchesRecords(t, tp.Pool)

	// The pool describes itself.
	st, err := tp.Status(ctx)
	require.NoError(t, err)
	assert.Equal(t, st.Name, tp.Name())
	assert.Equal(t, st.BlockSize, tp.BlockSize())
	assert.Equal(t, int64(DefaultBlockSize), tp.BlockSize())
	info, err := tp.dm.Info(tp.Name())
	require.NoError(t, err)
	assert.Equal(t, info.Dev, tp.Dev())

	// A closed pool says so, whatever is asked.
	require.NoError(t, tp.Close())
	require.NoError(t, tp.Close(), "a second Close is harmless")
	_, err = tp.Create(ctx, "late", 8*MiB)
	assert.ErrorIs(t, err, ErrClosed)
	_, err = tp.Status(ctx)
	assert.ErrorIs(t, err, ErrClosed)
	_, err = tp.Get("base")
	assert.ErrorIs(t, err, ErrClosed)
	_, err = tp.Lookup("base")
	assert.ErrorIs(t, err, ErrClosed)
	_, err = tp.List()
	assert.ErrorIs(t, err, ErrClosed)
	_, err = tp.Activate(ctx, "base")
	assert.ErrorIs(t, err, ErrClosed)
	assert.ErrorIs(t, tp.Delete(ctx, "base", DeleteOptions{}), ErrClosed)
	assert.ErrorIs(t, tp.ProcessDeferred(ctx), ErrClosed)
	assert.ErrorIs(t, tp.Grow(ctx, 0, 0), ErrClosed)
	assert.ErrorIs(t, tp.Shutdown(ctx), ErrClosed)
	_, err = tp.WaitEvent(ctx, 0)
	assert.ErrorIs(t, err, ErrClosed)
}

// TestOpenRefusals: Open refuses bad options, and refuses to make an empty
// pool where the store remembers one whose metadata file is gone.
func TestOpenRefusals(t *testing.T) {
	testenv.RequireDM(t)
	ctx := context.Background()
	root := filepath.Join(t.TempDir(), "pool")
	bad := smallOptions(root)
	bad.BlockSize = 1000
	_, err := Open(ctx, bad)
	assert.ErrorIs(t, err, ErrInvalidOptions)

	p, err := Open(ctx, smallOptions(root))
	require.NoError(t, err)
	_, err = p.Create(ctx, "dev", 8*MiB)
	require.NoError(t, err)
	meta := p.metaPath
	require.NoError(t, p.Shutdown(ctx))
	require.NoError(t, os.Rename(meta, meta+".away"))
	_, err = Open(ctx, smallOptions(root))
	assert.ErrorContains(t, err, "refusing to make an empty one")
	_, statErr := os.Stat(meta)
	assert.ErrorIs(t, statErr, os.ErrNotExist, "no new metadata file was made")

	// With the file back, the pool and its device are there.
	require.NoError(t, os.Rename(meta+".away", meta))
	p, err = Open(ctx, smallOptions(root))
	require.NoError(t, err)
	d, err := p.Get("dev")
	require.NoError(t, err)
	assert.Equal(t, StateReady, d.State)
	assertPoolMatchesRecords(t, p)
	require.NoError(t, p.Shutdown(ctx))
	thinCheck(t, meta)
}

func TestSpaceErrorSaysOutOfData(t *testing.T) {
	err := error(&SpaceError{What: "data", Free: 0, Total: 512 * MiB, OutOfData: true})
	assert.ErrorIs(t, err, ErrPoolFull)
	assert.Contains(t, err.Error(), "out of data space")
	assert.Contains(t, err.Error(), "512MiB")
}

// TestActivateReplacesHalfMadeDevice: a crash between creating the dm device
// and loading its table leaves a device with no table. Activate removes it
// and makes the device afresh, with the data.
func TestActivateReplacesHalfMadeDevice(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	_, err := tp.Create(ctx, "dev", 8*MiB)
	require.NoError(t, err)
	path, err := tp.Activate(ctx, "dev")
	require.NoError(t, err)
	data := pattern(5, 64<<10)
	writeFile(t, path, 0, data)
	require.NoError(t, tp.Deactivate(ctx, "dev", false))
	d, err := tp.Get("dev")
	require.NoError(t, err)
	assert.False(t, d.Active)

	// Half-made: created, no table.
	dm := tp.dmName("dev")
	_, err = tp.dm.Create(dm, "")
	require.NoError(t, err)
	info, err := tp.dm.Info(dm)
	require.NoError(t, err)
	require.False(t, info.LiveTable)
	d, err = tp.Get("dev")
	require.NoError(t, err)
	assert.False(t, d.Active, "a device without a table is not active")

	path, err = tp.Activate(ctx, "dev")
	require.NoError(t, err)
	info, err = tp.dm.Info(dm)
	require.NoError(t, err)
	assert.True(t, info.LiveTable && !info.Suspended)
	assert.Equal(t, data, readFile(t, path, 0, len(data)))
	d, err = tp.Get("dev")
	require.NoError(t, err)
	assert.True(t, d.Active)
	assert.Equal(t, path, d.Path)
	assert.Positive(t, d.MappedBytes)

	// Activating an active device gives the same path.
	again, err := tp.Activate(ctx, "dev")
	require.NoError(t, err)
	assert.Equal(t, path, again)
}

// TestDeleteOpenDevice: an open device is not deleted: without Deferred
// the delete fails with ErrBusy and changes nothing; with Deferred it is
// marked, refuses new use, and ProcessDeferred deletes it once closed.
func TestDeleteOpenDevice(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	_, err := tp.Create(ctx, "open", 8*MiB)
	require.NoError(t, err)
	path, err := tp.Activate(ctx, "open")
	require.NoError(t, err)
	data := pattern(9, 64<<10)
	writeFile(t, path, 0, data)
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()

	err = tp.Delete(ctx, "open", DeleteOptions{})
	assert.ErrorIs(t, err, ErrBusy)
	err = tp.Delete(ctx, "open", DeleteOptions{Discard: true})
	assert.ErrorIs(t, err, ErrBusy)
	assert.ErrorIs(t, tp.Deactivate(ctx, "open", false), ErrBusy)
	d, err := tp.Get("open")
	require.NoError(t, err)
	assert.Equal(t, StateReady, d.State, "a refused delete changes nothing")
	assert.True(t, d.Active)
	assert.Equal(t, 1, d.OpenCount)
	assert.Equal(t, data, readFile(t, path, 0, len(data)))

	require.NoError(t, tp.Delete(ctx, "open", DeleteOptions{Deferred: true}))
	d, err = tp.Get("open")
	require.NoError(t, err)
	assert.Equal(t, StateDeferredDelete, d.State)
	assert.True(t, d.DeferredDelete)
	assert.True(t, d.Active, "still there while open")
	st, err := tp.Status(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1, st.DeferredDeletes)
	// A device waiting for deletion takes no new users.
	_, err = tp.Activate(ctx, "open")
	assert.ErrorContains(t, err, string(StateDeferredDelete))
	_, err = tp.Snapshot(ctx, "child", "open", 0)
	assert.ErrorContains(t, err, string(StateDeferredDelete))
	// Still open: ProcessDeferred leaves it and says why.
	err = tp.ProcessDeferred(ctx)
	assert.ErrorIs(t, err, ErrBusy)
	_, err = tp.Get("open")
	require.NoError(t, err)

	require.NoError(t, f.Close())
	// The kernel removes the dm device at last close (deferred remove).
	require.Eventually(t, func() bool {
		_, err := tp.dm.Info(tp.dmName("open"))
		return devmapper.IsNotFound(err)
	}, 5*time.Second, 20*time.Millisecond, "deferred remove at last close")
	require.NoError(t, tp.ProcessDeferred(ctx))
	_, err = tp.Get("open")
	assert.ErrorIs(t, err, ErrNotFound)
	st, err = tp.Status(ctx)
	require.NoError(t, err)
	assert.Equal(t, 0, st.DeferredDeletes)
	assert.Equal(t, 0, st.Devices)
	assertPoolMatchesRecords(t, tp.Pool)
}

// TestDeleteDiscardsInactiveDevice: Delete with Discard activates an
// inactive device to discard its blocks; the pool gets the space back and
// no dm device is left.
func TestDeleteDiscardsInactiveDevice(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	_, err := tp.Create(ctx, "full", 32*MiB)
	require.NoError(t, err)
	path, err := tp.Activate(ctx, "full")
	require.NoError(t, err)
	writeFile(t, path, 0, pattern(3, 16*MiB))
	require.NoError(t, tp.Deactivate(ctx, "full", false))
	before, err := tp.Status(ctx)
	require.NoError(t, err)
	require.GreaterOrEqual(t, before.DataUsed, int64(16*MiB))

	require.NoError(t, tp.Delete(ctx, "full", DeleteOptions{Discard: true}))
	after, err := tp.Status(ctx)
	require.NoError(t, err)
	assert.Less(t, after.DataUsed, before.DataUsed-8*MiB, "discarded blocks are free again")
	_, err = tp.dm.Info(tp.dmName("full"))
	assert.True(t, devmapper.IsNotFound(err), "no dm device left: %v", err)
	_, err = tp.Get("full")
	assert.ErrorIs(t, err, ErrNotFound)
	assertPoolMatchesRecords(t, tp.Pool)
}

// TestGrowRefusals: Grow refuses to shrink a loopback pool and to grow an
// external pool or a pool over devices by size; nothing changes.
func TestGrowRefusals(t *testing.T) {
	ctx := context.Background()
	t.Run("loopback", func(t *testing.T) {
		tp := openPool(t, nil)
		before, err := tp.Status(ctx)
		require.NoError(t, err)
		assert.ErrorContains(t, tp.Grow(ctx, 256*MiB, 0), "shrinking")
		assert.ErrorContains(t, tp.Grow(ctx, 0, 8*MiB), "shrinking")
		after, err := tp.Status(ctx)
		require.NoError(t, err)
		assert.Equal(t, before.DataTotal, after.DataTotal)
		assert.Equal(t, before.MetadataTotal, after.MetadataTotal)
		// Growing to the same size keeps the pool as it is.
		require.NoError(t, tp.Grow(ctx, 0, 0))
		after, err = tp.Status(ctx)
		require.NoError(t, err)
		assert.Equal(t, before.DataTotal, after.DataTotal)
	})
	t.Run("devices", func(t *testing.T) {
		testenv.RequireDM(t)
		c, err := devmapper.Open(devmapper.Options{})
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		meta := testenv.Suffix(t) + "-growmeta"
		data := testenv.Suffix(t) + "-growdata"
		linearOverLoop(t, c, meta, 16*MiB)
		linearOverLoop(t, c, data, 128*MiB)
		zero := 0
		p, err := Open(ctx, Options{Root: filepath.Join(t.TempDir(), "pool"),
			DataDevice: c.NodePath(data), MetadataDevice: c.NodePath(meta), MinFreeSpacePercent: &zero})
		require.NoError(t, err)
		defer func() { assert.NoError(t, p.Shutdown(ctx)) }()
		st, err := p.Status(ctx)
		require.NoError(t, err)
		assert.Equal(t, c.NodePath(data), st.DataDevice)
		assert.ErrorContains(t, p.Grow(ctx, 256*MiB, 0), "grow the devices")
		require.NoError(t, p.Grow(ctx, 0, 0), "nothing grew: the table is reloaded as it is")
		after, err := p.Status(ctx)
		require.NoError(t, err)
		assert.Equal(t, st.DataTotal, after.DataTotal)
		assert.Equal(t, devmapper.PoolReadWrite, after.Mode)
	})
	t.Run("external", func(t *testing.T) {
		testenv.RequireDM(t)
		c, err := devmapper.Open(devmapper.Options{})
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		linearOverLoop(t, c, testenv.Suffix(t)+"-xmeta", 16*MiB)
		linearOverLoop(t, c, testenv.Suffix(t)+"-xdata", 128*MiB)
		mi, err := c.Info(testenv.Suffix(t) + "-xmeta")
		require.NoError(t, err)
		di, err := c.Info(testenv.Suffix(t) + "-xdata")
		require.NoError(t, err)
		pool := testenv.Suffix(t) + "-xpool"
		_, err = c.Activate(pool, "", devmapper.Table{{Length: 128 * MiB / 512,
			Params: devmapper.ThinPoolParams{Metadata: mi.Dev, Data: di.Dev, BlockSize: 128}}}, false)
		require.NoError(t, err)
		t.Cleanup(func() { assert.NoError(t, c.Remove(pool, devmapper.RemoveOptions{})) })
		zero := 0
		p, err := Open(ctx, Options{Root: filepath.Join(t.TempDir(), "ext"), PoolDevice: pool, MinFreeSpacePercent: &zero})
		require.NoError(t, err)
		defer func() { assert.NoError(t, p.Shutdown(ctx)) }()
		assert.ErrorContains(t, p.Grow(ctx, 0, 0), "external")
		tab, err := c.Table(pool)
		require.NoError(t, err)
		assert.Equal(t, devmapper.Sectors(128*MiB/512), tab.Length(), "the external pool is untouched")
	})
}

// TestOpenReplacesHalfMadePool: a crash while the pool device itself was
// made leaves a dm device with no table; Open removes it, makes the pool
// and the devices come back with their data.
func TestOpenReplacesHalfMadePool(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	_, err := tp.Create(ctx, "dev", 8*MiB)
	require.NoError(t, err)
	path, err := tp.Activate(ctx, "dev")
	require.NoError(t, err)
	data := pattern(7, 64<<10)
	writeFile(t, path, 0, data)
	name := tp.name
	opts := tp.opts
	require.NoError(t, tp.Shutdown(ctx))

	c, err := devmapper.Open(devmapper.Options{})
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Create(name, "")
	require.NoError(t, err)

	p, err := Open(ctx, opts)
	require.NoError(t, err)
	tp.Pool = p
	info, err := c.Info(name)
	require.NoError(t, err)
	assert.True(t, info.LiveTable, "the pool has its table")
	path, err = p.Activate(ctx, "dev")
	require.NoError(t, err)
	assert.Equal(t, data, readFile(t, path, 0, len(data)))
	assertPoolMatchesRecords(t, p)
}

// TestRecoverySettlesEveryState writes into the store the records a crash
// can leave, in every state, with and without their thin device in the
// pool, then reopens: each is rolled forward, rolled back, finished or
// marked faulty, and the pool and the records agree.
func TestRecoverySettlesEveryState(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	_, err := tp.Create(ctx, "keep", 8*MiB)
	require.NoError(t, err)
	k := tp.txid

	// inject stores a record in state s at transaction id txid; withThin
	// also makes its thin id in the pool (as a message that got through).
	inject := func(name string, s State, txid uint64, withThin bool) uint32 {
		t.Helper()
		r := &record{Name: name, Size: 8 * MiB, State: s, TxID: txid, Created: time.Now().UTC()}
		require.NoError(t, tp.st.update(func(tx txn) error {
			id, err := allocID(tx)
			if err != nil {
				return err
			}
			r.ID = id
			return putRecord(tx, r)
		}))
		if withThin {
			_, err := tp.dm.Message(tp.name, 0, fmt.Sprintf("create_thin %d", r.ID))
			require.NoError(t, err)
		}
		return r.ID
	}
	inject("created-then-crash", StateCreating, k, true)  // the pool has it: roll forward
	inject("create-failed", StateCreating, k, false)      // the pool has not: drop
	inject("created-newer", StateCreating, k+50, true)    // past the pool's id, but the pool has it: roll forward
	inject("deleting", StateDeleting, k, true)            // finish the delete
	inject("deferred", StateDeferredDelete, k, true)      // closed now: delete at Open
	inject("ready-newer", StateReady, k+50, true)         // newer than the pool, but there
	lost := inject("ready-lost", StateReady, k+50, false) // newer than the pool and lost
	// A stray dm device of the pool (a half-made activation of a record
	// that is gone) is removed.
	stray := tp.dmName("gone")
	_, err = tp.dm.Create(stray, "")
	require.NoError(t, err)
	require.NoError(t, tp.Close())
	// And the store agreed on a transaction id the pool never reached
	// (power lost before the pool committed its metadata).
	st, err := openStore(filepath.Join(tp.opts.Root, "metadata.db"))
	require.NoError(t, err)
	require.NoError(t, st.update(func(tx txn) error { return putU64(tx.Bucket(bucketMeta), keyTxID, k+60) }))
	require.NoError(t, st.close())

	p, err := Open(ctx, tp.opts)
	require.NoError(t, err)
	tp.Pool = p
	assert.Equal(t, []string{"created-newer", "created-then-crash", "keep", "ready-lost", "ready-newer"}, deviceNames(t, p))
	for name, want := range map[string]State{"created-newer": StateReady, "created-then-crash": StateReady, "keep": StateReady, "ready-newer": StateReady, "ready-lost": StateFaulty} {
		d, err := p.Get(name)
		require.NoError(t, err)
		assert.Equal(t, want, d.State, name)
	}
	d, err := p.Get("ready-lost")
	require.NoError(t, err)
	assert.Contains(t, d.Fault, fmt.Sprintf("lost thin id %d", lost))
	checkFaultyStatus(t, p, "ready-lost")
	_, err = p.Activate(ctx, "ready-lost")
	assert.ErrorIs(t, err, ErrFaulty)
	_, err = p.dm.Info(stray)
	assert.True(t, devmapper.IsNotFound(err), "stray dm device removed: %v", err)
	assertPoolMatchesRecords(t, p)

	// The rolled-forward and the newer device work.
	for _, name := range []string{"created-then-crash", "created-newer", "ready-newer"} {
		path, err := p.Activate(ctx, name)
		require.NoError(t, err, name)
		writeFile(t, path, 0, pattern(1, 4096))
	}
	// A faulty device can be deleted, and then all agrees.
	require.NoError(t, p.Delete(ctx, "ready-lost", DeleteOptions{}))
	_, err = p.Get("ready-lost")
	assert.ErrorIs(t, err, ErrNotFound)
	// New devices get transaction ids past everything the store handed out.
	before := p.issued
	_, err = p.Create(ctx, "after", 8*MiB)
	require.NoError(t, err)
	assert.Greater(t, p.issued, max(before, k+60))
	assertPoolMatchesRecords(t, p)
}

// TestOpenRefusesWrongDevices: devices that are not block devices, a pool
// device that does not exist or is not a thin pool are refused by name,
// and leave no pool behind.
func TestOpenRefusesWrongDevices(t *testing.T) {
	testenv.RequireDM(t)
	ctx := context.Background()
	zero := 0
	dir := t.TempDir()
	file := filepath.Join(dir, "plain")
	require.NoError(t, os.WriteFile(file, make([]byte, 4096), 0o600))
	_, err := Open(ctx, Options{Root: filepath.Join(dir, "a"), DataDevice: file, MetadataDevice: file, MinFreeSpacePercent: &zero})
	assert.ErrorContains(t, err, "is not a block device")
	_, err = Open(ctx, Options{Root: filepath.Join(dir, "b"), DataDevice: file, MetadataDevice: filepath.Join(dir, "none"), MinFreeSpacePercent: &zero})
	assert.ErrorIs(t, err, os.ErrNotExist)

	c, err := devmapper.Open(devmapper.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	_, err = Open(ctx, Options{Root: filepath.Join(dir, "c"), PoolDevice: testenv.Suffix(t) + "-nopool", MinFreeSpacePercent: &zero})
	assert.True(t, devmapper.IsNotFound(err), "missing pool device: %v", err)
	linear := testenv.Suffix(t) + "-notpool"
	linearOverLoop(t, c, linear, 16*MiB)
	_, err = Open(ctx, Options{Root: filepath.Join(dir, "d"), PoolDevice: linear, MinFreeSpacePercent: &zero})
	assert.ErrorContains(t, err, "not thin-pool")
	tab, err := c.Table(linear)
	require.NoError(t, err)
	assert.Equal(t, "linear", tab[0].Params.TargetType(), "the device is untouched")
}

// TestLabelsRefused: an empty label key is refused on create and on
// SetLabels, and nothing is made or changed.
func TestLabelsRefused(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	_, err := tp.Create(ctx, "l", 8*MiB, WithLabels(map[string]string{"": "x"}))
	assert.ErrorContains(t, err, "empty key")
	_, err = tp.Get("l")
	assert.ErrorIs(t, err, ErrNotFound)
	_, err = tp.Create(ctx, "l", 8*MiB, WithLabels(map[string]string{"a": "1"}))
	require.NoError(t, err)
	assert.ErrorContains(t, tp.SetLabels(ctx, "l", map[string]string{"": "x", "a": "2"}), "empty key")
	assert.ErrorIs(t, tp.SetLabels(ctx, "missing", map[string]string{"a": "2"}), ErrNotFound)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	assert.ErrorIs(t, tp.SetLabels(cctx, "l", map[string]string{"a": "2"}), context.Canceled)
	d, err := tp.Get("l")
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"a": "1"}, d.Labels)
}

// TestDeleteRacesAnOpener: a device opened after Delete checked that it
// was closed, but before its dm device is removed, is not deleted: the
// record goes back to ready (ErrBusy), or with Deferred to deferred-delete.
func TestDeleteRacesAnOpener(t *testing.T) {
	for _, opts := range []DeleteOptions{{}, {Discard: true}, {Deferred: true}} {
		t.Run(fmt.Sprintf("discard=%v,deferred=%v", opts.Discard, opts.Deferred), func(t *testing.T) {
			tp := openPool(t, nil)
			ctx := context.Background()
			_, err := tp.Create(ctx, "raced", 8*MiB)
			require.NoError(t, err)
			path, err := tp.Activate(ctx, "raced")
			require.NoError(t, err)
			data := pattern(13, 64<<10)
			writeFile(t, path, 0, data)
			var f *os.File
			tp.hook = func(step string) {
				if step == "delete:marked" && f == nil {
					f, err = os.Open(path)
					require.NoError(t, err)
				}
			}
			err = tp.Delete(ctx, "raced", opts)
			tp.hook = nil
			require.NotNil(t, f, "the opener ran")
			d, gerr := tp.Get("raced")
			require.NoError(t, gerr)
			if opts.Deferred {
				require.NoError(t, err)
				assert.Equal(t, StateDeferredDelete, d.State)
			} else {
				assert.ErrorIs(t, err, ErrBusy)
				assert.Equal(t, StateReady, d.State, "the record is put back")
			}
			assert.Equal(t, data, readFile(t, path, 0, len(data)), "the opener reads its data")
			require.NoError(t, f.Close())
			if opts.Deferred {
				require.Eventually(t, func() bool { return tp.ProcessDeferred(ctx) == nil }, 5*time.Second, 20*time.Millisecond)
				_, err = tp.Get("raced")
				assert.ErrorIs(t, err, ErrNotFound)
			} else {
				require.NoError(t, tp.Delete(ctx, "raced", opts))
			}
			assertPoolMatchesRecords(t, tp.Pool)
		})
	}
}
