package thinpool

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// An Inspector's check of a pool that is busy creating and deleting
// devices reports nothing: a device made or deleted between reading the
// records and the pool's thin ids is not an orphan.
func TestInspectorCheckWhilePoolChanges(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	_, err := tp.Create(ctx, "origin", 64*MiB)
	require.NoError(t, err)

	var stop atomic.Bool
	var wg sync.WaitGroup
	var churn atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; !stop.Load(); i++ {
			name := fmt.Sprintf("snap-%d", i)
			if _, err := tp.Snapshot(ctx, name, "origin", 0); err != nil {
				t.Error(err)
				return
			}
			if err := tp.Delete(ctx, name, DeleteOptions{}); err != nil {
				t.Error(err)
				return
			}
			churn.Add(1)
		}
	}()
	for i := 0; i < 8; i++ {
		in, err := Inspect(InspectOptions{Root: tp.root})
		require.NoError(t, err)
		assert.True(t, in.InUse(), "the pool is open in this process")
		rep, err := in.Check(ctx)
		require.NoError(t, err)
		assert.True(t, rep.Live)
		assert.True(t, rep.Complete(), rep.ThinIDsError)
		assert.Empty(t, rep.Findings, "check %d", i)
		r, err := in.Report(ctx)
		require.NoError(t, err)
		assert.Equal(t, "rw", r.Mode)
		assert.Equal(t, tp.Name(), r.Name)
		require.NoError(t, in.Close())
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("%d snapshots made and deleted during the checks", churn.Load())
	assert.Positive(t, churn.Load())
}
