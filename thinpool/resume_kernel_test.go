package thinpool

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// assertNotSuspended fails if the dm device is suspended.
func assertNotSuspended(t *testing.T, p *Pool, dm string) {
	t.Helper()
	info, err := p.dm.Info(dm)
	require.NoError(t, err)
	assert.False(t, info.Suspended, "%s left suspended", dm)
}

// TestReloadResumeFailureRestoresTable: the kernel refuses to resume a
// pool whose new table is smaller than its data (pool_preresume: "too
// small"). The kernel has swapped the table in by then; reload must put
// the old one back and resume, not leave the pool suspended (issue item 10).
func TestReloadResumeFailureRestoresTable(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	_, err := tp.Create(ctx, "live", 16*MiB)
	require.NoError(t, err)
	path, err := tp.Activate(ctx, "live")
	require.NoError(t, err)
	writeFile(t, path, 0, pattern(4, MiB))

	tab, err := tp.dm.Table(tp.name)
	require.NoError(t, err)
	small := append(tab[:0:0], tab...)
	small[0].Length /= 2
	err = tp.reload(tp.name, small)
	require.Error(t, err, "the kernel refuses to shrink a pool")
	t.Logf("reload with a shrunk pool table: %v", err)
	assertNotSuspended(t, tp.Pool, tp.name)
	got, err := tp.dm.Table(tp.name)
	require.NoError(t, err)
	assert.Equal(t, tab, got, "old table live again")

	// The pool works: I/O and a new device.
	assert.Equal(t, pattern(4, MiB), readFile(t, path, 0, MiB))
	_, err = tp.Create(ctx, "after", MiB)
	require.NoError(t, err)
	require.NoError(t, tp.Grow(ctx, 0, 0))
}

// TestResumeFailuresAreReported: a resume that fails (injected) is retried;
// one that keeps failing is an error from Snapshot and Resize, never a
// silent success with the device suspended.
func TestResumeFailuresAreReported(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	_, err := tp.Create(ctx, "origin", 16*MiB)
	require.NoError(t, err)
	_, err = tp.Activate(ctx, "origin")
	require.NoError(t, err)
	odm := tp.dmName("origin")
	injected := errors.New("injected resume failure")
	fails := 0
	tp.resumeFault = func(dm string) error {
		if dm == odm && fails > 0 {
			fails--
			return injected
		}
		return nil
	}

	// One failure: retried, the snapshot is made, the origin runs.
	fails = 1
	_, err = tp.Snapshot(ctx, "s1", "origin", 0)
	require.NoError(t, err)
	assertNotSuspended(t, tp.Pool, odm)

	// Lasting failure: Snapshot says so; the snapshot itself exists.
	fails = 100
	d, err := tp.Snapshot(ctx, "s2", "origin", 0)
	require.ErrorIs(t, err, injected)
	assert.Contains(t, err.Error(), "suspended")
	assert.Equal(t, "s2", d.Name)
	fails = 0
	_, err = tp.dm.Resume(odm)
	require.NoError(t, err)
	s2, err := tp.Get("s2")
	require.NoError(t, err)
	assert.Equal(t, StateReady, s2.State)

	// Resize: resume of the new table fails; the old table comes back, the
	// device runs and the record keeps the old size.
	fails = 1
	err = tp.Resize(ctx, "origin", 32*MiB)
	require.ErrorIs(t, err, injected)
	assertNotSuspended(t, tp.Pool, odm)
	o, err := tp.Get("origin")
	require.NoError(t, err)
	assert.Equal(t, int64(16*MiB), o.Size)
	size, err := devSize(tp.dev(t, o.Path))
	require.NoError(t, err)
	assert.Equal(t, int64(16*MiB), size)
	require.NoError(t, tp.Resize(ctx, "origin", 32*MiB))
}

// TestSnapshotRefusedAfterSuspendResumesOrigin: a snapshot whose intent
// cannot be committed (the name was taken between the first check and the
// commit, simulated by the record appearing at the suspend step) must
// still resume its origin.
func TestSnapshotRefusedAfterSuspendResumesOrigin(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	o, err := tp.Create(ctx, "origin", 16*MiB)
	require.NoError(t, err)
	_, err = tp.Activate(ctx, "origin")
	require.NoError(t, err)
	tp.hook = func(step string) {
		if step == "snapshot:suspended" {
			require.NoError(t, tp.st.update(func(tx txn) error {
				return putRecord(tx, &record{Name: "taken", ID: o.ID + 100, Size: MiB, State: StateFaulty})
			}))
		}
	}
	_, err = tp.Snapshot(ctx, "taken", "origin", 0)
	tp.hook = nil
	assert.ErrorIs(t, err, ErrExists)
	assertNotSuspended(t, tp.Pool, tp.dmName("origin"))
	require.NoError(t, tp.st.update(func(tx txn) error { return deleteRecord(tx, &record{Name: "taken", ID: o.ID + 100}) }))
}
