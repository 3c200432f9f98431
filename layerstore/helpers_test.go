package layerstore

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/internal/testenv"
)

// The file-system helpers, on plain directories and tmpfs mounts (root
// only; no device-mapper needed).

func TestMountHelpers(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	mp := filepath.Join(dir, "mp")
	require.NoError(t, os.Mkdir(mp, 0o700))

	mounted, _, err := mountedDev(mp)
	require.NoError(t, err)
	assert.False(t, mounted)
	_, _, err = mountedDev(filepath.Join(dir, "missing"))
	assert.ErrorIs(t, err, os.ErrNotExist)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "file"), nil, 0o600))
	mounted, _, err = mountedDev(filepath.Join(dir, "file"))
	require.NoError(t, err)
	assert.False(t, mounted, "a file is no mount point")

	// Two tmpfs stacked on mp: unmountAll takes both off and removes mp.
	require.NoError(t, mountDevice("tmpfs", mp, "tmpfs", 0, "size=1m"))
	require.NoError(t, mountDevice("tmpfs", mp, "tmpfs", 0, "size=1m"))
	mounted, dev, err := mountedDev(mp)
	require.NoError(t, err)
	assert.True(t, mounted)
	s := &Store{log: logrus.New()}
	assert.False(t, s.ownDevice(dev), "a tmpfs is no device of a pool")
	require.NoError(t, unmountAll(mp))
	assert.NoDirExists(t, mp)

	// A busy mount: unmount fails with ErrBusy, or detaches when asked.
	require.NoError(t, mountDevice("tmpfs", mp, "tmpfs", 0, "size=1m"))
	f, err := os.Create(filepath.Join(mp, "held"))
	require.NoError(t, err)
	assert.ErrorIs(t, unmount(mp, false), ErrBusy)
	require.NoError(t, unmount(mp, true))
	require.NoError(t, f.Close())
	mounted, _, err = mountedDev(mp)
	require.NoError(t, err)
	assert.False(t, mounted)
	assert.NoError(t, unmount(mp, false), "not mounted is fine")
	assert.NoError(t, unmount(filepath.Join(dir, "missing"), false), "missing is fine")

	// mountDevice's errors keep the errno.
	err = mountDevice("/nonexistent-device", mp, "ext4", 0, "")
	assert.ErrorIs(t, err, unix.ENOENT)
	err = mountDevice("tmpfs", filepath.Join(dir, "file", "mp"), "tmpfs", 0, "")
	assert.ErrorIs(t, err, unix.ENOTDIR)

	// removeIfEmpty: missing is fine, a non-empty directory is not.
	assert.NoError(t, removeIfEmpty(filepath.Join(dir, "missing")))
	full := filepath.Join(dir, "full")
	require.NoError(t, os.MkdirAll(filepath.Join(full, "x"), 0o700))
	assert.Error(t, removeIfEmpty(full))
}

// Open's clean-up passes report a root they cannot read.
func TestSettleHelpersErrors(t *testing.T) {
	s := &Store{root: filepath.Join(t.TempDir(), "missing"), log: logrus.New(), mounts: map[string]*mount{}}
	assert.ErrorIs(t, s.cleanupBaseMounts(), os.ErrNotExist)
	assert.ErrorIs(t, s.adoptMounts(), os.ErrNotExist)
	_, err := s.readBaseRecord()
	assert.NoError(t, err, "no base.json is no error")
	require.NoError(t, os.MkdirAll(s.baseRecordPath(), 0o700)) // a directory where the file should be
	_, err = s.readBaseRecord()
	assert.ErrorIs(t, err, unix.EISDIR)
	assert.Error(t, writeFileAtomic(filepath.Join(s.root, "nodir", "f"), nil))
}

// A temporary base mount point that cannot be removed (not empty: not
// ours to delete) is reported, not ignored; a base.json that cannot
// replace what is in its place is an error that keeps the errno.
func TestCleanupAndRecordErrors(t *testing.T) {
	root := t.TempDir()
	s := &Store{root: root, log: logrus.New()}
	require.NoError(t, os.MkdirAll(filepath.Join(root, baseMountPrefix+"x", "something"), 0o700))
	err := s.cleanupBaseMounts()
	assert.ErrorIs(t, err, unix.ENOTEMPTY)

	require.NoError(t, os.MkdirAll(filepath.Join(s.baseRecordPath(), "x"), 0o700))
	err = s.writeBaseRecord(baseRecord{Filesystem: "ext4", UUID: "u"})
	assert.Error(t, err)
	entries, rerr := os.ReadDir(root)
	require.NoError(t, rerr)
	for _, e := range entries {
		assert.NotContains(t, e.Name(), ".tmp-", "the temporary file is removed")
	}
}

func TestStepHook(t *testing.T) {
	var got []string
	s := &Store{opts: Options{StepHook: func(step string) { got = append(got, step) }}}
	s.step(StepCreateDone)
	assert.Equal(t, []string{StepCreateDone}, got)
	(&Store{}).step(StepCreateDone) // no hook: nothing happens
}
