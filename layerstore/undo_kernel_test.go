package layerstore

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/go-units"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/dmthin/dmthin/thinpool"
)

// Kernel tests of the undo paths (a Create or a first Open that fails
// half-way leaves nothing), of Remove refused by a held device or mount in
// each removal mode, and of the worker's retries of a deactivation.

// holdDevice opens a layer's block device as another user of it would.
func holdDevice(t *testing.T, node string) *os.File {
	t.Helper()
	f, err := os.Open(node)
	require.NoError(t, err)
	t.Cleanup(func() { _ = f.Close() })
	return f
}

// A Create whose filesystem cannot be grown deletes the snapshot it made:
// the layer does not exist, nothing is pending, the name can be used again.
func TestCreateUndoneWhenGrowFails(t *testing.T) {
	ctx := context.Background()
	o := testOptions(t)
	steps := &stepSwitch{}
	o.StepHook = steps.hook
	s := openStore(t, o)
	steps.set(func(step string) {
		if step == StepCreateSnapshot {
			// Something in the way of the mount point of the grow.
			require.NoError(t, os.WriteFile(s.mountPoint("g"), nil, 0o600))
		}
	})
	err := s.Create(ctx, "g", "", 128*units.MiB)
	assert.ErrorIs(t, err, unix.ENOTDIR)
	assert.ErrorContains(t, err, "grow its filesystem")
	steps.set(nil)
	assert.False(t, s.Exists("g"))
	_, err = s.Pool().Lookup(DeviceName("g"))
	assert.ErrorIs(t, err, thinpool.ErrNotFound, "the snapshot is deleted")
	layers, pend, err := s.Count()
	require.NoError(t, err)
	assert.Zero(t, layers)
	assert.Zero(t, pend)

	require.NoError(t, os.Remove(s.mountPoint("g")))
	require.NoError(t, s.Create(ctx, "g", "", 128*units.MiB))
	l, err := s.Lookup("g")
	require.NoError(t, err)
	assert.Equal(t, int64(128*units.MiB), l.Device.Size)
	assert.Contains(t, steps.seen(), StepCreateGrown)
}

// A first Open that cannot prepare the base filesystem deletes the base
// device it made and writes no base.json; the next Open makes the base.
func TestCreateBaseUndone(t *testing.T) {
	testenv.RequireDM(t)
	ctx := context.Background()
	o := testOptions(t)
	o.RootfsDir = "rootfs"
	steps := &stepSwitch{}
	o.StepHook = steps.hook
	steps.set(func(step string) {
		if step != StepBaseMounted {
			return
		}
		mps, err := filepath.Glob(filepath.Join(o.Root, baseMountPrefix+"*"))
		require.NoError(t, err)
		require.Len(t, mps, 1)
		// A file where the rootfs directory is to be made.
		require.NoError(t, os.WriteFile(filepath.Join(mps[0], "rootfs"), nil, 0o600))
	})
	_, err := Open(ctx, o)
	require.ErrorIs(t, err, os.ErrExist)
	assert.ErrorContains(t, err, "prepare base filesystem")
	assert.NoFileExists(t, filepath.Join(o.Root, baseRecordFile))
	mps, err := filepath.Glob(filepath.Join(o.Root, baseMountPrefix+"*"))
	require.NoError(t, err)
	assert.Empty(t, mps, "the temporary mount point is removed")
	withPool(t, o, func(p *thinpool.Pool) {
		_, err := p.Lookup(BaseDevice)
		assert.ErrorIs(t, err, thinpool.ErrNotFound, "the half-made base is deleted")
		assert.Empty(t, dmNames(t, strings.TrimSuffix(p.Name(), "pool")+BaseDevice), "and not active")
	})

	steps.set(nil)
	s := openStore(t, o)
	require.NoError(t, s.Create(ctx, "a", "", 0))
	root, err := s.Get(ctx, "a", MountOptions{})
	require.NoError(t, err)
	fi, err := os.Stat(root)
	require.NoError(t, err)
	assert.True(t, fi.IsDir())
	require.NoError(t, s.Put(ctx, "a"))
}

// A layer left half-made whose device is held elsewhere cannot be
// removed now: Remove says ErrBusy (as for any layer), the record stays,
// and a Remove once it is released deletes it.
func TestRemoveHalfMadeHeld(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, testOptions(t))
	_, err := s.Pool().Snapshot(ctx, DeviceName("half"), BaseDevice, 0, thinpool.WithLabels(stateLabels(StateIncomplete)))
	require.NoError(t, err)
	node, err := s.Pool().Activate(ctx, DeviceName("half"))
	require.NoError(t, err)
	f := holdDevice(t, node)
	err = s.Remove(ctx, "half")
	assert.ErrorIs(t, err, ErrBusy)
	assert.ErrorIs(t, err, thinpool.ErrBusy)
	_, err = s.Pool().Lookup(DeviceName("half"))
	require.NoError(t, err, "the record stays")
	err = s.Create(ctx, "half", "", 0)
	assert.ErrorIs(t, err, thinpool.ErrBusy, "nor can a Create replace it")
	assert.False(t, s.Exists("half"))
	require.NoError(t, f.Close())
	require.NoError(t, s.Remove(ctx, "half"))
	_, err = s.Pool().Lookup(DeviceName("half"))
	assert.ErrorIs(t, err, thinpool.ErrNotFound)
}

// SyncRemove of a layer mounted by an earlier process and still busy: the
// mark is taken back and the layer exists as before.
func TestSyncRemoveBusyAdoptedMount(t *testing.T) {
	testenv.RequireDM(t)
	ctx := context.Background()
	o := testOptions(t)
	o.SyncRemove = true
	s1, err := Open(ctx, o)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s1.Close() })
	require.NoError(t, s1.Create(ctx, "a", "", 0))
	root, err := s1.Get(ctx, "a", MountOptions{})
	require.NoError(t, err)
	f, err := os.Create(filepath.Join(root, "held"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = f.Close() })
	require.NoError(t, s1.Pool().Close()) // the process dies

	s := openStore(t, o)
	mounted, _ := s.Mounted("a")
	require.True(t, mounted)
	err = s.Remove(ctx, "a")
	assert.ErrorIs(t, err, ErrBusy)
	assert.True(t, s.Exists("a"), "the removal was taken back")
	l, err := s.Lookup("a")
	require.NoError(t, err)
	assert.Empty(t, LayerState(l.Device))
	mounted, _ = s.Mounted("a")
	assert.True(t, mounted, "the mount is intact")
	require.NoError(t, f.Close())
	require.NoError(t, s.Remove(ctx, "a"))
	_, err = s.Pool().Lookup(DeviceName("a"))
	assert.ErrorIs(t, err, thinpool.ErrNotFound, "deleted before Remove returned")
	assert.NoDirExists(t, s.mountPoint("a"))
}

// SyncRemove of a layer whose device is held elsewhere: refused with
// ErrBusy and the layer stays; with DeferredRemoval its device goes away
// at its last close.
func TestSyncRemoveHeldDevice(t *testing.T) {
	ctx := context.Background()
	o := testOptions(t)
	o.SyncRemove, o.DeferredRemoval = true, true
	s := openStore(t, o)
	require.NoError(t, s.Create(ctx, "a", "", 0))
	node, err := s.Activate(ctx, "a")
	require.NoError(t, err)
	f := holdDevice(t, node)
	err = s.Remove(ctx, "a")
	assert.ErrorIs(t, err, ErrBusy)
	assert.True(t, s.Exists("a"), "the layer stays")
	l, err := s.Lookup("a")
	require.NoError(t, err)
	assert.Empty(t, LayerState(l.Device), "its mark taken back")
	assert.True(t, l.Device.Active)
	require.NoError(t, f.Close())
	require.Eventually(t, func() bool { return !active(t, s, DeviceName("a")) }, 10*time.Second, 20*time.Millisecond,
		"removed at last close")
	require.NoError(t, s.Remove(ctx, "a"))
	_, err = s.Pool().Lookup(DeviceName("a"))
	assert.ErrorIs(t, err, thinpool.ErrNotFound)
}

// SyncRemove with deferred deletion of a held device: the layer is gone
// at once, its name taken until the device is closed, and then deleted at
// the next Create of that name.
func TestSyncRemoveDeferredDeletion(t *testing.T) {
	ctx := context.Background()
	o := testOptions(t)
	o.SyncRemove, o.DeferredRemoval, o.DeferredDeletion = true, true, true
	o.DeferredInterval = time.Hour // only Create retries
	s := openStore(t, o)
	require.NoError(t, s.Create(ctx, "a", "", 0))
	node, err := s.Activate(ctx, "a")
	require.NoError(t, err)
	f := holdDevice(t, node)
	require.NoError(t, s.Remove(ctx, "a"))
	assert.False(t, s.Exists("a"))
	layers, pend, err := s.Count()
	require.NoError(t, err)
	assert.Zero(t, layers)
	assert.Equal(t, 1, pend)
	dev, err := s.Pool().Lookup(DeviceName("a"))
	require.NoError(t, err)
	assert.True(t, dev.DeferredDelete)
	require.NoError(t, s.Remove(ctx, "a"), "a second Remove is fine")
	err = s.Create(ctx, "a", "", 0)
	assert.ErrorIs(t, err, ErrExists, "still being deleted")
	require.NoError(t, f.Close())
	require.Eventually(t, func() bool { return s.Create(ctx, "a", "", 0) == nil }, 10*time.Second, 50*time.Millisecond,
		"Create finishes the deletion once the device is closed")
	assert.True(t, s.Exists("a"))
	_, pend, err = s.Count()
	require.NoError(t, err)
	assert.Zero(t, pend)
	closeAndCheckIDs(t, s)
}

// A Put whose device is held elsewhere unmounts but says ErrBusy; a
// deactivation the worker cannot do (the device opened after Put) is kept
// and retried, Drain reports it when its context ends, and it is done
// once the device is released.
func TestIdleDeactivationRetried(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, testOptions(t))
	require.NoError(t, s.Create(ctx, "a", "", 0))
	require.NoError(t, s.Create(ctx, "b", "", 0))

	_, err := s.Get(ctx, "a", MountOptions{})
	require.NoError(t, err)
	l, err := s.Lookup("a")
	require.NoError(t, err)
	fa := holdDevice(t, l.Device.Path)
	err = s.Put(ctx, "a")
	assert.ErrorIs(t, err, ErrBusy)
	mounted, _ := s.Mounted("a")
	assert.False(t, mounted, "unmounted all the same")
	require.NoError(t, fa.Close())

	// A Put that cannot wait for the device to be closed ends with its
	// context.
	require.NoError(t, s.Create(ctx, "c", "", 0))
	_, err = s.Get(ctx, "c", MountOptions{})
	require.NoError(t, err)
	l, err = s.Lookup("c")
	require.NoError(t, err)
	fc := holdDevice(t, l.Device.Path)
	cctx, cancelPut := context.WithCancel(ctx)
	cancelPut()
	start := time.Now()
	err = s.Put(cctx, "c")
	assert.ErrorIs(t, err, ErrBusy)
	assert.ErrorIs(t, err, context.Canceled)
	assert.Less(t, time.Since(start), time.Second, "no wait once the context ended")
	mounted, _ = s.Mounted("c")
	assert.False(t, mounted)
	require.NoError(t, fc.Close())

	_, err = s.Get(ctx, "b", MountOptions{})
	require.NoError(t, err)
	resume := pauseWorker(s)
	require.NoError(t, s.Put(ctx, "b"))
	l, err = s.Lookup("b")
	require.NoError(t, err)
	fb := holdDevice(t, l.Device.Path)
	resume()
	dctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	err = s.Drain(dctx)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.ErrorIs(t, err, thinpool.ErrBusy)
	assert.ErrorContains(t, err, "1 left")
	deacts, _ := pending(t, s)
	assert.Equal(t, 1, deacts, "kept to do")
	assert.True(t, active(t, s, DeviceName("b")))
	require.NoError(t, fb.Close())
	require.NoError(t, s.Drain(ctx))
	deacts, _ = pending(t, s)
	assert.Zero(t, deacts)
	assert.False(t, active(t, s, DeviceName("b")))
	require.NoError(t, s.Close())
	assert.ErrorIs(t, s.Drain(ctx), ErrClosed)
	_, _, err = s.Pending()
	assert.ErrorIs(t, err, ErrClosed)
}

// A Get whose mount fails (mount data the filesystem refuses) leaves
// nothing: no mount, no mount point, the device not active.
func TestGetUndoneWhenMountFails(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, testOptions(t))
	require.NoError(t, s.Create(ctx, "a", "", 0))
	_, err := s.Get(ctx, "a", MountOptions{Data: "no_such_option"})
	assert.ErrorIs(t, err, unix.EINVAL)
	mounted, _ := s.Mounted("a")
	assert.False(t, mounted)
	assert.NoDirExists(t, s.mountPoint("a"))
	assert.False(t, active(t, s, DeviceName("a")))
	root, err := s.Get(ctx, "a", MountOptions{Flags: unix.MS_RDONLY})
	require.NoError(t, err)
	err = os.WriteFile(filepath.Join(root, "f"), nil, 0o644)
	assert.ErrorIs(t, err, unix.EROFS, "the mount flags are used")
	require.NoError(t, s.Put(ctx, "a"))
}

// mkfs refusing the base's mkfs arguments: the first Open fails, deletes
// the base device it made and writes no base.json; the next Open, with
// arguments mkfs takes, makes the base.
func TestCreateBaseFormatFails(t *testing.T) {
	testenv.RequireDM(t)
	ctx := context.Background()
	o := testOptions(t)
	o.MkfsArgs = []string{"-O", "no_such_feature"} // only mkfs.ext4 knows its features
	s, err := Open(ctx, o)
	if err == nil {
		require.NoError(t, s.Close())
	}
	require.Error(t, err)
	assert.ErrorContains(t, err, "format base device")
	assert.NoFileExists(t, filepath.Join(o.Root, baseRecordFile))
	withPool(t, o, func(p *thinpool.Pool) {
		_, err := p.Lookup(BaseDevice)
		assert.ErrorIs(t, err, thinpool.ErrNotFound, "the half-made base is deleted")
	})
	o.MkfsArgs = []string{"-O", "^metadata_csum"}
	s = openStore(t, o)
	require.NoError(t, s.Create(ctx, "a", "", 0))
	assert.True(t, s.Exists("a"))
}
