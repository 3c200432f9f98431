package xfs

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/dmthin/dmthin/loopback"
)

// mountLoop attaches image to a loop device and mounts it at a new
// directory with opts; both are undone at the end of the test.
func mountLoop(t *testing.T, image, opts string) (dev, mp string) {
	t.Helper()
	testenv.RequireRoot(t)
	loop, err := loopback.Attach(image, loopback.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, loop.Detach()) })
	mp = filepath.Join(t.TempDir(), "mnt")
	require.NoError(t, os.Mkdir(mp, 0o700))
	if err := unix.Mount(loop.Path(), mp, "xfs", 0, opts); err != nil {
		if testenv.Required() {
			t.Fatalf("mount xfs: %v", err)
		}
		t.Skipf("cannot mount xfs here: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(mp, 0) })
	return loop.Path(), mp
}

// A filesystem made on part of its device grows to what GrowsTo said, online.
func TestGrow(t *testing.T) {
	requireXfsprogs(t, toolGrowfs)
	const fsSize, devSize = MinSize, 2*MinSize + 100<<10 // a last AG of 25 blocks is not added
	path := sparseFile(t, devSize)
	require.NoError(t, Format(t.Context(), path, FormatOptions{ExtraArgs: []string{"-d", "size=300m"}}))
	before, err := ReadSuperblockFile(path)
	require.NoError(t, err)
	require.Equal(t, uint64(fsSize), before.Size())
	want := before.GrowsTo(devSize)
	require.Equal(t, uint64(2*MinSize), want)

	dev, mp := mountLoop(t, path, MountOptions)
	require.NoError(t, os.WriteFile(filepath.Join(mp, "f"), []byte("kept\n"), 0o644))
	require.NoError(t, Grow(t.Context(), mp))
	var st unix.Statfs_t
	require.NoError(t, unix.Statfs(mp, &st))
	assert.Greater(t, st.Blocks*uint64(st.Bsize), uint64(fsSize), "bigger while mounted")
	require.NoError(t, Grow(t.Context(), mp), "growing to the current size does nothing")
	require.NoError(t, unix.Unmount(mp, 0))

	after, err := ReadSuperblockFile(dev)
	require.NoError(t, err)
	assert.Equal(t, want, after.Size(), "GrowsTo foretold the size")
	assert.Equal(t, before.UUID, after.UUID)
	assert.Equal(t, after.Size(), after.GrowsTo(devSize), "nothing left to grow")
	assertMatchesXfsDB(t, after, xfsDB(t, dev))
}

// Two filesystems with one UUID (a snapshot and its origin) mount side by
// side only with MountOptions.
func TestSameUUIDNeedsNouuid(t *testing.T) {
	requireXfsprogs(t, "xfs_admin")
	a := sparseFile(t, MinSize)
	require.NoError(t, Format(t.Context(), a, FormatOptions{}))
	sa, err := ReadSuperblockFile(a)
	require.NoError(t, err)
	b := sparseFile(t, MinSize)
	require.NoError(t, Format(t.Context(), b, FormatOptions{}))
	require.NoError(t, finder().Run(t.Context(), "xfs_admin", nil, "-U", sa.UUIDString(), b))

	mountLoop(t, a, "")
	loop, err := loopback.Attach(b, loopback.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, loop.Detach()) })
	mp := t.TempDir()
	err = unix.Mount(loop.Path(), mp, "xfs", 0, "")
	if err == nil {
		_ = unix.Unmount(mp, 0)
	}
	require.ErrorIs(t, err, unix.EINVAL, "XFS refuses a UUID already mounted")
	require.NoError(t, unix.Mount(loop.Path(), mp, "xfs", 0, MountOptions))
	require.NoError(t, unix.Unmount(mp, 0))
}

func TestNoSpaceMaxRetries(t *testing.T) {
	requireXfsprogs(t)
	path := sparseFile(t, MinSize)
	require.NoError(t, Format(t.Context(), path, FormatOptions{}))
	dev, _ := mountLoop(t, path, MountOptions)
	n, err := NoSpaceMaxRetries(dev)
	require.NoError(t, err)
	assert.Equal(t, -1, n, "the kernel's default: retry forever")
	for _, want := range []int{0, 3, -1} {
		require.NoError(t, SetNoSpaceMaxRetries(dev, want))
		n, err = NoSpaceMaxRetries(dev)
		require.NoError(t, err)
		assert.Equal(t, want, n)
	}
	assert.ErrorIs(t, SetNoSpaceMaxRetries(dev, -2), ErrInvalidOptions)
}

func TestNoSpaceMaxRetriesErrors(t *testing.T) {
	err := SetNoSpaceMaxRetries(filepath.Join(t.TempDir(), "missing"), 1)
	assert.ErrorIs(t, err, os.ErrNotExist)
	err = SetNoSpaceMaxRetries("/dev/null", 1)
	assert.ErrorContains(t, err, "not a block device")

	// A block device without a mounted XFS: the sysfs directory is missing.
	testenv.RequireRoot(t)
	loop, err := loopback.Attach(sparseFile(t, 1<<20), loopback.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, loop.Detach()) })
	err = SetNoSpaceMaxRetries(loop.Path(), 1)
	assert.ErrorIs(t, err, os.ErrNotExist)
	assert.ErrorContains(t, err, "no XFS filesystem of loop")
}
