package thinpool

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/devmapper"
	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/dmthin/dmthin/loopback"
)

// linearOverLoop makes a loop-backed dm linear device that a test can later
// swap for an error target.
func linearOverLoop(t *testing.T, c *devmapper.Client, name string, size int64) devmapper.Table {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	require.NoError(t, loopback.CreateSparse(path, size))
	l, err := loopback.Attach(path, loopback.Options{})
	require.NoError(t, err)
	maj, min := l.Dev()
	tab := devmapper.Table{{Length: devmapper.Sectors(size / 512), Params: devmapper.LinearParams{Device: devmapper.Dev{Major: maj, Minor: min}}}}
	_, err = c.Activate(name, "", tab, false)
	require.NoError(t, err)
	t.Cleanup(func() {
		assert.NoError(t, c.Remove(name, devmapper.RemoveOptions{}))
		assert.NoError(t, l.Detach())
	})
	return tab
}

func TestMetadataIOErrors(t *testing.T) {
	testenv.RequireDM(t)
	ctx := context.Background()
	c, err := devmapper.Open(devmapper.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() }) // after the cleanups below, which use c
	metaName := testenv.Suffix(t) + "-faultmeta"
	dataName := testenv.Suffix(t) + "-faultdata"
	metaTab := linearOverLoop(t, c, metaName, 16*MiB)
	linearOverLoop(t, c, dataName, 256*MiB)

	zero := 0
	p, err := Open(ctx, Options{
		Root:                filepath.Join(t.TempDir(), "pool"),
		DataDevice:          c.NodePath(dataName),
		MetadataDevice:      c.NodePath(metaName),
		MinFreeSpacePercent: &zero,
	})
	require.NoError(t, err)
	defer func() {
		// Restore the metadata device so that the pool can go away cleanly.
		_ = c.Reload(metaName, metaTab, devmapper.SuspendOptions{})
		assert.NoError(t, p.Shutdown(ctx))
	}()
	_, err = p.Create(ctx, "ok", 32*MiB)
	require.NoError(t, err)
	path, err := p.Activate(ctx, "ok")
	require.NoError(t, err)
	writeFile(t, path, 0, pattern(1, MiB))
	st, err := p.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, devmapper.PoolReadWrite, st.Mode)

	// Every metadata I/O fails from now on. The first create gets past the
	// space check and commits its intent; only then does the metadata
	// device fail, so the kernel refuses the create message itself and the
	// intent is rolled back.
	errTab := devmapper.Table{{Length: metaTab.Length(), Params: devmapper.RawParams{Type: "error"}}}
	before, err := p.Status(ctx)
	require.NoError(t, err)
	p.hook = func(step string) {
		if step != "create:intent" {
			return
		}
		p.hook = nil
		require.NoError(t, c.Reload(metaName, errTab, devmapper.SuspendOptions{}))
		// New blocks and a commit meet the errors; the pool leaves rw.
		if f, err := os.OpenFile(path, os.O_WRONLY|os.O_SYNC, 0); err == nil {
			_, _ = f.WriteAt(pattern(3, MiB), 16*MiB)
			f.Close()
		}
		_ = p.commitMetadata()
		require.Eventually(t, func() bool {
			st, err := p.poolStatus()
			return err == nil && st.Mode != devmapper.PoolReadWrite
		}, 10*time.Second, 100*time.Millisecond, "pool leaves rw mode")
	}
	_, err = p.Create(ctx, "bad0", 32*MiB)
	require.Error(t, err)
	t.Logf("create whose message meets metadata errors: %v", err)
	var dmErr *devmapper.Error
	require.ErrorAs(t, err, &dmErr, "the error comes from the kernel")
	assert.Contains(t, dmErr.Op, "DM_TARGET_MSG", "the message itself failed")
	_, err = p.Get("bad0")
	assert.ErrorIs(t, err, ErrNotFound, "the intent was rolled back")
	p.msgMu.Lock()
	issued := p.issued
	p.msgMu.Unlock()
	assert.Greater(t, issued, before.TransactionID, "the failed create's transaction id is used up")
	// A synchronous write needs new blocks and a metadata commit.
	require.NoError(t, c.Reload(metaName, errTab, devmapper.SuspendOptions{}))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_SYNC, 0)
	require.NoError(t, err)
	_, werr := f.WriteAt(pattern(2, MiB), 8*MiB)
	f.Close()
	assert.Error(t, werr, "write needing a metadata commit fails")
	require.Eventually(t, func() bool {
		st, err = p.Status(ctx)
		return err == nil && st.Mode != devmapper.PoolReadWrite
	}, 10*time.Second, 100*time.Millisecond, "pool leaves rw mode")
	t.Logf("pool mode after metadata errors: %s", st.Mode)
	assert.Contains(t, []devmapper.PoolMode{devmapper.PoolReadOnly, devmapper.PoolFailed}, st.Mode)

	_, err = p.Create(ctx, "bad", 32*MiB)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "mode")
	_, err = p.Get("bad")
	assert.ErrorIs(t, err, ErrNotFound, "nothing recorded for a create that failed")
	_, err = p.Snapshot(ctx, "bad2", "ok", 0)
	require.Error(t, err)
	_, err = p.Get("bad2")
	assert.ErrorIs(t, err, ErrNotFound)
	d, err := p.Get("ok")
	require.NoError(t, err)
	assert.Equal(t, StateReady, d.State)
	_ = unix.EIO
}

// TestExternalPool adopts a pool someone else made: an empty one is used
// and left in place by Shutdown; one with thin devices that this store does
// not know is refused.
func TestExternalPool(t *testing.T) {
	testenv.RequireDM(t)
	ctx := context.Background()
	c, err := devmapper.Open(devmapper.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	mk := func(what string) (string, devmapper.Dev) {
		name := testenv.Suffix(t) + "-ext" + what
		tab := linearOverLoop(t, c, name, map[string]int64{"meta": 16 * MiB, "data": 128 * MiB}[what])
		return name, tab[0].Params.(devmapper.LinearParams).Device
	}
	_, _ = mk("meta")
	_, _ = mk("data")
	metaInfo, err := c.Info(testenv.Suffix(t) + "-extmeta")
	require.NoError(t, err)
	dataInfo, err := c.Info(testenv.Suffix(t) + "-extdata")
	require.NoError(t, err)
	pool := testenv.Suffix(t) + "-extpool"
	_, err = c.Activate(pool, "", devmapper.Table{{Length: 128 * MiB / 512,
		Params: devmapper.ThinPoolParams{Metadata: metaInfo.Dev, Data: dataInfo.Dev, BlockSize: 128}}}, false)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, c.Remove(pool, devmapper.RemoveOptions{})) })

	zero := 0
	opts := Options{Root: filepath.Join(t.TempDir(), "ext"), PoolDevice: pool, MinFreeSpacePercent: &zero}
	p, err := Open(ctx, opts)
	require.NoError(t, err)
	_, err = p.Create(ctx, "mine", 8*MiB)
	require.NoError(t, err)
	_, err = p.Activate(ctx, "mine")
	require.NoError(t, err)
	st, err := p.Status(ctx)
	require.NoError(t, err)
	assert.True(t, st.External)
	require.NoError(t, p.Shutdown(ctx))
	_, err = c.Info(pool)
	assert.NoError(t, err, "an external pool survives Shutdown")

	// Another store (another root) must not adopt a pool in use.
	other := opts
	other.Root = filepath.Join(t.TempDir(), "other")
	_, err = Open(ctx, other)
	assert.ErrorIs(t, err, ErrPoolNotOurs)

	// The owner comes back and cleans up its device.
	p, err = Open(ctx, opts)
	require.NoError(t, err)
	assertPoolMatchesRecords(t, p)
	require.NoError(t, p.Delete(ctx, "mine", DeleteOptions{}))
	assertPoolMatchesRecords(t, p)
	require.NoError(t, p.Shutdown(ctx))
}
