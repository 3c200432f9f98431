package thinpool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/devmapper"
	"github.com/dmthin/dmthin/internal/testenv"
)

// These tests build real pools on loop devices: they need root and a kernel
// with dm-thin-pool (hack/vm.sh test runs them in a VM).

const (
	MiB = 1 << 20
)

type testPool struct {
	*Pool
	root string
}

func smallOptions(root string) Options {
	zero := 0
	return Options{
		Root:                root,
		LoopDataSize:        512 * MiB,
		LoopMetadataSize:    16 * MiB,
		MinFreeSpacePercent: &zero,
	}
}

// openPool opens a fresh loopback pool under a new directory and makes sure
// it is torn down (devices, pool, loop devices) and its metadata checked
// with thin_check at the end.
func openPool(t *testing.T, mod func(*Options)) *testPool {
	t.Helper()
	testenv.RequireDM(t)
	root := filepath.Join(t.TempDir(), "pool")
	o := smallOptions(root)
	if mod != nil {
		mod(&o)
	}
	p, err := Open(context.Background(), o)
	require.NoError(t, err)
	tp := &testPool{Pool: p, root: root}
	t.Cleanup(func() { tp.teardown(t) })
	return tp
}

// teardown removes everything the pool made, then runs thin_check.
func (tp *testPool) teardown(t *testing.T) {
	t.Helper()
	p := tp.Pool
	if p.closed {
		// Reopen to tear down what a closed pool left.
		np, err := Open(context.Background(), p.opts)
		if err != nil {
			t.Errorf("teardown reopen: %v", err)
			return
		}
		p = np
	}
	meta := p.metaPath
	isLoop := p.dataLoop != nil
	assert.NoError(t, p.Shutdown(context.Background()), "shutdown")
	if isLoop {
		thinCheck(t, meta)
	}
}

func thinCheck(t *testing.T, metadata string) {
	t.Helper()
	var fs unix.Statfs_t
	if unix.Statfs(metadata, &fs) == nil && fs.Type == unix.TMPFS_MAGIC {
		// thin_check opens with O_DIRECT, which tmpfs refuses before
		// Linux 6.6: check a copy.
		data, err := os.ReadFile(metadata)
		require.NoError(t, err)
		metadata = filepath.Join(t.TempDir(), "metadata")
		require.NoError(t, os.WriteFile(metadata, data, 0o600))
	}
	out, err := exec.Command("thin_check", metadata).CombinedOutput()
	assert.NoError(t, err, "thin_check %s: %s", metadata, out)
}

func writeFile(t *testing.T, path string, off int64, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(data, off)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())
}

func readFile(t *testing.T, path string, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	// Drop cached pages so the read goes to the device.
	_, _, _ = unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKFLSBUF, 0)
	b := make([]byte, n)
	_, err = f.ReadAt(b, off)
	require.NoError(t, err)
	return b
}

func pattern(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*31)
	}
	return b
}

func TestPoolLifecycle(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()

	base, err := tp.Create(ctx, "base", 64*MiB)
	require.NoError(t, err)
	assert.Equal(t, StateReady, base.State)
	_, err = tp.Create(ctx, "base", 64*MiB)
	assert.ErrorIs(t, err, ErrExists)

	path, err := tp.Activate(ctx, "base")
	require.NoError(t, err)
	path2, err := tp.Activate(ctx, "base")
	require.NoError(t, err)
	assert.Equal(t, path, path2, "activate is idempotent")
	data := pattern(1, MiB)
	writeFile(t, path, 8*MiB, data)

	// Snapshot of an active origin, then of the snapshot, and bigger.
	s1, err := tp.Snapshot(ctx, "s1", "base", 0)
	require.NoError(t, err)
	assert.Equal(t, int64(64*MiB), s1.Size)
	assert.Equal(t, "base", s1.Parent)
	s2, err := tp.Snapshot(ctx, "s2", "s1", 128*MiB)
	require.NoError(t, err)
	assert.Equal(t, int64(128*MiB), s2.Size)
	_, err = tp.Snapshot(ctx, "small", "s1", 32*MiB)
	assert.Error(t, err, "smaller than origin")
	_, err = tp.Snapshot(ctx, "orphan", "nope", 0)
	assert.ErrorIs(t, err, ErrNotFound)
	_, err = tp.Create(ctx, "../x", MiB)
	assert.ErrorIs(t, err, ErrInvalidName)

	p2, err := tp.Activate(ctx, "s2")
	require.NoError(t, err)
	assert.Equal(t, data, readFile(t, p2, 8*MiB, MiB), "snapshot of snapshot sees base's data")
	writeFile(t, p2, 8*MiB, pattern(9, MiB))
	assert.Equal(t, data, readFile(t, path, 8*MiB, MiB), "origin untouched")
	writeFile(t, p2, 100*MiB, pattern(3, MiB)) // past the origin's size

	d, err := tp.Get("s2")
	require.NoError(t, err)
	assert.True(t, d.Active)
	assert.Equal(t, p2, d.Path)
	assert.GreaterOrEqual(t, d.MappedBytes, int64(2*MiB))
	l, err := tp.Lookup("s2")
	require.NoError(t, err)
	assert.Equal(t, d.ID, l.ID)
	assert.Equal(t, d.Size, l.Size)
	assert.False(t, l.Active, "Lookup does not ask the kernel")

	list, err := tp.List()
	require.NoError(t, err)
	assert.Len(t, list, 3)

	// Busy: an open device cannot be deactivated or deleted.
	f, err := os.Open(p2)
	require.NoError(t, err)
	err = tp.Deactivate(ctx, "s2", false)
	assert.ErrorIs(t, err, ErrBusy)
	err = tp.Delete(ctx, "s2", DeleteOptions{})
	assert.ErrorIs(t, err, ErrBusy)
	// Deferred delete: marked, done once closed.
	require.NoError(t, tp.Delete(ctx, "s2", DeleteOptions{Deferred: true}))
	d, err = tp.Get("s2")
	require.NoError(t, err)
	assert.True(t, d.DeferredDelete)
	st, err := tp.Status(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1, st.DeferredDeletes)
	require.NoError(t, f.Close())
	require.Eventually(t, func() bool { return tp.ProcessDeferred(ctx) == nil && notFound(tp.Get("s2")) }, 5*time.Second, 50*time.Millisecond)

	// Deleting the origin leaves its snapshot intact.
	require.NoError(t, tp.Delete(ctx, "base", DeleteOptions{}))
	ps1, err := tp.Activate(ctx, "s1")
	require.NoError(t, err)
	assert.Equal(t, data, readFile(t, ps1, 8*MiB, MiB))
	_, err = os.Stat(path)
	assert.ErrorIs(t, err, os.ErrNotExist, "node of the deleted device is gone")

	// Resize grows an active device.
	require.NoError(t, tp.Resize(ctx, "s1", 96*MiB))
	size, err := devSize(tp.dev(t, ps1))
	require.NoError(t, err)
	assert.Equal(t, int64(96*MiB), size)
	assert.Error(t, tp.Resize(ctx, "s1", 32*MiB))

	st, err = tp.Status(ctx)
	require.NoError(t, err)
	assert.Equal(t, devmapper.PoolReadWrite, st.Mode)
	assert.Equal(t, 1, st.Devices)
	assert.Equal(t, int64(512*MiB), st.DataTotal)
	assert.Greater(t, st.DataUsed, int64(0))
	assert.Equal(t, int64(64<<10), st.BlockSize)
	assert.NotEmpty(t, st.DataFile)
	assertPoolMatchesRecords(t, tp.Pool)
}

func notFound(_ Device, err error) bool { return errors.Is(err, ErrNotFound) }

func TestPoolReopenKeepsDevicesAndData(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	_, err := tp.Create(ctx, "keep", 32*MiB)
	require.NoError(t, err)
	path, err := tp.Activate(ctx, "keep")
	require.NoError(t, err)
	writeFile(t, path, 0, pattern(5, MiB))
	require.NoError(t, tp.Close())
	assert.ErrorIs(t, func() error { _, err := tp.Create(ctx, "x", MiB); return err }(), ErrClosed)

	// Same process, new Open: devices are found, not made again.
	p, err := Open(ctx, tp.opts)
	require.NoError(t, err)
	tp.Pool = p
	d, err := p.Get("keep")
	require.NoError(t, err)
	assert.True(t, d.Active)
	assert.Equal(t, pattern(5, MiB), readFile(t, d.Path, 0, MiB))

	// Full shutdown, then Open brings the pool back from its files.
	require.NoError(t, p.Shutdown(ctx))
	p, err = Open(ctx, tp.opts)
	require.NoError(t, err)
	tp.Pool = p
	d, err = p.Get("keep")
	require.NoError(t, err)
	assert.False(t, d.Active)
	path, err = p.Activate(ctx, "keep")
	require.NoError(t, err)
	assert.Equal(t, pattern(5, MiB), readFile(t, path, 0, MiB))
	// A second opener of the same root is refused while this one is open.
	_, err = Open(ctx, tp.opts)
	assert.ErrorIs(t, err, ErrLocked)
}

func TestDeleteWithDiscardGivesSpaceBack(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	_, err := tp.Create(ctx, "big", 128*MiB)
	require.NoError(t, err)
	path, err := tp.Activate(ctx, "big")
	require.NoError(t, err)
	for off := int64(0); off < 64*MiB; off += 4 * MiB {
		writeFile(t, path, off, pattern(byte(off), 4*MiB))
	}
	allocated := func() int64 {
		var st unix.Stat_t
		require.NoError(t, unix.Stat(tp.dataPath, &st))
		return st.Blocks * 512
	}
	before := allocated()
	assert.GreaterOrEqual(t, before, int64(64*MiB))
	require.NoError(t, tp.Delete(ctx, "big", DeleteOptions{Discard: true}))
	after := allocated()
	t.Logf("data file allocated: %d MiB before, %d MiB after delete with discard", before/MiB, after/MiB)
	assert.Less(t, after, before-56*MiB, "discard punched the blocks out of the loop file")
	assertPoolMatchesRecords(t, tp.Pool)
}

func TestOutOfDataSpaceThenGrow(t *testing.T) {
	tp := openPool(t, func(o *Options) { o.LoopDataSize = 32 * MiB })
	ctx := context.Background()
	_, err := tp.Create(ctx, "fill", 128*MiB)
	require.NoError(t, err)
	path, err := tp.Activate(ctx, "fill")
	require.NoError(t, err)

	// O_DIRECT, so the block layer's errno reaches the writer (buffered
	// writeback reports any failure as EIO).
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT, 0)
	require.NoError(t, err)
	buf, err := unix.Mmap(-1, 0, MiB, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	require.NoError(t, err)
	defer unix.Munmap(buf)
	copy(buf, pattern(7, MiB))
	start := time.Now()
	var werr error
	for off := int64(0); off < 64*MiB && werr == nil; off += MiB {
		_, werr = f.WriteAt(buf, off)
	}
	require.NoError(t, f.Close())
	t.Logf("write into the full pool failed after %s: %v", time.Since(start), werr)
	assert.ErrorIs(t, werr, unix.ENOSPC, "error_if_no_space fails writes")
	assert.Less(t, time.Since(start), 30*time.Second, "no hang")

	st, err := tp.Status(ctx)
	require.NoError(t, err)
	assert.Equal(t, devmapper.PoolOutOfDataSpace, st.Mode)
	_, err = tp.Create(ctx, "more", MiB)
	assert.ErrorIs(t, err, ErrPoolFull)
	var se *SpaceError
	require.ErrorAs(t, err, &se)
	assert.True(t, se.OutOfData)

	require.NoError(t, tp.Grow(ctx, 256*MiB, 0))
	st, err = tp.Status(ctx)
	require.NoError(t, err)
	assert.Equal(t, devmapper.PoolReadWrite, st.Mode)
	assert.Equal(t, int64(256*MiB), st.DataTotal)
	writeFile(t, path, 40*MiB, buf)
	assert.Equal(t, buf, readFile(t, path, 40*MiB, MiB))
	_, err = tp.Create(ctx, "more", MiB)
	assert.NoError(t, err)
}

func TestMinFreeSpaceRefusesCreate(t *testing.T) {
	tp := openPool(t, func(o *Options) {
		o.LoopDataSize = 64 * MiB
		pct := 50
		o.MinFreeSpacePercent = &pct
	})
	ctx := context.Background()
	_, err := tp.Create(ctx, "a", 64*MiB)
	require.NoError(t, err)
	path, err := tp.Activate(ctx, "a")
	require.NoError(t, err)
	writeFile(t, path, 0, pattern(1, 40*MiB))
	_, err = tp.Create(ctx, "b", MiB)
	var se *SpaceError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, "data", se.What)
	assert.Contains(t, err.Error(), "minimum free is 32MiB")
	_, err = tp.Get("b")
	assert.ErrorIs(t, err, ErrNotFound, "nothing recorded")
}

func TestPoolEvents(t *testing.T) {
	tp := openPool(t, func(o *Options) { o.LoopDataSize = 64 * MiB; o.LowWaterMark = 60 * MiB })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := tp.Status(ctx)
	require.NoError(t, err)
	_, err = tp.Create(ctx, "ev", 32*MiB)
	require.NoError(t, err)
	path, err := tp.Activate(ctx, "ev")
	require.NoError(t, err)
	got := make(chan Status, 1)
	go func() {
		s, err := tp.WaitEvent(ctx, st.EventNr)
		assert.NoError(t, err)
		got <- s
	}()
	writeFile(t, path, 0, pattern(2, 8*MiB)) // crosses the low-water mark
	select {
	case s := <-got:
		assert.Greater(t, s.EventNr, st.EventNr)
		assert.Greater(t, s.DataUsed, int64(0))
	case <-ctx.Done():
		t.Fatal("no pool event after crossing the low-water mark")
	}
}

func TestIDsMatchPoolMetadata(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	for i := 0; i < 5; i++ {
		_, err := tp.Create(ctx, fmt.Sprintf("d%d", i), MiB)
		require.NoError(t, err)
	}
	_, err := tp.Snapshot(ctx, "snap", "d1", 0)
	require.NoError(t, err)
	require.NoError(t, tp.Delete(ctx, "d3", DeleteOptions{}))
	assertPoolMatchesRecords(t, tp.Pool)
	want := recordIDs(t, tp.Pool)
	opts := tp.opts
	require.NoError(t, tp.Shutdown(ctx))
	assert.Equal(t, want, testenv.ThinIDs(t, tp.metaPath))
	p, err := Open(ctx, opts)
	require.NoError(t, err)
	tp.Pool = p
}

func recordIDs(t *testing.T, p *Pool) []uint32 {
	t.Helper()
	recs, err := p.st.all()
	require.NoError(t, err)
	var ids []uint32
	for _, r := range recs {
		ids = append(ids, r.ID)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

var _ = bytes.Equal

// dev returns the device number of a block node.
func (tp *testPool) dev(t *testing.T, path string) devmapper.Dev {
	t.Helper()
	d, err := devOf(path)
	require.NoError(t, err)
	return d
}
