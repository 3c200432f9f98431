package graphdriver

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/internal/testenv"
)

// mountsUnder on the live mountinfo: /proc is mounted directly under /.
func TestMountsUnderLive(t *testing.T) {
	m, err := mountsUnder("/")
	require.NoError(t, err)
	assert.Contains(t, m, "proc")
	assert.Equal(t, "proc", m["proc"].FSType)
	assert.NotContains(t, m, "", "/ itself is not under /")
}

// mountsUnder keeps the mounts directly inside dir, with a space in the
// name decoded, and leaves out dir itself and mounts deeper down.
func TestMountsUnderNested(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	mnt := func(p, opts string) {
		require.NoError(t, os.MkdirAll(p, 0o700))
		require.NoError(t, unix.Mount("tmpfs", p, "tmpfs", 0, opts))
		t.Cleanup(func() { _ = unix.Unmount(p, unix.MNT_DETACH) })
	}
	mnt(dir, "size=1m")
	mnt(filepath.Join(dir, "with space"), "size=1m")
	mnt(filepath.Join(dir, "a"), "size=2m")
	mnt(filepath.Join(dir, "a", "b"), "size=1m")
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "plain"), 0o700))

	m, err := mountsUnder(dir + "/")
	require.NoError(t, err)
	assert.Len(t, m, 2, "%v", m)
	require.Contains(t, m, "with space")
	require.Contains(t, m, "a")
	assert.Equal(t, filepath.Join(dir, "with space"), m["with space"].MountPoint)
	assert.Equal(t, "tmpfs", m["a"].FSType)
	assert.Equal(t, "tmpfs", m["a"].Source)
	assert.Contains(t, m["a"].SuperOptions, "size=2048k")
	assert.Contains(t, m["a"].Options, "rw")
}
