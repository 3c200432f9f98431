package containerd

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmthin/dmthin/internal/testenv"
)

// TestSnapshotterSuiteXFS runs containerd's conformance suite with
// fs_type = "xfs": the suite mounts what Mounts returns (nouuid included),
// parents and children side by side.
func TestSnapshotterSuiteXFS(t *testing.T) {
	testenv.RequireDM(t)
	testsuite.SnapshotterSuite(t, "dmthin-xfs", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		cfg := testConfig(root)
		cfg.FsType, cfg.BaseImageSize = "xfs", "300MB"
		sn, err := New(ctx, cfg, testLogger(t))
		if err != nil {
			return nil, nil, err
		}
		return sn, sn.Close, nil
	})
}

// With fs_type = "xfs" every mount carries nouuid: a view and an active
// snapshot of one parent (one UUID) mount side by side.
func TestXFSMountsSideBySide(t *testing.T) {
	testenv.RequireDM(t)
	ctx := context.Background()
	cfg := testConfig(t.TempDir())
	cfg.FsType, cfg.BaseImageSize = "xfs", "300MB"
	sn, err := New(ctx, cfg, testLogger(t))
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, sn.Close()) })

	ms, err := sn.Prepare(ctx, "a", "")
	require.NoError(t, err)
	require.Len(t, ms, 1)
	assert.Equal(t, "xfs", ms[0].Type)
	assert.Contains(t, ms[0].Options, "nouuid")
	dir := t.TempDir()
	require.NoError(t, mount.All(ms, dir))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "f"), []byte("a\n"), 0o644))
	require.NoError(t, mount.UnmountAll(dir, 0))
	require.NoError(t, sn.Commit(ctx, "c", "a"))

	active, err := sn.Prepare(ctx, "b", "c")
	require.NoError(t, err)
	view, err := sn.View(ctx, "v", "c")
	require.NoError(t, err)
	assert.Contains(t, view[0].Options, "ro")
	bdir, vdir := t.TempDir(), t.TempDir()
	require.NoError(t, mount.All(active, bdir))
	t.Cleanup(func() { _ = mount.UnmountAll(bdir, 0) })
	require.NoError(t, mount.All(view, vdir), "a second mount of the same UUID")
	t.Cleanup(func() { _ = mount.UnmountAll(vdir, 0) })
	for _, d := range []string{bdir, vdir} {
		b, err := os.ReadFile(filepath.Join(d, "f"))
		require.NoError(t, err)
		assert.Equal(t, "a\n", string(b))
	}
	require.NoError(t, mount.UnmountAll(bdir, 0))
	require.NoError(t, mount.UnmountAll(vdir, 0))
}
