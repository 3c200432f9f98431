package thinpool

import (
	"context"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// Retire frees the name at once, in the store and in the kernel; the thin
// device and its data stay until Delete of the tombstone, which discards.
func TestRetireFreesNameAtOnce(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	_, err := tp.Retire(ctx, "missing", RetireOptions{})
	assert.ErrorIs(t, err, ErrNotFound)

	_, err = tp.Create(ctx, "a", 64*MiB)
	require.NoError(t, err)
	path, err := tp.Activate(ctx, "a")
	require.NoError(t, err)
	data := pattern(3, 8*MiB)
	writeFile(t, path, 0, data)

	// Open elsewhere: refused, and nothing changed.
	f, err := os.Open(path)
	require.NoError(t, err)
	_, err = tp.Retire(ctx, "a", RetireOptions{})
	assert.ErrorIs(t, err, ErrBusy)
	d, err := tp.Get("a")
	require.NoError(t, err)
	assert.Equal(t, StateReady, d.State)
	assert.True(t, d.Active)

	// Allowed open: retired, the open descriptor still reads the data.
	tomb, err := tp.Retire(ctx, "a", RetireOptions{AllowOpen: true})
	require.NoError(t, err)
	assert.Equal(t, "a", tomb.Retired)
	assert.Equal(t, StateRetired, tomb.State)
	assert.Equal(t, d.ID, tomb.ID)
	_, err = tp.Lookup("a")
	assert.ErrorIs(t, err, ErrNotFound, "the name is free in the store")
	exists, err := tp.dm.Exists(tp.dmName("a"))
	require.NoError(t, err)
	assert.False(t, exists, "the name is free in the kernel")
	got := make([]byte, MiB)
	_, err = f.ReadAt(got, 0)
	require.NoError(t, err)
	assert.Equal(t, data[:MiB], got)

	// The name is usable at once: a new device, new id, fresh content.
	nd, err := tp.Create(ctx, "a", 64*MiB)
	require.NoError(t, err)
	assert.NotEqual(t, tomb.ID, nd.ID)
	npath, err := tp.Activate(ctx, "a")
	require.NoError(t, err)
	assert.Equal(t, make([]byte, MiB), readFile(t, npath, 0, MiB), "the new device is not the old one")
	_, err = tp.Create(ctx, tomb.Name, MiB)
	assert.ErrorIs(t, err, ErrInvalidName, "tombstone names are reserved")
	retired, err := tp.Retired()
	require.NoError(t, err)
	require.Len(t, retired, 1)
	assert.Equal(t, tomb.Name, retired[0].Name)
	assertPoolMatchesRecords(t, tp.Pool)

	// Delete waits for the holder; the retired record stays meanwhile.
	err = tp.Delete(ctx, tomb.Name, DeleteOptions{Discard: true})
	assert.ErrorIs(t, err, ErrBusy)
	retired, err = tp.Retired()
	require.NoError(t, err)
	assert.Len(t, retired, 1, "a refused delete keeps the retired record")
	require.NoError(t, f.Close())

	allocated := func() int64 {
		var st unix.Stat_t
		require.NoError(t, unix.Stat(tp.dataPath, &st))
		return st.Blocks * 512
	}
	before := allocated()
	require.NoError(t, tp.Delete(ctx, tomb.Name, DeleteOptions{Discard: true}))
	assert.Less(t, allocated(), before-6*MiB, "the retired device's blocks were discarded")
	retired, err = tp.Retired()
	require.NoError(t, err)
	assert.Empty(t, retired)
	exists, err = tp.dm.Exists(tp.dmName(tomb.Name))
	require.NoError(t, err)
	assert.False(t, exists)
	assertPoolMatchesRecords(t, tp.Pool)

	// An inactive device is retired without touching the kernel; Open
	// keeps the record for the caller's Delete.
	require.NoError(t, tp.Deactivate(ctx, "a", false))
	tomb, err = tp.Retire(ctx, "a", RetireOptions{})
	require.NoError(t, err)
	opts := tp.opts
	require.NoError(t, tp.Close())
	p, err := Open(ctx, opts)
	require.NoError(t, err)
	tp.Pool = p
	retired, err = p.Retired()
	require.NoError(t, err)
	require.Len(t, retired, 1)
	assert.Equal(t, tomb.Name, retired[0].Name)
	require.NoError(t, p.Delete(ctx, tomb.Name, DeleteOptions{}))
	assertPoolMatchesRecords(t, p)
}
