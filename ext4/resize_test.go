package ext4

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestGrowFile(t *testing.T) {
	requireE2fsprogs(t, toolResize, toolFsck)
	path := sparseFile(t, 64<<20)
	require.NoError(t, Format(t.Context(), path, FormatOptions{}))
	before, err := ReadSuperblockFile(path)
	require.NoError(t, err)
	require.Equal(t, uint64(64<<20), before.Size())

	require.NoError(t, os.Truncate(path, 128<<20))
	require.NoError(t, Grow(t.Context(), path))

	after, err := ReadSuperblockFile(path)
	require.NoError(t, err)
	assert.Equal(t, 2*before.Size(), after.Size(), "grown to the file size")
	assert.Greater(t, after.FreeBlocks, before.FreeBlocks+before.BlockCount/2, "the new space is free")
	assert.Equal(t, before.UUID, after.UUID, "same filesystem")
	require.NoError(t, Check(t.Context(), path))

	// Growing to the current size does nothing.
	require.NoError(t, Grow(t.Context(), path))
	again, err := ReadSuperblockFile(path)
	require.NoError(t, err)
	assert.Equal(t, after.Size(), again.Size())
}

// TestGrowChecksFirst: resize2fs refuses an unmounted filesystem that was
// mounted (or left unclean) since its last check; Grow runs e2fsck -p first.
func TestGrowChecksFirst(t *testing.T) {
	requireE2fsprogs(t, toolResize, toolFsck)
	tests := []struct {
		name    string
		debugfs []string
	}{
		{"mounted since last check", []string{"ssv lastcheck 20200101000000", "ssv mtime 20210101000000", "ssv mnt_count 3"}},
		{"not cleanly unmounted", []string{"ssv state 0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := sparseFile(t, 64<<20)
			require.NoError(t, Format(t.Context(), path, FormatOptions{}))
			for _, cmd := range tt.debugfs {
				tool(t, nil, "debugfs", "-w", "-R", cmd, path)
			}
			require.NoError(t, os.Truncate(path, 128<<20))
			sb, err := ReadSuperblockFile(path)
			require.NoError(t, err)
			require.False(t, sb.checkedSinceMount())

			// resize2fs alone refuses: this is what Grow handles.
			resize, err := lookTool(toolResize)
			require.NoError(t, err)
			_, err = runOutput(resize, path)
			require.Error(t, err, "resize2fs should refuse before e2fsck -f")

			require.NoError(t, Grow(t.Context(), path))
			sb, err = ReadSuperblockFile(path)
			require.NoError(t, err)
			assert.Equal(t, uint64(128<<20), sb.Size())
			assert.True(t, sb.checkedSinceMount())
			require.NoError(t, Check(t.Context(), path))
		})
	}
}

// corrupt clears the root directory's inode, which no automatic repair fixes.
func corrupt(t *testing.T, path string) {
	t.Helper()
	tool(t, nil, "debugfs", "-w", "-R", "clri <2>", path)
}

// TestGrowDoesNotForceRepairs: a filesystem that e2fsck -p cannot repair on
// its own is left alone, unresized.
func TestGrowDoesNotForceRepairs(t *testing.T) {
	requireE2fsprogs(t, toolResize, toolFsck)
	path := sparseFile(t, 64<<20)
	require.NoError(t, Format(t.Context(), path, FormatOptions{}))
	corrupt(t, path)
	tool(t, nil, "debugfs", "-w", "-R", "ssv state 0", path)
	require.NoError(t, os.Truncate(path, 128<<20))

	err := Grow(t.Context(), path)
	var ee *ExecError
	require.ErrorAs(t, err, &ee)
	assert.Equal(t, toolFsck, filepath.Base(ee.Args[0]))
	assert.NotZero(t, ee.ExitCode&fsckUncorrected, "e2fsck -p exit status %d", ee.ExitCode)
	sb, err := ReadSuperblockFile(path)
	require.NoError(t, err)
	assert.Equal(t, uint64(64<<20), sb.Size(), "not resized")
}

func TestCheck(t *testing.T) {
	requireE2fsprogs(t, toolFsck)
	path := sparseFile(t, 32<<20)
	require.NoError(t, Format(t.Context(), path, FormatOptions{}))
	require.NoError(t, Check(t.Context(), path))

	corrupt(t, path)
	before, err := os.ReadFile(path)
	require.NoError(t, err)
	err = Check(t.Context(), path)
	require.ErrorIs(t, err, ErrCorrupt)
	var ee *ExecError
	require.ErrorAs(t, err, &ee)
	assert.Contains(t, ee.Stdout, "Root inode", "e2fsck's report is in the error")
	after, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(before, after), "Check must not write")

	t.Run("not a filesystem", func(t *testing.T) {
		zeros := sparseFile(t, 1<<20)
		err := Check(t.Context(), zeros)
		require.Error(t, err)
		assert.NotErrorIs(t, err, ErrCorrupt, "an operational error (exit 8) is not a report of damage")
		var ee *ExecError
		require.ErrorAs(t, err, &ee)
		assert.Equal(t, 8, ee.ExitCode)
	})
}

func TestGrowNotExt4(t *testing.T) {
	err := Grow(t.Context(), sparseFile(t, 1<<20))
	require.ErrorIs(t, err, ErrNotExt4)
}

// sysTool finds a util-linux program for test setup (testenv.RequireTool:
// a skip on a host that lacks it, a failure in a kernel run).
func sysTool(t *testing.T, name string) string {
	t.Helper()
	return testenv.RequireTool(t, name)
}

// hasCapability reports whether the effective capability set holds c.
func hasCapability(t *testing.T, c uint) bool {
	t.Helper()
	data, err := os.ReadFile("/proc/self/status")
	require.NoError(t, err)
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			require.NoError(t, err)
			return mask&(1<<c) != 0
		}
	}
	t.Fatal("no CapEff line in /proc/self/status")
	return false
}

// TestGrowBlockDevice grows a filesystem on a loop device offline after it
// was mounted (which makes Grow run e2fsck first), then online (mounted), and
// checks that a file written before survives both.
func TestGrowBlockDevice(t *testing.T) {
	testenv.RequireRoot(t)
	requireE2fsprogs(t, toolResize, toolFsck)
	losetup, mount, umount := sysTool(t, "losetup"), sysTool(t, "mount"), sysTool(t, "umount")

	dir := t.TempDir()
	image := filepath.Join(dir, "grow-"+testenv.Suffix(t)+".img")
	require.NoError(t, os.WriteFile(image, nil, 0o600))
	require.NoError(t, os.Truncate(image, 64<<20))
	require.NoError(t, Format(t.Context(), image, FormatOptions{Label: "grow-test"}))

	out, err := runOutput(losetup, "--find", "--show", image)
	require.NoError(t, err)
	dev := strings.TrimSpace(out)
	t.Cleanup(func() {
		if out, err := runOutput(losetup, "--detach", dev); err != nil {
			t.Errorf("detach %s: %v %s", dev, err, out)
		}
	})
	mnt := filepath.Join(dir, "mnt-"+testenv.Suffix(t))
	require.NoError(t, os.Mkdir(mnt, 0o755))
	mounted := false
	t.Cleanup(func() {
		if mounted {
			if out, err := runOutput(umount, mnt); err != nil {
				t.Errorf("umount %s: %v %s", mnt, err, out)
			}
		}
	})
	doMount := func(t *testing.T) {
		out, err := runOutput(mount, "-t", "ext4", dev, mnt)
		require.NoError(t, err, out)
		mounted = true
	}
	unmount := func(t *testing.T) {
		out, err := runOutput(umount, mnt)
		require.NoError(t, err, out)
		mounted = false
	}
	enlarge := func(t *testing.T, size int64) {
		require.NoError(t, os.Truncate(image, size))
		out, err := runOutput(losetup, "--set-capacity", dev)
		require.NoError(t, err, out)
	}
	size := func(t *testing.T) uint64 {
		sb, err := ReadSuperblockFile(dev)
		require.NoError(t, err)
		return sb.Size()
	}

	// resize2fs compares whole seconds: a mount in the second of mkfs's
	// check would count as checked.
	time.Sleep(1100 * time.Millisecond)
	doMount(t)
	payload := bytes.Repeat([]byte("dmthin "), 1000)
	require.NoError(t, os.WriteFile(filepath.Join(mnt, "payload"), payload, 0o644))
	sb, err := ReadSuperblockFile(dev)
	require.NoError(t, err)
	assert.True(t, sb.FeatureIncompat.Has(IncompatRecover), "a mounted journaled filesystem needs recovery until unmounted")
	unmount(t)
	sb, err = ReadSuperblockFile(dev)
	require.NoError(t, err)
	assert.False(t, sb.FeatureIncompat.Has(IncompatRecover), "unmounted cleanly")
	assert.Equal(t, uint16(1), sb.MountCount)
	assert.Equal(t, mnt, sb.LastMountedOn)

	t.Run("offline after a mount", func(t *testing.T) {
		sb, err := ReadSuperblockFile(dev)
		require.NoError(t, err)
		require.False(t, sb.checkedSinceMount(), "the mount is recorded in the superblock")
		enlarge(t, 128<<20)
		require.NoError(t, Grow(t.Context(), dev))
		assert.Equal(t, uint64(128<<20), size(t))
		require.NoError(t, Check(t.Context(), dev))
	})

	t.Run("online", func(t *testing.T) {
		if !hasCapability(t, unix.CAP_SYS_RESOURCE) {
			// The kernel's EXT4_IOC_RESIZE_FS demands CAP_SYS_RESOURCE.
			if testenv.Required() {
				t.Fatal("DMTHIN_REQUIRE_DM=1 but online resize needs CAP_SYS_RESOURCE, which this process lacks")
			}
			t.Skip("skipped: online resize needs CAP_SYS_RESOURCE, which this process lacks")
		}
		doMount(t)
		var before unix.Statfs_t
		require.NoError(t, unix.Statfs(mnt, &before))
		enlarge(t, 192<<20)
		require.NoError(t, Grow(t.Context(), dev))
		var after unix.Statfs_t
		require.NoError(t, unix.Statfs(mnt, &after))
		assert.Greater(t, after.Blocks*uint64(after.Bsize), before.Blocks*uint64(before.Bsize)+50<<20,
			"statfs sees the grown filesystem")
		assert.Equal(t, uint64(192<<20), size(t))
		unmount(t)
		require.NoError(t, Check(t.Context(), dev))
	})

	doMount(t)
	got, err := os.ReadFile(filepath.Join(mnt, "payload"))
	require.NoError(t, err)
	assert.Equal(t, payload, got, "data survives the resizes")
	unmount(t)
}
