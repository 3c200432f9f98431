package layerstore

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/go-units"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/dmthin/dmthin/thinpool"
)

// Kernel tests of what Open settles: a base device a run left half-made or
// that does not match base.json, the temporary mounts of the base and the
// mounts under mnt/ that an earlier process left behind.

// stepSwitch is a StepHook whose action a test changes while the store
// runs (the worker calls the hook from its own goroutine).
type stepSwitch struct {
	mu    sync.Mutex
	f     func(step string)
	steps []string
}

func (h *stepSwitch) hook(step string) {
	h.mu.Lock()
	f := h.f
	h.steps = append(h.steps, step)
	h.mu.Unlock()
	if f != nil {
		f(step)
	}
}

func (h *stepSwitch) set(f func(step string)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.f, h.steps = f, nil
}

func (h *stepSwitch) seen() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.steps...)
}

// dmNames lists the device-mapper devices whose name starts with prefix.
func dmNames(t *testing.T, prefix string) []string {
	t.Helper()
	paths, err := filepath.Glob("/sys/block/dm-*/dm/name")
	require.NoError(t, err)
	var names []string
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // removed meanwhile
		}
		if n := strings.TrimSpace(string(b)); strings.HasPrefix(n, prefix) {
			names = append(names, n)
		}
	}
	return names
}

// poolPrefix is the prefix of every device-mapper name of s's pool.
func poolPrefix(s *Store) string { return strings.TrimSuffix(s.Pool().Name(), "pool") }

// withPool opens the pool of the (closed) store o describes on its own,
// as another tool would, runs f and shuts the pool down.
func withPool(t *testing.T, o Options, f func(p *thinpool.Pool)) {
	t.Helper()
	popts := o.Pool
	popts.Root = o.Root
	p, err := thinpool.Open(context.Background(), popts)
	require.NoError(t, err)
	defer func() { require.NoError(t, p.Shutdown(context.Background())) }()
	f(p)
}

func readRecord(t *testing.T, o Options) baseRecord {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(o.Root, baseRecordFile))
	require.NoError(t, err)
	var r baseRecord
	require.NoError(t, json.Unmarshal(data, &r))
	return r
}

func writeRecord(t *testing.T, o Options, r baseRecord) {
	t.Helper()
	data, err := json.Marshal(r)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(o.Root, baseRecordFile), data, 0o600))
}

// openFails opens a store that must fail with want, and checks that the
// failed Open left no device of the pool behind.
func openFails(t *testing.T, o Options, prefix string, want error) error {
	t.Helper()
	s, err := Open(context.Background(), o)
	if err == nil {
		_ = s.Close()
	}
	require.ErrorIs(t, err, want)
	assert.Empty(t, dmNames(t, prefix), "a failed Open leaves nothing of the pool active")
	return err
}

// What Open does with a base device and base.json that disagree: a base
// whose record is lost is made again if no layer was made from it,
// refused otherwise; a record that names another filesystem, a base that
// is missing or unformatted is refused; a base recorded but not yet marked
// complete is completed; an old record without the filled size grows the
// filesystem once.
func TestOpenSettlesBase(t *testing.T) {
	testenv.RequireDM(t)
	ctx := context.Background()
	o := testOptions(t)
	steps := &stepSwitch{}
	o.StepHook = steps.hook
	s, err := Open(ctx, o)
	require.NoError(t, err)
	prefix := poolPrefix(s)
	require.NoError(t, s.Create(ctx, "a", "", 0))
	root, err := s.Get(ctx, "a", MountOptions{})
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(root, "f"), []byte("a\n"), 0o644))
	require.NoError(t, s.Put(ctx, "a"))
	require.NoError(t, s.Close())
	rec := readRecord(t, o)
	assert.Equal(t, int64(64*units.MiB), rec.FilledSize)

	// Recorded, but killed before the base was marked complete.
	withPool(t, o, func(p *thinpool.Pool) {
		require.NoError(t, p.SetLabels(ctx, BaseDevice, stateLabels(StateIncomplete)))
	})
	s, err = Open(ctx, o)
	require.NoError(t, err)
	base, err := s.Pool().Lookup(BaseDevice)
	require.NoError(t, err)
	assert.Empty(t, LayerState(base), "a recorded base that matches is complete")
	assert.True(t, s.Exists("a"))
	require.NoError(t, s.Close())
	assert.Equal(t, rec, readRecord(t, o), "the same base")

	// A record written before FilledSize existed: grown once, recorded.
	old := rec
	old.FilledSize = 0
	writeRecord(t, o, old)
	steps.set(nil)
	s, err = Open(ctx, o)
	require.NoError(t, err)
	assert.Contains(t, steps.seen(), StepBaseMounted, "mounted to grow")
	require.NoError(t, s.Close())
	assert.Equal(t, rec, readRecord(t, o), "the filled size is recorded again")

	// A base size below the base device's.
	small := o
	small.BaseSize = 32 * units.MiB
	err = openFails(t, small, prefix, ErrInvalidOptions)
	var fe *FieldError
	require.ErrorAs(t, err, &fe)
	assert.Equal(t, "BaseSize", fe.Field)

	// A record of another filesystem.
	other := rec
	other.UUID = "00000000-0000-4000-8000-000000000000"
	writeRecord(t, o, other)
	err = openFails(t, o, prefix, ErrBaseMismatch)
	assert.ErrorContains(t, err, other.UUID)

	// The record lost while layers exist: refused, nothing deleted.
	require.NoError(t, os.Remove(filepath.Join(o.Root, baseRecordFile)))
	err = openFails(t, o, prefix, ErrBaseMismatch)
	assert.ErrorContains(t, err, "has layers")
	writeRecord(t, o, rec)
	s, err = Open(ctx, o)
	require.NoError(t, err, "restoring base.json restores the store")
	root, err = s.Get(ctx, "a", MountOptions{})
	require.NoError(t, err)
	b, err := os.ReadFile(filepath.Join(root, "f"))
	require.NoError(t, err)
	assert.Equal(t, "a\n", string(b))
	require.NoError(t, s.Put(ctx, "a"))
	require.NoError(t, s.Close())

	// base.json of this root behind another root, whose pool has no base.
	o2 := testOptions(t)
	require.NoError(t, os.MkdirAll(o2.Root, 0o700))
	var prefix2 string
	withPool(t, o2, func(p *thinpool.Pool) { prefix2 = strings.TrimSuffix(p.Name(), "pool") })
	writeRecord(t, o2, rec)
	err = openFails(t, o2, prefix2, ErrBaseMismatch)
	assert.ErrorContains(t, err, "has no base device")

	// A base device that holds no filesystem (zeroed behind the store).
	withPool(t, o, func(p *thinpool.Pool) {
		node, err := p.Activate(ctx, BaseDevice)
		require.NoError(t, err)
		f, err := os.OpenFile(node, os.O_WRONLY, 0)
		require.NoError(t, err)
		_, err = f.Write(make([]byte, units.MiB))
		require.NoError(t, errors.Join(err, f.Sync(), f.Close()))
		require.NoError(t, p.Deactivate(ctx, BaseDevice, false))
	})
	err = openFails(t, o, prefix, ErrBaseMismatch)
	assert.ErrorContains(t, err, "holds no ext4 filesystem")
}

// A base device without base.json from which no layer was made is made
// again, whether it carries the incomplete label (killed while formatting)
// or not (made by a version that did not label it).
func TestOpenRemakesHalfMadeBase(t *testing.T) {
	testenv.RequireDM(t)
	ctx := context.Background()
	o := testOptions(t)
	o.RootfsDir = "rootfs"
	s, err := Open(ctx, o)
	require.NoError(t, err)
	prefix := poolPrefix(s)
	require.NoError(t, s.Close())
	first := readRecord(t, o)

	for _, label := range []string{"", StateIncomplete} {
		require.NoError(t, os.Remove(filepath.Join(o.Root, baseRecordFile)))
		if label != "" {
			withPool(t, o, func(p *thinpool.Pool) {
				require.NoError(t, p.SetLabels(ctx, BaseDevice, stateLabels(label)))
			})
		}
		s, err = Open(ctx, o)
		require.NoError(t, err, "label %q", label)
		base, err := s.Pool().Lookup(BaseDevice)
		require.NoError(t, err)
		assert.Empty(t, LayerState(base))
		require.NoError(t, s.Create(ctx, "a", "", 0))
		root, err := s.Get(ctx, "a", MountOptions{})
		require.NoError(t, err)
		assert.Equal(t, filepath.Join(s.Root(), "mnt", "a", "rootfs"), root, "the new base has its rootfs directory")
		assert.DirExists(t, root)
		require.NoError(t, s.Put(ctx, "a"))
		require.NoError(t, s.Remove(ctx, "a"))
		require.NoError(t, s.Close())
		assert.Empty(t, dmNames(t, prefix))
		rec := readRecord(t, o)
		assert.NotEqual(t, first.UUID, rec.UUID, "label %q: a new base filesystem", label)
		first = rec
	}
}

// A process killed while the base was on its temporary mount point, and
// with layers mounted under mnt/: Open unmounts the base's mount, adopts
// the layers mounted under their own name, unmounts devices of the pool
// mounted under another name or of a layer cut short, removes empty mount
// points, and leaves alone what is not the pool's.
func TestOpenAdoptsAndCleansMounts(t *testing.T) {
	testenv.RequireDM(t)
	ctx := context.Background()
	o := testOptions(t)
	s1, err := Open(ctx, o)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s1.Close() })
	prefix := poolPrefix(s1)
	for _, n := range []string{"a", "b"} {
		require.NoError(t, s1.Create(ctx, n, "", 0))
	}
	root, err := s1.Get(ctx, "a", MountOptions{})
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(root, "f"), []byte("a\n"), 0o644))

	// The base on a temporary mount point, as while formatting or growing.
	baseNode, err := s1.Pool().Activate(ctx, BaseDevice)
	require.NoError(t, err)
	baseMp := filepath.Join(s1.Root(), baseMountPrefix+"crashed")
	require.NoError(t, mountDevice(baseNode, baseMp, "ext4", 0, ""))
	// Layer b's device under a name that is not b's.
	bNode, err := s1.Activate(ctx, "b")
	require.NoError(t, err)
	wrong := filepath.Join(s1.Root(), "mnt", "wrong")
	require.NoError(t, mountDevice(bNode, wrong, "ext4", 0, ""))
	// A layer cut short while it was mounted to grow.
	_, err = s1.Pool().Snapshot(ctx, DeviceName("half"), BaseDevice, 0, thinpool.WithLabels(stateLabels(StateIncomplete)))
	require.NoError(t, err)
	halfNode, err := s1.Pool().Activate(ctx, DeviceName("half"))
	require.NoError(t, err)
	halfMp := filepath.Join(s1.Root(), "mnt", "half")
	require.NoError(t, mountDevice(halfNode, halfMp, "ext4", 0, ""))
	// Someone else's mount, an empty mount point, a file.
	foreign := filepath.Join(s1.Root(), "mnt", "foreign")
	require.NoError(t, mountDevice("tmpfs", foreign, "tmpfs", 0, "size=1m"))
	t.Cleanup(func() { _ = unmountAll(foreign) })
	require.NoError(t, os.Mkdir(filepath.Join(s1.Root(), "mnt", "empty"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(s1.Root(), "mnt", "file"), nil, 0o600))

	require.NoError(t, s1.Pool().Close()) // the process dies

	s := openStore(t, o)
	mounted, refs := s.Mounted("a")
	assert.True(t, mounted, "a is adopted")
	assert.Zero(t, refs)
	b, err := os.ReadFile(filepath.Join(root, "f"))
	require.NoError(t, err, "still mounted")
	assert.Equal(t, "a\n", string(b))
	assert.NoDirExists(t, baseMp, "the base's temporary mount is gone")
	assert.NoDirExists(t, wrong, "b's device under another name is unmounted")
	mounted, _ = s.Mounted("b")
	assert.False(t, mounted)
	assert.NoDirExists(t, halfMp, "the layer cut short is unmounted")
	_, err = s.Pool().Lookup(DeviceName("half"))
	assert.ErrorIs(t, err, thinpool.ErrNotFound, "and rolled back")
	assert.NoDirExists(t, filepath.Join(s.Root(), "mnt", "empty"))
	assert.FileExists(t, filepath.Join(s.Root(), "mnt", "file"), "not a mount point: left alone")
	isMnt, _, err := mountedDev(foreign)
	require.NoError(t, err)
	assert.True(t, isMnt, "someone else's mount is left alone")

	// The adopted mount is the store's: Get shares it, Put unmounts it.
	root2, err := s.Get(ctx, "a", MountOptions{})
	require.NoError(t, err)
	assert.Equal(t, root, root2)
	_, refs = s.Mounted("a")
	assert.Equal(t, 1, refs)
	_, err = s.Get(ctx, "a", MountOptions{})
	require.NoError(t, err)
	assert.ErrorIs(t, s.Remove(ctx, "a"), ErrBusy, "Gets not yet Put")
	require.NoError(t, s.Put(ctx, "a"))
	mounted, refs = s.Mounted("a")
	assert.True(t, mounted, "one Get is left")
	assert.Equal(t, 1, refs)
	assert.FileExists(t, filepath.Join(root, "f"))
	require.NoError(t, s.Put(ctx, "a"))
	mounted, _ = s.Mounted("a")
	assert.False(t, mounted)
	assert.NoDirExists(t, s.mountPoint("a"))
	require.NoError(t, s.Drain(ctx))
	assert.False(t, active(t, s, DeviceName("b")), "b's device left active is deactivated by the worker")

	require.NoError(t, unmountAll(foreign))
	require.NoError(t, s.Close())
	assert.Empty(t, dmNames(t, prefix))
}

// Layers a killed process left marked: one being removed (SyncRemove,
// killed after the mark) is deleted, one cut short while made is rolled
// back, and one being removed whose device is held elsewhere does not stop
// Open: it does not exist, and a Remove once it is released deletes it.
func TestOpenSettlesLayers(t *testing.T) {
	testenv.RequireDM(t)
	ctx := context.Background()
	o := testOptions(t)
	s1, err := Open(ctx, o)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s1.Close() })
	for _, n := range []string{"keep", "removing", "held"} {
		require.NoError(t, s1.Create(ctx, n, "", 0))
	}
	for _, n := range []string{"removing", "held"} {
		require.NoError(t, s1.Pool().SetLabels(ctx, DeviceName(n), stateLabels(StateRemoving)))
	}
	_, err = s1.Pool().Snapshot(ctx, DeviceName("half"), BaseDevice, 0, thinpool.WithLabels(stateLabels(StateIncomplete)))
	require.NoError(t, err)
	node, err := s1.Pool().Activate(ctx, DeviceName("held"))
	require.NoError(t, err)
	f, err := os.Open(node)
	require.NoError(t, err)
	t.Cleanup(func() { _ = f.Close() })
	require.NoError(t, s1.Pool().Close()) // the process dies

	s := openStore(t, o)
	for _, n := range []string{"removing", "half"} {
		_, err := s.Pool().Lookup(DeviceName(n))
		assert.ErrorIs(t, err, thinpool.ErrNotFound, "%s: settled at Open", n)
	}
	assert.True(t, s.Exists("keep"))
	assert.False(t, s.Exists("held"))
	dev, err := s.Pool().Lookup(DeviceName("held"))
	require.NoError(t, err, "held elsewhere: left for later")
	assert.Equal(t, StateRemoving, LayerState(dev))
	layers, pend, err := s.Count()
	require.NoError(t, err)
	assert.Equal(t, 1, layers)
	assert.Equal(t, 1, pend)
	assert.ElementsMatch(t, []string{"keep"}, layerNames(t, s))

	assert.ErrorIs(t, s.Remove(ctx, "held"), ErrBusy)
	require.NoError(t, f.Close())
	require.NoError(t, s.Remove(ctx, "held"))
	_, err = s.Pool().Lookup(DeviceName("held"))
	assert.ErrorIs(t, err, thinpool.ErrNotFound)
	closeAndCheckIDs(t, s)
}

// A half-made base that is still held open when Open starts (the mkfs of
// the run that was killed is exiting, or a blkid of udev's) is waited
// for, within a bound, instead of failing Open with ErrBusy.
func TestOpenWaitsForTheLastOpenerOfAHalfMadeBase(t *testing.T) {
	testenv.RequireDM(t)
	ctx := context.Background()
	o := testOptions(t)
	s, err := Open(ctx, o)
	require.NoError(t, err)
	require.NoError(t, s.Close())
	require.NoError(t, os.Remove(filepath.Join(o.Root, baseRecordFile)))
	popts := o.Pool
	popts.Root = o.Root
	p, err := thinpool.Open(ctx, popts)
	require.NoError(t, err)
	require.NoError(t, p.SetLabels(ctx, BaseDevice, stateLabels(StateIncomplete)))
	node, err := p.Activate(ctx, BaseDevice)
	require.NoError(t, err)
	holder, err := os.Open(node)
	require.NoError(t, err)
	require.NoError(t, p.Close())
	const held = 1500 * time.Millisecond
	released := make(chan struct{})
	go func() {
		time.Sleep(held)
		_ = holder.Close()
		close(released)
	}()
	start := time.Now()
	s, err = Open(ctx, o)
	<-released
	require.NoError(t, err, "Open waits for the half-made base's last opener")
	assert.GreaterOrEqual(t, time.Since(start), held-100*time.Millisecond)
	require.NoError(t, s.Create(ctx, "a", "", 0))
	require.NoError(t, s.Close())
}
