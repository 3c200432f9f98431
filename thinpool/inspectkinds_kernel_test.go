//go:build dmthin_kernel

package thinpool

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmthin/dmthin/devmapper"
	"github.com/dmthin/dmthin/internal/testenv"
)

// The inspector refuses what is no pool, and describes a pool over two
// block devices as the operator's CLI needs it: its kind, options that
// open it again while it is active, and a clear refusal once it is not
// (its devices are then known only to the engine's configuration).
func TestInspectorOnNoPoolAndOnDevices(t *testing.T) {
	testenv.RequireDM(t)
	ctx := context.Background()
	_, err := Inspect(InspectOptions{})
	assert.ErrorIs(t, err, ErrInvalidOptions)
	_, err = Inspect(InspectOptions{Root: t.TempDir()})
	assert.ErrorIs(t, err, ErrNoPool, "no metadata.db")
	empty := t.TempDir()
	st, err := openStore(filepath.Join(empty, "metadata.db"))
	require.NoError(t, err)
	require.NoError(t, st.close())
	_, err = Inspect(InspectOptions{Root: empty})
	assert.ErrorIs(t, err, ErrNoPool, "a store that recorded no pool")

	c, err := devmapper.Open(devmapper.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	metaName, dataName := testenv.Suffix(t)+"-inmeta", testenv.Suffix(t)+"-indata"
	linearOverLoop(t, c, metaName, 16*MiB)
	linearOverLoop(t, c, dataName, 256*MiB)
	zero := 0
	opts := Options{Root: filepath.Join(t.TempDir(), "pool"), DataDevice: c.NodePath(dataName), MetadataDevice: c.NodePath(metaName), MinFreeSpacePercent: &zero}
	p, err := Open(ctx, opts)
	require.NoError(t, err)
	_, err = p.Create(ctx, "a", 16*MiB)
	require.NoError(t, err)
	require.NoError(t, p.Close())

	in, err := Inspect(InspectOptions{Root: opts.Root})
	require.NoError(t, err)
	assert.Equal(t, KindDevices, in.Kind())
	assert.True(t, in.Active())
	assert.False(t, in.InUse())
	rep, err := in.Report(ctx)
	require.NoError(t, err)
	assert.Equal(t, KindDevices, rep.Kind)
	assert.Equal(t, 1, rep.Devices)
	assert.Empty(t, rep.Suspended)
	o, err := in.Options()
	require.NoError(t, err)
	require.NoError(t, in.Close())
	dataDev, err := devOf(c.NodePath(dataName))
	require.NoError(t, err)
	gotDev, err := devOf(o.DataDevice)
	require.NoError(t, err)
	assert.Equal(t, dataDev, gotDev, "Options names the data device")
	p, err = Open(ctx, o)
	require.NoError(t, err, "the inspector's options open the pool")
	devs, err := p.List()
	require.NoError(t, err)
	assert.Len(t, devs, 1)
	require.NoError(t, p.Shutdown(ctx))

	in, err = Inspect(InspectOptions{Root: opts.Root})
	require.NoError(t, err)
	defer in.Close()
	assert.False(t, in.Active())
	_, err = in.Options()
	assert.ErrorContains(t, err, "not active")
	rep, err = in.Report(ctx)
	require.NoError(t, err)
	assert.Equal(t, "inactive", rep.Mode)
	assert.Equal(t, 1, rep.Devices)
}

// The report of a pool that is shut down counts, from the records alone,
// the devices waiting for deferred deletion and the faulty ones, with
// their reasons.
func TestReportOfAStoppedPoolCountsFaultyAndDeferred(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	for _, n := range []string{"ok", "broken", "later"} {
		_, err := tp.Create(ctx, n, 16*MiB)
		require.NoError(t, err)
	}
	for name, st := range map[string]State{"broken": StateFaulty, "later": StateDeferredDelete} {
		rec, err := tp.st.get(name)
		require.NoError(t, err)
		rec.State, rec.Fault = st, ""
		if st == StateFaulty {
			rec.Fault = "probe thin id: input/output error"
		}
		require.NoError(t, tp.st.update(func(tx txn) error { return putRecord(tx, rec) }))
	}
	opts := tp.opts
	require.NoError(t, tp.Shutdown(ctx))

	in, err := Inspect(InspectOptions{Root: opts.Root})
	require.NoError(t, err)
	rep, err := in.Report(ctx)
	require.NoError(t, errors.Join(err, in.Close()))
	assert.False(t, rep.Active)
	assert.Equal(t, 3, rep.Devices)
	assert.Equal(t, 1, rep.Faulty)
	assert.Equal(t, []FaultyDevice{{Name: "broken", Reason: "probe thin id: input/output error"}}, rep.FaultyDevices)
	assert.Equal(t, 1, rep.DeferredDeletes)
	assert.Equal(t, []string{"later"}, rep.Deleting)

	p, err := Open(ctx, opts)
	require.NoError(t, err)
	tp.Pool = p
	require.NoError(t, p.Delete(ctx, "broken", DeleteOptions{}))
}
