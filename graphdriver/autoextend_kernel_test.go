package graphdriver

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/docker/go-units"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/devmapper"
)

// autoExtendPool starts with a 64 MiB loopback pool that grows by its size
// when half of it is in use.
func autoExtendPool(max string) []string {
	return []string{
		"dm.loopdatasize=64M",
		"dm.min_free_space=0%",
		"dm.blkdiscard=true",
		"dm.thinp_autoextend_threshold=50%",
		"dm.thinp_autoextend_percent=100",
		"dm.loopdatasize_max=" + max,
	}
}

// writeMiBs writes n MiB to a new file under root and syncs it; it returns
// the first error.
func writeMiBs(root, name string, n int) error {
	f, err := os.Create(filepath.Join(root, name))
	if err != nil {
		return err
	}
	buf := make([]byte, units.MiB)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	for i := 0; i < n; i++ {
		buf[0] = byte(i)
		if _, err := f.Write(buf); err != nil {
			return errors.Join(err, f.Close())
		}
	}
	return errors.Join(f.Sync(), f.Close())
}

// A container writes more than the pool held at first, and succeeds.
func TestAutoExtendContainerWritesPastPool(t *testing.T) {
	d := openDriver(t, newHome(t), autoExtendPool("512M")...)
	st := statusMap(d)
	assert.Equal(t, "64MiB", st["Data Space Total"])
	assert.Equal(t, "at 50% used, by 100%, data up to 512MiB", st["Pool Auto-extend"])
	assert.Contains(t, st["Pool No Space Policy"], "queue_if_no_space", "it queues while it can grow")

	require.NoError(t, d.Create("img", "", nil))
	require.NoError(t, d.Create("ctr", "img", nil))
	root := mustGet(t, d, "ctr")
	start := time.Now()
	require.NoError(t, writeMiBs(root, "big", 160))
	t.Logf("160 MiB written into a 64 MiB pool in %s", time.Since(start))
	require.NoError(t, d.Put("ctr"))

	ps, err := d.PoolStatus(context.Background())
	require.NoError(t, err)
	assert.Equal(t, devmapper.PoolReadWrite, ps.Mode)
	assert.Greater(t, ps.DataTotal, int64(160*units.MiB))
	assert.LessOrEqual(t, ps.DataTotal, int64(512*units.MiB))
	assert.Equal(t, units.BytesSize(float64(ps.DataTotal)), statusMap(d)["Data Space Total"])
	root = mustGet(t, d, "ctr")
	fi, err := os.Stat(filepath.Join(root, "big"))
	require.NoError(t, err)
	assert.Equal(t, int64(160*units.MiB), fi.Size())
	require.NoError(t, d.Put("ctr"))
}

// At the maximum a container's write fails promptly, the pool stays
// healthy (out of data space, not failed), and removing the layer makes
// room for the next one.
func TestAutoExtendMaxReachedFailsPromptly(t *testing.T) {
	d := openDriver(t, newHome(t), autoExtendPool("128M")...)
	require.NoError(t, d.Create("img", "", nil))
	require.NoError(t, d.Create("ctr", "img", nil))
	root := mustGet(t, d, "ctr")
	start := time.Now()
	werr := writeMiBs(root, "big", 256)
	took := time.Since(start)
	t.Logf("writing 256 MiB into a pool of at most 128 MiB failed after %s: %v", took, werr)
	require.Error(t, werr)
	assert.True(t, errors.Is(werr, unix.ENOSPC) || errors.Is(werr, unix.EIO), "%v", werr)
	assert.Less(t, took, 40*time.Second, "no 60 s of queueing")

	ps, err := d.PoolStatus(context.Background())
	require.NoError(t, err)
	assert.Equal(t, devmapper.PoolOutOfDataSpace, ps.Mode, "full, not failed")
	assert.False(t, ps.NeedsCheck)
	assert.True(t, ps.ErrorIfNoSpace)
	assert.Equal(t, int64(128*units.MiB), ps.DataTotal)
	assert.Contains(t, statusMap(d)["Pool No Space Policy"], "error_if_no_space")

	// Removing the layer (discarded: dm.blkdiscard) frees its blocks.
	require.NoError(t, d.Put("ctr"))
	require.NoError(t, d.Remove("ctr"))
	require.Eventually(t, func() bool {
		ps, err := d.PoolStatus(context.Background())
		return err == nil && ps.Mode == devmapper.PoolReadWrite
	}, 10*time.Second, 100*time.Millisecond)
	require.NoError(t, d.Create("ctr2", "img", nil))
	root = mustGet(t, d, "ctr2")
	require.NoError(t, writeMiBs(root, "again", 16))
	require.NoError(t, d.Put("ctr2"))
}

// A table option reaches the kernel through its dm.* name.
func TestPoolTableOptionsInKernel(t *testing.T) {
	home := newHome(t)
	d := openDriver(t, home, "dm.block_zeroing=false", "dm.discards=nopassdown", "dm.no_space=queue", "dm.low_water_mark=32M")
	c, err := devmapper.Open(devmapper.Options{})
	require.NoError(t, err)
	defer c.Close()
	tab, err := c.Table(d.store.Pool().Name())
	require.NoError(t, err)
	params := tab[0].Params.(devmapper.ThinPoolParams)
	assert.Equal(t, devmapper.ThinPoolFeatures{SkipBlockZeroing: true, NoDiscardPassdown: true}, params.Features, "%s", tab)
	assert.Equal(t, uint64(512), params.LowWaterMark, "32 MiB of 64 KiB blocks")
	assert.Contains(t, statusMap(d)["Pool No Space Policy"], "queue_if_no_space")
}
