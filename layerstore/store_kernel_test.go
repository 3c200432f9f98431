package layerstore

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/go-units"
	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/dmthin/dmthin/thinpool"
)

// Kernel tests: they need root and a device-mapper with dm-thin-pool
// (hack/vm.sh test runs them in a VM).

type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// testOptions are a small loopback pool under a fresh root.
func testOptions(t *testing.T) Options {
	l := logrus.New()
	l.SetOutput(testLogWriter{t})
	zero := 0
	return Options{
		Root:     filepath.Join(t.TempDir(), "root-"+testenv.Suffix(t)),
		Pool:     thinpool.Options{LoopDataSize: 2 * units.GiB, LoopMetadataSize: 64 * units.MiB, MinFreeSpacePercent: &zero},
		BaseSize: 64 * units.MiB,
		Logger:   l,
	}
}

func openStore(t *testing.T, o Options) *Store {
	t.Helper()
	testenv.RequireDM(t)
	s, err := Open(context.Background(), o)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	return s
}

// A caller that mounts the filesystem root itself (containerd) leaves
// RootfsDir empty: Get returns the mount point, the filesystem's root.
func TestStoreWithoutRootfsDir(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, testOptions(t))
	require.NoError(t, s.Create(ctx, "a", "", 0))
	root, err := s.Get(ctx, "a", MountOptions{})
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(s.Root(), "mnt", "a"), root)
	// The filesystem's own root, holding only what callers put there: no
	// lost+found (containerd's snapshot suite checks that the root of an
	// empty snapshot is empty).
	assert.NoDirExists(t, filepath.Join(root, "lost+found"))
	entries, err := os.ReadDir(root)
	require.NoError(t, err)
	assert.Empty(t, entries)
	require.NoError(t, os.WriteFile(filepath.Join(root, "f"), []byte("a\n"), 0o644))
	mounted, refs := s.Mounted("a")
	assert.True(t, mounted)
	assert.Equal(t, 1, refs)
	require.NoError(t, s.Put(ctx, "a"))

	require.NoError(t, s.Create(ctx, "b", "a", 128*units.MiB))
	l, err := s.Lookup("b")
	require.NoError(t, err)
	assert.Equal(t, int64(128*units.MiB), l.Device.Size)
	root, err = s.Get(ctx, "b", MountOptions{})
	require.NoError(t, err)
	b, err := os.ReadFile(filepath.Join(root, "f"))
	require.NoError(t, err)
	assert.Equal(t, "a\n", string(b))
	require.NoError(t, s.Put(ctx, "b"))

	layers, pending, err := s.Count()
	require.NoError(t, err)
	assert.Equal(t, 2, layers)
	assert.Zero(t, pending)
	st, err := s.PoolStatus(ctx)
	require.NoError(t, err)
	assert.Positive(t, st.DataTotal)
	assert.Equal(t, int64(64*units.MiB), s.BaseSize())
	assert.Equal(t, FilesystemExt4, s.Filesystem())
	assert.Equal(t, "", s.Options().RootfsDir)

	// Bad input.
	assert.ErrorIs(t, s.Create(ctx, "c", "", 1000), ErrInvalidOptions)
	assert.ErrorIs(t, s.Create(ctx, "c", "", 32*units.MiB), ErrInvalidOptions, "below the base size")
	assert.ErrorIs(t, s.Create(ctx, "c", "b", 64*units.MiB), ErrInvalidOptions, "below the parent's size")
	assert.ErrorIs(t, s.Create(ctx, "c", "../x", 0), ErrInvalidName)
	assert.ErrorIs(t, s.Create(ctx, "c", "nope", 0), ErrParentNotFound)
	assert.ErrorIs(t, s.Create(ctx, "a", "", 0), ErrExists)
	_, err = s.Lookup("../x")
	assert.ErrorIs(t, err, ErrInvalidName)
	_, err = s.Lookup("nope")
	assert.ErrorIs(t, err, ErrNotFound)
	assert.ErrorIs(t, s.Put(ctx, "a"), ErrNotMounted)
	assert.ErrorIs(t, s.Remove(ctx, "nope"), ErrNotFound)
	assert.False(t, s.Exists("../x"))

	require.NoError(t, s.Remove(ctx, "b"))
	require.NoError(t, s.Remove(ctx, "a"))
	layers, _, err = s.Count()
	require.NoError(t, err)
	assert.Zero(t, layers)
}

// A closed store refuses everything with ErrClosed.
func TestStoreClosed(t *testing.T) {
	testenv.RequireDM(t)
	ctx := context.Background()
	s, err := Open(ctx, testOptions(t))
	require.NoError(t, err)
	require.NoError(t, s.Close())
	require.NoError(t, s.Close(), "a second Close does nothing")
	assert.ErrorIs(t, s.Create(ctx, "a", "", 0), ErrClosed)
	_, err = s.Get(ctx, "a", MountOptions{})
	assert.ErrorIs(t, err, ErrClosed)
	assert.ErrorIs(t, s.Put(ctx, "a"), ErrClosed)
	assert.ErrorIs(t, s.Remove(ctx, "a"), ErrClosed)
	assert.False(t, s.Exists("a"))
	_, err = s.Lookup("a")
	assert.ErrorIs(t, err, ErrClosed)
	_, _, err = s.Count()
	assert.ErrorIs(t, err, ErrClosed)
	_, err = s.PoolStatus(ctx)
	assert.ErrorIs(t, err, ErrClosed)
}

// Open refuses bad options before touching anything, and a RootfsDir that
// changed for an existing root shows at Get.
func TestOpenBadOptions(t *testing.T) {
	testenv.RequireDM(t)
	o := testOptions(t)
	o.BaseSize = 1
	_, err := Open(context.Background(), o)
	assert.ErrorIs(t, err, ErrInvalidOptions)
	assert.NoDirExists(t, o.Root)

	o = testOptions(t)
	s, err := Open(context.Background(), o)
	require.NoError(t, err)
	require.NoError(t, s.Create(context.Background(), "a", "", 0))
	require.NoError(t, s.Close())
	o.RootfsDir = "rootfs"
	s = openStore(t, o)
	_, err = s.Get(context.Background(), "a", MountOptions{})
	assert.ErrorContains(t, err, "has no rootfs directory")
	mounted, _ := s.Mounted("a")
	assert.False(t, mounted, "a failed Get leaves nothing mounted")
}

// A file held open in a layer keeps it busy: Put fails with ErrBusy and
// leaves the mount as it was; Remove of an adopted mount that is busy is
// refused and the layer stays. Closing the file lets both through.
func TestBusyMount(t *testing.T) {
	testenv.RequireDM(t)
	ctx := context.Background()
	o := testOptions(t)
	s1, err := Open(ctx, o)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s1.Close() })
	require.NoError(t, s1.Create(ctx, "a", "", 0))
	root, err := s1.Get(ctx, "a", MountOptions{})
	require.NoError(t, err)
	f, err := os.Create(filepath.Join(root, "held"))
	require.NoError(t, err)
	err = s1.Put(ctx, "a")
	assert.ErrorIs(t, err, ErrBusy)
	mounted, refs := s1.Mounted("a")
	assert.True(t, mounted)
	assert.Equal(t, 1, refs, "a failed Put keeps its reference")
	require.NoError(t, s1.Pool().Close()) // the process dies with a mounted and busy

	o.Logger = nil // and the next one logs nothing
	s := openStore(t, o)
	mounted, refs = s.Mounted("a")
	assert.True(t, mounted, "adopted")
	assert.Zero(t, refs)
	err = s.Remove(ctx, "a")
	assert.ErrorIs(t, err, ErrBusy)
	assert.True(t, s.Exists("a"), "a refused Remove leaves the layer")
	require.NoError(t, f.Close())
	require.NoError(t, s.Remove(ctx, "a"))
	assert.False(t, s.Exists("a"))
}

// With deferred removal, a layer whose device is held elsewhere is not
// removed (ErrBusy) and stays; its device goes away at its last close.
func TestRemoveHeldDeviceDeferredRemoval(t *testing.T) {
	ctx := context.Background()
	o := testOptions(t)
	o.DeferredRemoval = true
	s := openStore(t, o)
	require.NoError(t, s.Create(ctx, "a", "", 0))
	_, err := s.Get(ctx, "a", MountOptions{})
	require.NoError(t, err)
	l, err := s.Lookup("a")
	require.NoError(t, err)
	f, err := os.Open(l.Device.Path)
	require.NoError(t, err)
	require.NoError(t, s.Put(ctx, "a"), "deactivation deferred")
	err = s.Remove(ctx, "a")
	assert.ErrorIs(t, err, ErrBusy)
	assert.True(t, s.Exists("a"))
	require.NoError(t, f.Close())
	require.Eventually(t, func() bool { return s.Remove(ctx, "a") == nil }, 10*time.Second, 50*time.Millisecond)
	assert.False(t, s.Exists("a"))
}

// Open fails cleanly where the root cannot be made or the pool opened.
func TestOpenErrors(t *testing.T) {
	testenv.RequireDM(t)
	file := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(file, nil, 0o600))
	o := testOptions(t)
	o.Root = filepath.Join(file, "root")
	_, err := Open(context.Background(), o)
	assert.ErrorIs(t, err, unix.ENOTDIR)

	o = testOptions(t)
	o.Pool.BlockSize = 1000
	_, err = Open(context.Background(), o)
	assert.ErrorIs(t, err, thinpool.ErrInvalidOptions)
}

// A state label this version does not know is left alone, and the layer
// does not exist for the caller.
func TestUnknownStateLabel(t *testing.T) {
	testenv.RequireDM(t)
	ctx := context.Background()
	o := testOptions(t)
	s, err := Open(ctx, o)
	require.NoError(t, err)
	_, err = s.Pool().Snapshot(ctx, DeviceName("odd"), baseDevice, 0, thinpool.WithLabels(stateLabels("from-the-future")))
	require.NoError(t, err)
	require.NoError(t, s.Close())
	s = openStore(t, o)
	assert.False(t, s.Exists("odd"))
	l, err := s.Pool().Lookup(DeviceName("odd"))
	require.NoError(t, err, "left as it is")
	assert.Equal(t, "from-the-future", l.Labels[LabelState])
	_, pending, err := s.Count()
	require.NoError(t, err)
	assert.Equal(t, 1, pending)
	require.NoError(t, s.Remove(ctx, "odd"), "but it can be removed")
}
