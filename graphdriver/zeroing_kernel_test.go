package graphdriver

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/devmapper"
)

// The pool the driver makes skips block zeroing (see skipBlockZeroing), and
// what a removed layer left in the pool's blocks reaches the next layer's
// device, but none of its files.
//
// Layer a fills a file with a marker and is removed without discarding its
// blocks; its blocks are then the pool's lowest free ones (the delete
// message commits the pool's metadata, and allocation restarts from block 0
// after a commit). Layer b writes 4 KiB into a new file: the pool gives it
// a block of a's, written in part. The marker shows on b's thin device
// (the caveat: zeroing skipped) but not in b's files: the written file, a
// sparse one and a preallocated one read back as written and as zeros.
func TestPoolSkipsBlockZeroing(t *testing.T) {
	d := openDriver(t, newHome(t), "dm.loopdatasize=512M", "dm.basesize=64M", "dm.min_free_space=0%")

	c, err := devmapper.Open(devmapper.Options{})
	require.NoError(t, err)
	defer c.Close()
	tab, err := c.Table(d.store.Pool().Name())
	require.NoError(t, err)
	require.Len(t, tab, 1)
	params, ok := tab[0].Params.(devmapper.ThinPoolParams)
	require.True(t, ok, "pool table %v", tab)
	assert.True(t, params.Features.SkipBlockZeroing, "pool table %s: want skip_block_zeroing", tab)

	marker := []byte("stale data of a removed layer ")
	stale := bytes.Repeat(marker, (16<<20)/len(marker))
	require.NoError(t, d.Create("a", "", nil))
	withLayer(t, d, "a", func(root string) {
		require.NoError(t, os.WriteFile(filepath.Join(root, "fill"), stale, 0o644))
	})
	require.NoError(t, d.Remove("a"))

	require.NoError(t, d.Create("b", "", nil))
	written := bytes.Repeat([]byte("b"), 4096)
	root := mustGet(t, d, "b")
	defer func() { require.NoError(t, d.Put("b")) }()
	f, err := os.Create(filepath.Join(root, "small"))
	require.NoError(t, err)
	_, err = f.Write(written)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())
	sparse, err := os.Create(filepath.Join(root, "sparse"))
	require.NoError(t, err)
	_, err = sparse.WriteAt([]byte("end"), 8<<20)
	require.NoError(t, err)
	require.NoError(t, unix.Fallocate(int(sparse.Fd()), 0, 9<<20, 8<<20))
	require.NoError(t, sparse.Sync())
	require.NoError(t, sparse.Close())

	meta, err := d.GetMetadata("b")
	require.NoError(t, err)
	dev, err := os.ReadFile(meta["DevicePath"])
	require.NoError(t, err)
	assert.True(t, bytes.Contains(dev, marker),
		"layer b's device holds none of a's data: the pool zeroed b's new block (want skip_block_zeroing)")

	got, err := os.ReadFile(filepath.Join(root, "small"))
	require.NoError(t, err)
	assert.Equal(t, written, got)
	got, err = os.ReadFile(filepath.Join(root, "sparse"))
	require.NoError(t, err)
	require.Len(t, got, 17<<20)
	assert.Equal(t, make([]byte, 8<<20), got[:8<<20], "the hole before the write")
	assert.Equal(t, "end", string(got[8<<20:8<<20+3]))
	assert.Equal(t, make([]byte, 17<<20-(8<<20+3)), got[8<<20+3:], "the preallocated range")
	require.NoError(t, filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		data, err := io.ReadAll(f)
		assert.False(t, bytes.Contains(data, marker), "%s shows a removed layer's data", strings.TrimPrefix(p, root))
		return err
	}))
}
