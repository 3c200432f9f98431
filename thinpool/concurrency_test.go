package thinpool

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmthin/dmthin/internal/testenv"
)

// TestConcurrentOperations hammers one pool from many goroutines; run it
// with -race (hack/vm.sh test -race).
func TestConcurrentOperations(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	_, err := tp.Create(ctx, "root", 8*MiB)
	require.NoError(t, err)
	const workers, rounds = 8, 12
	var wg sync.WaitGroup
	errs := make(chan error, workers*rounds*4)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(w)))
			for i := 0; i < rounds; i++ {
				name := fmt.Sprintf("w%d-%d", w, i)
				parent := "root"
				if i > 0 && rng.Intn(2) == 0 {
					parent = fmt.Sprintf("w%d-%d", w, i-1)
				}
				if _, err := tp.Snapshot(ctx, name, parent, 0); err != nil {
					errs <- fmt.Errorf("snapshot %s of %s: %w", name, parent, err)
					continue
				}
				if _, err := tp.Activate(ctx, name); err != nil {
					errs <- err
				}
				// Contend on a shared origin too.
				if _, err := tp.Activate(ctx, "root"); err != nil {
					errs <- err
				}
				if rng.Intn(3) == 0 {
					if err := tp.Deactivate(ctx, name, false); err != nil {
						errs <- err
					}
				}
				if i > 1 && rng.Intn(2) == 0 {
					old := fmt.Sprintf("w%d-%d", w, i-2)
					if err := tp.Delete(ctx, old, DeleteOptions{}); err != nil && !errors.Is(err, ErrNotFound) {
						errs <- err
					}
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	recs, err := tp.st.all()
	require.NoError(t, err)
	ids := map[uint32]string{}
	for _, r := range recs {
		assert.Equal(t, StateReady, r.State, r.Name)
		if other, dup := ids[r.ID]; dup {
			t.Errorf("id %d held by %s and %s", r.ID, other, r.Name)
		}
		ids[r.ID] = r.Name
	}
	st, err := tp.Status(ctx)
	require.NoError(t, err)
	assert.Equal(t, len(recs), st.Devices)
	assertPoolMatchesRecords(t, tp.Pool)
	want := recordIDs(t, tp.Pool)
	opts := tp.opts
	require.NoError(t, tp.Shutdown(ctx))
	assert.Equal(t, want, testenv.ThinIDs(t, tp.metaPath), "pool metadata agrees with records")
	p, err := Open(ctx, opts)
	require.NoError(t, err)
	tp.Pool = p
}
