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

// The pool the driver makes skips block zeroing (see blockZeroing), and
// what a removed layer left in the pool's blocks reaches the next layer's
// device, but none of its files.
//
// Layer a fills a file with a marker and is removed without discarding its
// blocks. The driver is then closed and opened again: the pool device is
// made anew from its metadata, and it allocates from its lowest free block
// again (while it stays up, it goes on from where it left off), which is
// one of a's. Layer b writes 4 KiB chunks 64 KiB apart into a new file:
// the pool gives each a new block, written in part, so a's marker shows on
// b's thin device (the caveat: zeroing skipped), but not in b's files,
// whose holes, written chunks and preallocated range read back as zeros
// and as written.
func TestPoolSkipsBlockZeroing(t *testing.T) {
	home := newHome(t)
	opts := []string{"dm.loopdatasize=512M", "dm.basesize=64M", "dm.min_free_space=0%"}
	d := openDriver(t, home, opts...)

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
	require.NoError(t, d.Cleanup())
	d = openDriver(t, home, opts...)

	require.NoError(t, d.Create("b", "", nil))
	written := bytes.Repeat([]byte("b"), 4096)
	const chunks, stride = 64, 64 << 10
	root := mustGet(t, d, "b")
	defer func() { require.NoError(t, d.Put("b")) }()
	f, err := os.Create(filepath.Join(root, "chunks"))
	require.NoError(t, err)
	for i := 0; i < chunks; i++ {
		_, err = f.WriteAt(written, int64(i*stride))
		require.NoError(t, err)
	}
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
		"layer b's device holds none of a's data: the pool zeroed b's new blocks (want skip_block_zeroing)")

	got, err := os.ReadFile(filepath.Join(root, "chunks"))
	require.NoError(t, err)
	want := make([]byte, (chunks-1)*stride+len(written))
	for i := 0; i < chunks; i++ {
		copy(want[i*stride:], written)
	}
	assert.True(t, bytes.Equal(want, got), "the chunks file does not read back as written, with zeros between")
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
