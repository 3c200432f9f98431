package thinpool

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dmthin/dmthin/devmapper"
	"github.com/dmthin/dmthin/internal/testenv"
)

// BenchmarkSnapshotParts: where the time of a Snapshot and a Delete goes,
// next to the raw messages, measured in the same run (ratios count, not
// times, under emulation). Each part reports its own per-op time.
func BenchmarkSnapshotParts(b *testing.B) {
	testenv.RequireDM(b)
	ctx := context.Background()
	opts := smallOptions(filepath.Join(b.TempDir(), "pool"))
	p, err := Open(ctx, opts)
	require.NoError(b, err)
	b.Cleanup(func() { require.NoError(b, p.Shutdown(ctx)) })
	origin, err := p.Create(ctx, "origin", 8*MiB)
	require.NoError(b, err)
	const n = 100
	part := func(name string, f func(i int) error) {
		start := time.Now()
		for i := 0; i < n; i++ {
			require.NoError(b, f(i), name)
		}
		b.ReportMetric(float64(time.Since(start).Microseconds())/n, name+"-µs/op")
	}
	for it := 0; it < b.N; it++ {
		base := 1<<23 + it*n
		part("Snapshot", func(i int) error { _, err := p.Snapshot(ctx, fmt.Sprintf("s%d-%d", it, i), "origin", 0); return err })
		part("create_snap", func(i int) error {
			_, err := p.dm.Message(p.name, 0, fmt.Sprintf("create_snap %d %d", base+i, origin.ID))
			return err
		})
		part("Delete", func(i int) error { return p.Delete(ctx, fmt.Sprintf("s%d-%d", it, i), DeleteOptions{}) })
		part("delete", func(i int) error { _, err := p.dm.Message(p.name, 0, fmt.Sprintf("delete %d", base+i)); return err })
		part("store-intent", func(i int) error {
			r := &record{Name: fmt.Sprintf("x%d-%d", it, i), State: StateCreating, Size: MiB}
			return p.st.update(func(tx txn) error {
				id, err := allocID(tx)
				r.ID = id
				if err != nil {
					return err
				}
				if err := putRecord(tx, r); err != nil {
					return err
				}
				return putU64(tx.Bucket(bucketMeta), keyTxIssued, uint64(i))
			})
		})
		part("store-get", func(int) error { _, err := p.st.get("origin"); return err })
		part("dm-info-missing", func(int) error { _, err := p.dm.Info(p.dmName("none")); return ignoreNotFound(err) })
		part("pool-status", func(int) error { _, err := p.poolStatus(); return err })
		part("statfs", func(int) error { _, err := fsFree(filepath.Dir(p.dataPath)); return err })
	}
}

func ignoreNotFound(err error) error {
	if devmapper.IsNotFound(err) {
		return nil
	}
	return err
}
