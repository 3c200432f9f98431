package thinpool

import (
	"context"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/dmthin/dmthin/loopback"
)

// loopWithExt4 attaches a sparse file holding an ext4 filesystem.
func loopWithExt4(t *testing.T, size int64) *loopback.Device {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fs")
	require.NoError(t, loopback.CreateSparse(path, size))
	out, err := exec.Command("mkfs.ext4", "-q", "-F", path).CombinedOutput()
	require.NoError(t, err, "%s", out)
	l, err := loopback.Attach(path, loopback.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, l.Detach()) })
	return l
}

// headSum is a digest of the first 128 KiB of a device (superblocks and
// partition tables live there).
func headSum(t *testing.T, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	b := make([]byte, 128<<10)
	_, err = f.ReadAt(b, 0)
	require.NoError(t, err)
	return sha256.Sum256(b)
}

// TestDevicesAreClaimedBeforeWriting: a mounted ext4 given as metadata
// device is refused and stays byte for byte; an unmounted one is refused
// unless ForceDevices (issue item 2).
func TestDevicesAreClaimedBeforeWriting(t *testing.T) {
	testenv.RequireDM(t)
	ctx := context.Background()
	meta := loopWithExt4(t, 16*MiB)
	data := filepath.Join(t.TempDir(), "data")
	require.NoError(t, loopback.CreateSparse(data, 256*MiB))
	dl, err := loopback.Attach(data, loopback.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, dl.Detach()) })
	zero := 0
	opts := Options{Root: filepath.Join(t.TempDir(), "pool"), MetadataDevice: meta.Path(), DataDevice: dl.Path(), MinFreeSpacePercent: &zero}
	mnt := t.TempDir()
	require.NoError(t, unix.Mount(meta.Path(), mnt, "ext4", 0, ""))
	// Mounting writes the superblock (mount count and time): compare with
	// what it holds once mounted.
	before := headSum(t, meta.Path())
	_, err = Open(ctx, opts)
	assert.ErrorIs(t, err, ErrDeviceInUse)
	assert.ErrorIs(t, err, unix.EBUSY)
	t.Logf("mounted ext4 as metadata device: %v", err)
	assert.Equal(t, before, headSum(t, meta.Path()), "the ext4 superblock is untouched")
	require.NoError(t, unix.Unmount(mnt, 0))

	before = headSum(t, meta.Path())
	_, err = Open(ctx, opts)
	assert.ErrorIs(t, err, ErrDeviceInUse)
	assert.Contains(t, err.Error(), "ext2/3/4")
	t.Logf("unmounted ext4 as metadata device: %v", err)
	assert.Equal(t, before, headSum(t, meta.Path()), "still untouched")
	out, err := exec.Command("e2fsck", "-n", "-f", meta.Path()).CombinedOutput()
	assert.NoError(t, err, "the filesystem is intact: %s", out)

	opts.ForceDevices = true
	p, err := Open(ctx, opts)
	require.NoError(t, err, "forced")
	_, err = p.Create(ctx, "d", MiB)
	require.NoError(t, err)
	require.NoError(t, p.Delete(ctx, "d", DeleteOptions{}))
	require.NoError(t, p.Shutdown(ctx))
}
