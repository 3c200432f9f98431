package thinpool

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmthin/dmthin/devmapper"
)

func (g *spaceGuard) state() (armed bool, reads int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.armed, g.reads
}

// TestFreeSpaceGuardFollowsEvents: creates do not read the pool's status
// while the guard is armed; filling the pool below dm.min_free_space
// raises the pool's low-water event, which disarms the guard, and the next
// create reads the status and is refused. The kept status never expires
// here, so only the event can make the refusal happen.
func TestFreeSpaceGuardFollowsEvents(t *testing.T) {
	tp := openPool(t, func(o *Options) {
		o.LoopDataSize = 64 * MiB
		pct := 50
		o.MinFreeSpacePercent = &pct
	})
	ctx := context.Background()
	tab, err := tp.dm.Table(tp.name)
	require.NoError(t, err)
	bs := tp.blockSize.Bytes()
	assert.Equal(t, uint64(32*MiB)/bs, tab[0].Params.(devmapper.ThinPoolParams).LowWaterMark,
		"the low-water mark is raised to the minimum free space")

	tp.space.mu.Lock()
	tp.space.maxAge = time.Hour
	tp.space.mu.Unlock()
	armed, reads := tp.space.state()
	require.True(t, armed, "a new pool arms the guard")
	for _, name := range []string{"a", "b", "c"} {
		_, err := tp.Create(ctx, name, 64*MiB)
		require.NoError(t, err)
	}
	_, err = tp.Snapshot(ctx, "s", "a", 0)
	require.NoError(t, err)
	armed, after := tp.space.state()
	assert.True(t, armed)
	assert.Equal(t, reads, after, "no status read for creates while armed")

	path, err := tp.Activate(ctx, "a")
	require.NoError(t, err)
	writeFile(t, path, 0, pattern(1, 40*MiB)) // 24 MiB free: below 50%
	require.Eventually(t, func() bool { armed, _ := tp.space.state(); return !armed },
		10*time.Second, 10*time.Millisecond, "the low-water event disarms the guard")
	_, err = tp.Create(ctx, "d", MiB)
	var se *SpaceError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, "data", se.What)
	assert.True(t, notFound(tp.Get("d")))
	_, after = tp.space.state()
	assert.Equal(t, reads+1, after, "disarmed, a create reads the status")

	// Space given back: a disarmed guard reads the status each time and
	// lets creates through again.
	require.NoError(t, tp.Delete(ctx, "a", DeleteOptions{Discard: true}))
	_, err = tp.Create(ctx, "e", MiB)
	require.NoError(t, err)

	// Grow resumes the pool, which clears its low-water trigger: armed
	// again.
	require.NoError(t, tp.Grow(ctx, 256*MiB, 0))
	armed, _ = tp.space.state()
	assert.True(t, armed, "Grow arms the guard again")
}

// TestFreeSpaceGuardStaysDisarmedAfterEvents: a pool that raised an event
// before Open (its low-water trigger may have fired and stays fired until
// the pool is resumed) leaves the guard disarmed, and a create below the
// minimum is refused at once.
func TestFreeSpaceGuardStaysDisarmedAfterEvents(t *testing.T) {
	tp := openPool(t, func(o *Options) {
		o.LoopDataSize = 64 * MiB
		pct := 50
		o.MinFreeSpacePercent = &pct
	})
	ctx := context.Background()
	_, err := tp.Create(ctx, "a", 64*MiB)
	require.NoError(t, err)
	path, err := tp.Activate(ctx, "a")
	require.NoError(t, err)
	writeFile(t, path, 0, pattern(1, 40*MiB))
	require.NoError(t, tp.Delete(ctx, "a", DeleteOptions{Discard: true})) // space back, trigger still fired
	require.NoError(t, tp.Close())
	p, err := Open(ctx, tp.opts)
	require.NoError(t, err)
	tp.Pool = p
	armed, _ := p.space.state()
	assert.False(t, armed, "an earlier event leaves the guard disarmed")
	_, err = p.Create(ctx, "b", 64*MiB)
	require.NoError(t, err)
	path, err = p.Activate(ctx, "b")
	require.NoError(t, err)
	writeFile(t, path, 0, pattern(2, 40*MiB))
	_, err = p.Create(ctx, "c", MiB)
	assert.ErrorIs(t, err, ErrPoolFull, "refused without waiting for any event")
}
