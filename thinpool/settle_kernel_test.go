//go:build dmthin_kernel

package thinpool

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/devmapper"
	"github.com/dmthin/dmthin/internal/devlabel"
)

// What a process that died between two ioctls leaves in the kernel, made by
// hand here, and what the next Open (with the store's lock free: the
// process has exited) makes of it: a suspended pool, an inactive table
// loaded on the pool, a suspended thin device, a thin device whose record
// is bigger than its table (a Resize cut short).
func TestOpenSettlesHalfDoneKernelState(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	_, err := tp.Create(ctx, "held", 16*MiB)
	require.NoError(t, err)
	heldPath, err := tp.Activate(ctx, "held")
	require.NoError(t, err)
	_, err = tp.Create(ctx, "small", 16*MiB)
	require.NoError(t, err)
	_, err = tp.Activate(ctx, "small")
	require.NoError(t, err)
	data := pattern(3, MiB)
	writeFile(t, heldPath, 0, data)
	opts := tp.opts
	dm, name, heldDM, smallDM := tp.dm, tp.name, tp.dmName("held"), tp.dmName("small")
	poolTab, err := dm.Table(name)
	require.NoError(t, err)
	// The record says 32 MiB, the live table 16 MiB (Resize commits
	// first, then reloads).
	rec, err := tp.st.get("small")
	require.NoError(t, err)
	rec.Size = 32 * MiB
	require.NoError(t, tp.st.update(func(tx txn) error { return putRecord(tx, rec) }))
	require.NoError(t, tp.Close())

	c, err := devmapper.Open(devmapper.Options{})
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.Suspend(heldDM, devmapper.SuspendOptions{}))
	require.NoError(t, c.Load(name, poolTab, false))
	p, err := Open(ctx, opts)
	require.NoError(t, err, "a pool with an inactive table loaded")
	tp.Pool = p
	info, err := c.Info(name)
	require.NoError(t, err)
	assert.False(t, info.InactiveTable, "Open cleared the inactive table of the pool")
	info, err = c.Info(heldDM)
	require.NoError(t, err)
	assert.False(t, info.Suspended, "Open resumed the suspended thin device")
	assert.Equal(t, data, readFile(t, heldPath, 0, MiB))
	tab, err := c.Table(smallDM)
	require.NoError(t, err)
	assert.Equal(t, devmapper.Sectors(32*MiB/512), tab.Length(), "the table follows its record's size")
	require.NoError(t, p.Close())

	// The pool itself left suspended.
	require.NoError(t, c.Suspend(name, devmapper.SuspendOptions{}))
	p, err = Open(ctx, opts)
	require.NoError(t, err, "a suspended pool")
	tp.Pool = p
	info, err = c.Info(name)
	require.NoError(t, err)
	assert.False(t, info.Suspended, "Open resumed the pool")
	writeFile(t, heldPath, MiB, data) // I/O flows again
	assert.Equal(t, data, readFile(t, heldPath, MiB, MiB))
	st, err := p.Status(ctx)
	require.NoError(t, err)
	assert.Empty(t, st.FaultyDevices)
	assertPoolMatchesRecords(t, p)
}

// A reload whose resume fails puts the old table back: the device keeps
// its size, is not left suspended, and Resize puts the record back too.
func TestResizeRestoresOldTableWhenResumeFails(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	_, err := tp.Create(ctx, "d", 16*MiB)
	require.NoError(t, err)
	path, err := tp.Activate(ctx, "d")
	require.NoError(t, err)
	failed := 0
	tp.resumeFault = func(dm string) error {
		if dm == tp.dmName("d") && failed == 0 {
			failed++
			return unix.EIO
		}
		return nil
	}
	err = tp.Resize(ctx, "d", 32*MiB)
	tp.resumeFault = nil
	require.Error(t, err)
	assert.ErrorIs(t, err, unix.EIO)
	assert.ErrorContains(t, err, "old table restored")
	info, err := tp.dm.Info(tp.dmName("d"))
	require.NoError(t, err)
	assert.False(t, info.Suspended)
	tab, err := tp.dm.Table(tp.dmName("d"))
	require.NoError(t, err)
	assert.Equal(t, devmapper.Sectors(16*MiB/512), tab.Length())
	d, err := tp.Get("d")
	require.NoError(t, err)
	assert.Equal(t, int64(16*MiB), d.Size, "the record was put back")
	writeFile(t, path, 0, pattern(1, MiB))

	// Without the fault the same resize works.
	require.NoError(t, tp.Resize(ctx, "d", 32*MiB))
	tab, err = tp.dm.Table(tp.dmName("d"))
	require.NoError(t, err)
	assert.Equal(t, devmapper.Sectors(32*MiB/512), tab.Length())
	assert.NoError(t, tp.Resize(ctx, "d", 32*MiB), "same size: nothing to do")
	assert.ErrorContains(t, tp.Resize(ctx, "d", 16*MiB), "shrinking")
}

// Retire of an open device whose tombstone name is taken in the kernel
// (the rename fails) and which cannot be deactivated (it is open): the
// record is put back as it was, the device keeps working under its name.
func TestRetirePutsBackWhatItCannotFree(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	_, err := tp.Create(ctx, "x", 16*MiB)
	require.NoError(t, err)
	path, err := tp.Activate(ctx, "x")
	require.NoError(t, err)
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	d, err := tp.Get("x")
	require.NoError(t, err)
	squatter := tp.dmName(retiredName(d.ID))
	_, err = tp.dm.Create(squatter, "")
	require.NoError(t, err)
	t.Cleanup(func() { _ = tp.dm.Remove(squatter, devmapper.RemoveOptions{}) })

	_, err = tp.Retire(ctx, "x", RetireOptions{AllowOpen: true})
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrBusy, "the device could not be deactivated either")
	back, err := tp.Get("x")
	require.NoError(t, err, "the record is back under its name")
	assert.Equal(t, StateReady, back.State)
	assert.True(t, back.Active)
	left, err := tp.Retired()
	require.NoError(t, err)
	assert.Empty(t, left, "no tombstone record")
	require.NoError(t, f.Close())
	require.NoError(t, tp.dm.Remove(squatter, devmapper.RemoveOptions{}))
	_, err = tp.Retire(ctx, "x", RetireOptions{})
	require.NoError(t, err, "with the name free, the retire works")
}

// A delete whose pool message fails puts the record back in its state:
// the device is still there and can be deleted later.
func TestDeleteMessageFailurePutsRecordBack(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	_, err := tp.Create(ctx, "v", 16*MiB)
	require.NoError(t, err)
	tp.messageFault = func(msg string) error {
		if len(msg) > 6 && msg[:6] == "delete" {
			return unix.EIO
		}
		return nil
	}
	err = tp.Delete(ctx, "v", DeleteOptions{})
	tp.messageFault = nil
	require.Error(t, err)
	assert.ErrorIs(t, err, unix.EIO)
	d, err := tp.Get("v")
	require.NoError(t, err, "the device is still there")
	assert.Contains(t, []State{StateReady, StateDeleting}, d.State)
	require.NoError(t, tp.Delete(ctx, "v", DeleteOptions{}))
	_, err = tp.Get("v")
	assert.ErrorIs(t, err, ErrNotFound)
	assertPoolMatchesRecords(t, tp.Pool)
}

// A pool on a whole disk: Open remakes a linear device a crash left
// without a table, resumes one left suspended, and refuses a store or a
// disk that do not go together.
func TestDirectSettlesAndRefuses(t *testing.T) {
	ctx := context.Background()
	d := newDisk(t, 256*MiB)
	opts := directOptions(t, d.loop.Path())
	p := openDirect(t, opts)
	_, err := p.Create(ctx, "a", 16*MiB)
	require.NoError(t, err)
	path, err := p.Activate(ctx, "a")
	require.NoError(t, err)
	data := pattern(5, MiB)
	writeFile(t, path, 0, data)
	prefix := p.prefix
	require.NoError(t, p.Shutdown(ctx))

	c, err := devmapper.Open(devmapper.Options{})
	require.NoError(t, err)
	defer c.Close()
	// A create of the data linear device cut short: a device without a
	// table.
	_, err = c.Create(prefix+directDataSuffix, "")
	require.NoError(t, err)
	p, err = Open(ctx, opts)
	require.NoError(t, err, "a half-made linear device")
	path, err = p.Activate(ctx, "a")
	require.NoError(t, err)
	assert.Equal(t, data, readFile(t, path, 0, MiB))
	require.NoError(t, p.Close())

	// The data linear device left suspended (a reload of it cut short).
	require.NoError(t, c.Suspend(prefix+directDataSuffix, devmapper.SuspendOptions{}))
	p, err = Open(ctx, opts)
	require.NoError(t, err, "a suspended linear device")
	info, err := c.Info(prefix + directDataSuffix)
	require.NoError(t, err)
	assert.False(t, info.Suspended)
	assert.Equal(t, data, readFile(t, path, 0, MiB))
	require.NoError(t, p.Shutdown(ctx))

	// The label gone while the pool was down: the store has a pool on
	// the disk, so Open refuses to make an empty one.
	l, err := devlabel.Read(d.loop.Path())
	require.NoError(t, err)
	f, err := os.OpenFile(d.loop.Path(), os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(make([]byte, 4096), 0)
	require.NoError(t, errors.Join(err, f.Sync(), f.Close()))
	_, err = Open(ctx, opts)
	assert.ErrorContains(t, err, "has no dmthin label but the store")
	require.NoError(t, devlabel.Write(d.loop.Path(), l))

	// A loopback pool's store given a whole disk.
	lp := openPool(t, nil)
	lopts := lp.opts
	require.NoError(t, lp.Close())
	lopts.LoopDataSize, lopts.LoopMetadataSize, lopts.Device = 0, 0, d.loop.Path()
	_, err = Open(ctx, lopts)
	assert.ErrorIs(t, err, ErrPoolNotOurs)
	assert.ErrorContains(t, err, "not on a whole device")

	// Back as it was, it opens (openDirect's cleanup shuts it down).
	p = openDirect(t, opts)
	path, err = p.Activate(ctx, "a")
	require.NoError(t, err)
	assert.Equal(t, data, readFile(t, path, 0, MiB))
}

// A metadata snapshot a killed check left held (nobody holds its lock) is
// released by Open; one a running check holds (its lock held) is not.
func TestOpenReleasesLeftMetadataSnapshot(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	opts := tp.opts
	held := func() bool {
		ps, err := tp.poolStatus()
		require.NoError(t, err)
		return ps.HeldMetadataRoot != nil
	}
	_, err := tp.dm.Message(tp.name, 0, "reserve_metadata_snap")
	require.NoError(t, err)
	unlock, err := lockMetadataSnapshot(opts.Root)
	require.NoError(t, err)
	require.NoError(t, tp.Close())
	p, err := Open(ctx, opts)
	require.NoError(t, err)
	tp.Pool = p
	assert.True(t, held(), "a running check's snapshot is left alone")
	unlock()
	require.NoError(t, p.Close())
	p, err = Open(ctx, opts)
	require.NoError(t, err)
	tp.Pool = p
	assert.False(t, held(), "Open released the snapshot a killed check left")
	rep, err := p.Check(ctx)
	require.NoError(t, err)
	assert.True(t, rep.Healthy(), "%+v", rep)
}

// gc with discard of an orphan thin id that maps no block: nothing to
// discard, the id is deleted.
func TestRemoveEmptyOrphanWithDiscard(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	_, err := tp.dm.Message(tp.name, 0, "create_thin 4343")
	require.NoError(t, err)
	rep, err := tp.Check(ctx)
	require.NoError(t, err)
	require.Len(t, rep.Orphans(), 1)
	removed, err := tp.RemoveOrphans(ctx, rep.Orphans(), GCOptions{Discard: true, Progress: func(string, int64, int64) {
		t.Error("no progress for an orphan with nothing to discard")
	}})
	require.NoError(t, err)
	assert.Len(t, removed, 1)
	rep, err = tp.Check(ctx)
	require.NoError(t, err)
	assert.True(t, rep.Healthy(), "%+v", rep)
}

// A whole disk whose label was changed or wiped while the pool's own
// devices hold it (someone wrote to the disk under a running pool): Open
// refuses, naming what it found, and works again once the label is back.
func TestDirectRefusesAChangedLabelUnderItsDevices(t *testing.T) {
	ctx := context.Background()
	d := newDisk(t, 256*MiB)
	opts := directOptions(t, d.loop.Path())
	p, err := Open(ctx, opts)
	require.NoError(t, err)
	require.NoError(t, p.Close()) // its devices stay, holding the disk
	l, err := devlabel.Read(d.loop.Path())
	require.NoError(t, err)

	other := l
	other.UUID[0] ^= 0xff
	require.NoError(t, devlabel.Write(d.loop.Path(), other))
	_, err = Open(ctx, opts)
	assert.ErrorIs(t, err, ErrPoolNotOurs)
	assert.ErrorContains(t, err, "held by this pool's devices but holds the label")

	f, err := os.OpenFile(d.loop.Path(), os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(make([]byte, 4096), 0)
	require.NoError(t, errors.Join(err, f.Sync(), f.Close()))
	_, err = Open(ctx, opts)
	assert.ErrorContains(t, err, "the device is held by this pool's devices")

	require.NoError(t, devlabel.Write(d.loop.Path(), l))
	openDirect(t, opts) // shut down at the end of the test
}
