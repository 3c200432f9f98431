//go:build dmthin_kernel

package thinpool

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dmthin/dmthin/devmapper"
	"github.com/dmthin/dmthin/internal/testenv"
)

// TestCrashRecoveryOfEveryPoolKind runs the crash cases of
// TestCrashRecovery (crash_test.go) on the other kinds of pool: over two
// block devices, on a whole disk, and an external pool made by someone
// else. Each kill point settles at the next Open, and the records agree
// with the pool's thin ids (live, and on the metadata once shut down where
// Shutdown takes the pool down).
func TestCrashRecoveryOfEveryPoolKind(t *testing.T) {
	testenv.RequireDM(t)
	kinds := []struct {
		name string
		pool func(t *testing.T) (*testPool, func(*testPool) []uint32)
	}{
		{"devices", func(t *testing.T) (*testPool, func(*testPool) []uint32) {
			c := testClient(t)
			meta, data := testenv.Suffix(t)+"-cmeta", testenv.Suffix(t)+"-cdata"
			linearOverLoop(t, c, meta, 16*MiB)
			linearOverLoop(t, c, data, 256*MiB)
			tp := openPool(t, func(o *Options) {
				o.LoopDataSize, o.LoopMetadataSize = 0, 0
				o.DataDevice, o.MetadataDevice = c.NodePath(data), c.NodePath(meta)
			})
			return tp, func(tp *testPool) []uint32 { return testenv.ThinIDs(t, tp.metaPath) }
		}},
		{"whole-disk", func(t *testing.T) (*testPool, func(*testPool) []uint32) {
			d := newDisk(t, 256*MiB)
			tp := openPool(t, func(o *Options) { o.LoopDataSize, o.LoopMetadataSize, o.Device = 0, 0, d.loop.Path() })
			return tp, func(*testPool) []uint32 { return metadataIDs(t, d) }
		}},
		{"external", func(t *testing.T) (*testPool, func(*testPool) []uint32) {
			c := testClient(t)
			meta, data := testenv.Suffix(t)+"-xmeta", testenv.Suffix(t)+"-xdata"
			linearOverLoop(t, c, meta, 16*MiB)
			linearOverLoop(t, c, data, 256*MiB)
			mi, err := c.Info(meta)
			require.NoError(t, err)
			di, err := c.Info(data)
			require.NoError(t, err)
			pool := testenv.Suffix(t) + "-xpool"
			_, err = c.Activate(pool, "", devmapper.Table{{Length: 256 * MiB / 512,
				Params: devmapper.ThinPoolParams{Metadata: mi.Dev, Data: di.Dev, BlockSize: 128}}}, false)
			require.NoError(t, err)
			t.Cleanup(func() { require.NoError(t, c.Remove(pool, devmapper.RemoveOptions{})) })
			tp := openPool(t, func(o *Options) { o.LoopDataSize, o.LoopMetadataSize, o.PoolDevice = 0, 0, pool })
			return tp, nil
		}},
	}
	for _, k := range kinds {
		for _, cc := range crashCases {
			for _, step := range cc.steps {
				t.Run(k.name+"/"+cc.op+"/"+step, func(t *testing.T) {
					tp, offline := k.pool(t)
					runCrashOn(t, tp, offline, cc, step)
				})
			}
		}
	}
}

// testClient is a device-mapper client closed after the test's cleanups.
func testClient(t *testing.T) *devmapper.Client {
	t.Helper()
	c, err := devmapper.Open(devmapper.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}
