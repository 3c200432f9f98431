package thinpool

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/devmapper"
	"github.com/dmthin/dmthin/internal/testenv"
)

// directWrite writes chunk-sized patterns to the block device at path from
// offset from to to, with O_DIRECT so the device's errno reaches the
// writer. It returns the bytes written and the first error.
func directWrite(t *testing.T, path string, from, to, chunk int64) (int64, error) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT, 0)
	require.NoError(t, err)
	defer f.Close()
	buf, err := unix.Mmap(-1, 0, int(chunk), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	require.NoError(t, err)
	defer unix.Munmap(buf)
	var n int64
	for off := from; off < to; off += chunk {
		copy(buf, pattern(byte(off/chunk), int(chunk)))
		if _, err := f.WriteAt(buf, off); err != nil {
			return n, err
		}
		n += chunk
	}
	return n, nil
}

// poolParams reads the pool's live table.
func poolParams(t *testing.T, p *Pool) devmapper.ThinPoolParams {
	t.Helper()
	tab, err := p.dm.Table(p.name)
	require.NoError(t, err)
	require.Len(t, tab, 1)
	params, ok := tab[0].Params.(devmapper.ThinPoolParams)
	require.True(t, ok, "%v", tab)
	return params
}

func logged(hook *logtest.Hook, msg string) int {
	n := 0
	for _, e := range hook.AllEntries() {
		if strings.Contains(e.Message, msg) {
			n++
		}
	}
	return n
}

func growOptions(logger logrus.FieldLogger, g AutoGrow) func(*Options) {
	return func(o *Options) {
		o.LoopDataSize = 32 * MiB
		o.AutoGrow = &g
		o.Logger = logger
	}
}

// A writer that writes far more than the pool held at first succeeds: the
// pool grows on its low-water event, and queues writes that outrun the
// growth. Close leaves the table failing writes at once again.
func TestAutoGrowWritesPastInitialSize(t *testing.T) {
	logger, hook := logtest.NewNullLogger()
	tp := openPool(t, growOptions(logger, AutoGrow{ThresholdPercent: 50, StepPercent: 100, MaxDataSize: 512 * MiB}))
	ctx := context.Background()

	params := poolParams(t, tp.Pool)
	assert.False(t, params.Features.ErrorIfNoSpace, "a pool that can grow queues writes while it grows")
	assert.Equal(t, uint64(256), params.LowWaterMark, "the threshold: half of 512 blocks")

	_, err := tp.Create(ctx, "big", 256*MiB)
	require.NoError(t, err)
	path, err := tp.Activate(ctx, "big")
	require.NoError(t, err)
	start := time.Now()
	n, err := directWrite(t, path, 0, 160*MiB, MiB)
	require.NoError(t, err, "after %d MiB", n/MiB)
	t.Logf("wrote 160 MiB into a 32 MiB pool in %s", time.Since(start))
	assert.Equal(t, pattern(byte(100), MiB), readFile(t, path, 100*MiB, MiB))

	st, err := tp.Status(ctx)
	require.NoError(t, err)
	assert.Equal(t, devmapper.PoolReadWrite, st.Mode)
	assert.GreaterOrEqual(t, st.DataTotal, int64(160*MiB))
	assert.LessOrEqual(t, st.DataTotal, int64(512*MiB))
	fi, err := os.Stat(tp.dataPath)
	require.NoError(t, err)
	assert.Equal(t, st.DataTotal, fi.Size(), "the table covers the whole data file")
	params = poolParams(t, tp.Pool)
	assert.Equal(t, uint64(st.DataTotal/st.BlockSize/2), params.LowWaterMark, "the low-water mark follows the size")
	assert.GreaterOrEqual(t, logged(hook, "thin pool data grew"), 2, "each growth is logged")
	assertPoolMatchesRecords(t, tp.Pool)

	// Nobody grows a closed pool: its table fails writes again.
	opts := tp.opts
	require.NoError(t, tp.Close())
	c, err := devmapper.Open(devmapper.Options{})
	require.NoError(t, err)
	tab, err := c.Table(tp.name)
	require.NoError(t, c.Close())
	require.NoError(t, err)
	assert.True(t, tab[0].Params.(devmapper.ThinPoolParams).Features.ErrorIfNoSpace, "Close switched to error_if_no_space: %s", tab)
	// Reopened, it grows again: its use is above the threshold, and the
	// growth reaches the maximum, so the table fails writes at once.
	p, err := Open(ctx, opts)
	require.NoError(t, err)
	tp.Pool = p
	require.Eventually(t, func() bool {
		st, err := p.Status(ctx)
		return err == nil && st.DataTotal == 512*MiB
	}, 20*time.Second, 100*time.Millisecond)
	assert.True(t, poolParams(t, p).Features.ErrorIfNoSpace)
	assert.Equal(t, 1, logged(hook, "reached its maximum size"))
}

// At its maximum the pool fails writes with ENOSPC at once (no 60 s of
// queueing), stays healthy, and works again once space is freed.
func TestAutoGrowMaxGivesENOSPCPromptly(t *testing.T) {
	logger, hook := logtest.NewNullLogger()
	tp := openPool(t, growOptions(logger, AutoGrow{ThresholdPercent: 50, StepPercent: 100, MaxDataSize: 64 * MiB}))
	ctx := context.Background()
	_, err := tp.Create(ctx, "fill", 256*MiB)
	require.NoError(t, err)
	path, err := tp.Activate(ctx, "fill")
	require.NoError(t, err)
	start := time.Now()
	n, werr := directWrite(t, path, 0, 128*MiB, MiB)
	took := time.Since(start)
	t.Logf("write failed after %d MiB and %s: %v", n/MiB, took, werr)
	assert.ErrorIs(t, werr, unix.ENOSPC)
	assert.Less(t, took, 30*time.Second, "ENOSPC came at once, not after the kernel's 60 s of queueing")
	assert.GreaterOrEqual(t, n, int64(32*MiB), "the pool grew before it refused")

	st, err := tp.Status(ctx)
	require.NoError(t, err)
	assert.Equal(t, devmapper.PoolOutOfDataSpace, st.Mode, "full, not failed")
	assert.False(t, st.NeedsCheck)
	assert.True(t, st.ErrorIfNoSpace)
	assert.Equal(t, int64(64*MiB), st.DataTotal, "grown to the maximum, not past it")
	assert.True(t, poolParams(t, tp.Pool).Features.ErrorIfNoSpace)
	assert.Equal(t, 1, logged(hook, "reached its maximum size"))

	// Freeing space makes it usable again.
	require.NoError(t, tp.Delete(ctx, "fill", DeleteOptions{Discard: true}))
	require.Eventually(t, func() bool {
		st, err := tp.Status(ctx)
		return err == nil && st.Mode == devmapper.PoolReadWrite
	}, 10*time.Second, 100*time.Millisecond)
	_, err = tp.Create(ctx, "again", 64*MiB)
	require.NoError(t, err)
	path, err = tp.Activate(ctx, "again")
	require.NoError(t, err)
	_, err = directWrite(t, path, 0, 16*MiB, MiB)
	require.NoError(t, err)
	assertPoolMatchesRecords(t, tp.Pool)
}

// With no maximum, the filesystem holding the files is the limit: the pool
// is never promised more than it can store, so it fills up (ENOSPC, mode
// out_of_data_space) instead of writing into a full filesystem.
func TestAutoGrowStopsAtFilesystemFreeSpace(t *testing.T) {
	testenv.RequireDM(t)
	fs := t.TempDir()
	require.NoError(t, unix.Mount("tmpfs", fs, "tmpfs", 0, "size=96m"))
	t.Cleanup(func() { assert.NoError(t, unix.Unmount(fs, 0)) })
	logger, _ := logtest.NewNullLogger()
	tp := openPool(t, func(o *Options) {
		growOptions(logger, AutoGrow{ThresholdPercent: 50, StepPercent: 100})(o)
		o.Root = filepath.Join(fs, "pool")
		o.LoopMetadataSize = 4 * MiB
	})
	ctx := context.Background()
	_, err := tp.Create(ctx, "fill", 256*MiB)
	require.NoError(t, err)
	path, err := tp.Activate(ctx, "fill")
	require.NoError(t, err)
	n, werr := directWrite(t, path, 0, 200*MiB, MiB)
	t.Logf("write failed after %d MiB: %v", n/MiB, werr)
	assert.ErrorIs(t, werr, unix.ENOSPC)

	st, err := tp.Status(ctx)
	require.NoError(t, err)
	assert.Equal(t, devmapper.PoolOutOfDataSpace, st.Mode, "the pool filled up, not the filesystem under it")
	assert.Less(t, st.DataTotal, int64(96*MiB))
	assert.Greater(t, st.DataTotal, int64(32*MiB), "it grew as far as the filesystem allowed")
	free, err := fsFree(fs)
	require.NoError(t, err)
	t.Logf("data %d MiB, filesystem free %d KiB", st.DataTotal/MiB, free>>10)
	assert.True(t, st.ErrorIfNoSpace, "no more room: writes fail at once")
}

// Metadata grows too when its use crosses the threshold.
func TestAutoGrowMetadata(t *testing.T) {
	old := autoGrowInterval
	autoGrowInterval = 200 * time.Millisecond
	t.Cleanup(func() { autoGrowInterval = old })
	logger, hook := logtest.NewNullLogger()
	tp := openPool(t, func(o *Options) {
		o.LoopDataSize = 1024 * MiB
		o.LoopMetadataSize = 2 * MiB
		o.SkipBlockZeroing = true // 4 KiB per block written, not 64
		o.AutoGrow = &AutoGrow{ThresholdPercent: 15, StepPercent: 100, MaxDataSize: 1024 * MiB}
		o.Logger = logger
	})
	ctx := context.Background()
	st0, err := tp.Status(ctx)
	require.NoError(t, err)
	t.Logf("fresh pool: metadata %d of %d KiB", st0.MetadataUsed>>10, st0.MetadataTotal>>10)
	require.Less(t, st0.MetadataUsed*100, st0.MetadataTotal*15, "below the threshold at first")

	_, err = tp.Create(ctx, "sparse", 1024*MiB)
	require.NoError(t, err)
	path, err := tp.Activate(ctx, "sparse")
	require.NoError(t, err)
	// One 4 KiB write in each of 8192 blocks: a mapping each.
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT, 0)
	require.NoError(t, err)
	buf, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	require.NoError(t, err)
	defer unix.Munmap(buf)
	start := time.Now()
	for i := int64(0); i < 8192; i++ {
		_, err := f.WriteAt(buf, i*64<<10)
		require.NoError(t, err, "block %d", i)
	}
	require.NoError(t, f.Close())
	require.NoError(t, tp.commitMetadata())
	t.Logf("8192 mappings made in %s", time.Since(start))

	var st Status
	require.Eventually(t, func() bool {
		st, err = tp.Status(ctx)
		return err == nil && st.MetadataTotal > st0.MetadataTotal
	}, 20*time.Second, 100*time.Millisecond, "metadata did not grow")
	fi, err := os.Stat(tp.metaPath)
	require.NoError(t, err)
	t.Logf("metadata %d of %d KiB, file %d KiB", st.MetadataUsed>>10, st.MetadataTotal>>10, fi.Size()>>10)
	assert.Equal(t, st.MetadataTotal, fi.Size(), "the pool uses the grown file")
	assert.GreaterOrEqual(t, logged(hook, "thin pool metadata grew"), 1)
	assert.Equal(t, devmapper.PoolReadWrite, st.Mode)
}

// Every table option reaches the kernel's table, a reopen with other
// options reloads the table, and ignore_discard (which the kernel cannot
// change on a live pool) is refused with the option named.
func TestTableOptionsReachTheKernel(t *testing.T) {
	tp := openPool(t, func(o *Options) {
		o.SkipBlockZeroing = true
		o.NoDiscardPassdown = true
		o.QueueIfNoSpace = true
		o.LowWaterMark = 100 * MiB
	})
	ctx := context.Background()
	params := poolParams(t, tp.Pool)
	assert.Equal(t, devmapper.ThinPoolFeatures{SkipBlockZeroing: true, NoDiscardPassdown: true}, params.Features)
	assert.Equal(t, uint64(1600), params.LowWaterMark, "100 MiB of 64 KiB blocks")
	st, err := tp.Status(ctx)
	require.NoError(t, err)
	assert.False(t, st.ErrorIfNoSpace)
	ps, err := tp.poolStatus()
	require.NoError(t, err)
	assert.False(t, ps.DiscardPassdown)

	// Reopen with other options: the live table follows them.
	opts := tp.opts
	require.NoError(t, tp.Close())
	opts.SkipBlockZeroing, opts.NoDiscardPassdown, opts.QueueIfNoSpace, opts.LowWaterMark = false, false, false, 0
	p, err := Open(ctx, opts)
	require.NoError(t, err)
	tp.Pool = p
	params = poolParams(t, p)
	assert.Equal(t, devmapper.ThinPoolFeatures{ErrorIfNoSpace: true}, params.Features)
	assert.Equal(t, uint64(8192/100), params.LowWaterMark, "1% of 8192 blocks")
	ps, err = p.poolStatus()
	require.NoError(t, err)
	assert.True(t, ps.DiscardPassdown)
	assert.Equal(t, devmapper.ErrorIfNoSpace, ps.NoSpace)

	// ignore_discard cannot change while the pool device exists.
	require.NoError(t, p.Close())
	opts.IgnoreDiscard = true
	_, err = Open(ctx, opts)
	assert.ErrorIs(t, err, ErrInvalidOptions)
	assert.ErrorContains(t, err, "IgnoreDiscard")
	// After a shutdown (the pool device is removed) it can.
	opts.IgnoreDiscard = false
	p, err = Open(ctx, opts)
	require.NoError(t, err)
	require.NoError(t, p.Shutdown(ctx))
	opts.IgnoreDiscard = true
	p, err = Open(ctx, opts)
	require.NoError(t, err)
	tp.Pool = p
	assert.True(t, poolParams(t, p).Features.IgnoreDiscard)
	ps, err = p.poolStatus()
	require.NoError(t, err, "the status line of an ignore_discard pool parses")
	assert.True(t, ps.DiscardIgnored)
	_, err = p.Create(ctx, "d", 8*MiB)
	require.NoError(t, err)
	require.NoError(t, p.Delete(ctx, "d", DeleteOptions{Discard: true}), "a discard the pool ignores is no error")
}

// The minimum free space does not refuse a device while the pool can still
// grow: growing gives the space back (a threshold above 100% less the
// minimum would otherwise refuse every device before any growth).
func TestAutoGrowMinFreeSpaceWaitsForGrowth(t *testing.T) {
	logger, _ := logtest.NewNullLogger()
	tp := openPool(t, func(o *Options) {
		growOptions(logger, AutoGrow{ThresholdPercent: 95, MaxDataSize: 128 * MiB})(o)
		o.LoopDataSize = 64 * MiB
		ten := 10
		o.MinFreeSpacePercent = &ten
	})
	ctx := context.Background()
	_, err := tp.Create(ctx, "a", 64*MiB)
	require.NoError(t, err)
	path, err := tp.Activate(ctx, "a")
	require.NoError(t, err)
	_, err = directWrite(t, path, 0, 59*MiB, MiB) // 92%: below the threshold, above the minimum
	require.NoError(t, err)
	st, err := tp.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(64*MiB), st.DataTotal, "no growth below the threshold")
	_, err = tp.Create(ctx, "b", 64*MiB)
	assert.NoError(t, err, "the pool can grow: the minimum free space is not short")
}
