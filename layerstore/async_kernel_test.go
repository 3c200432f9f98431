package layerstore

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/dmthin/dmthin/thinpool"
)

// Kernel tests of the asynchronous removal and of the background
// deactivation at Put (worker.go).

// pauseWorker keeps the background worker from starting a pass until the
// returned function is called.
func pauseWorker(s *Store) (resume func()) {
	s.work.passMu.Lock()
	return s.work.passMu.Unlock
}

func pending(t *testing.T, s *Store) (deactivations, deletions int) {
	t.Helper()
	a, b, err := s.Pending()
	require.NoError(t, err)
	return a, b
}

func active(t *testing.T, s *Store, dev string) bool {
	t.Helper()
	d, err := s.Pool().Get(dev)
	require.NoError(t, err)
	return d.Active
}

// closeAndCheckIDs closes s and compares the thin ids of its records with
// those in the pool's metadata (thin_dump, offline).
func closeAndCheckIDs(t *testing.T, s *Store) {
	t.Helper()
	require.NoError(t, s.Drain(context.Background()), "Close would change the pool after the records are read")
	devs, err := s.Pool().List()
	require.NoError(t, err)
	var want []uint32
	for _, d := range devs {
		want = append(want, d.ID)
	}
	st, err := s.PoolStatus(context.Background())
	require.NoError(t, err)
	require.NotEmpty(t, st.MetadataFile)
	require.NoError(t, s.Close())
	assert.ElementsMatch(t, want, testenv.ThinIDs(t, st.MetadataFile), "thin ids in the pool's metadata vs the records")
}

// Remove returns with the layer gone and its name free, while its device
// is still waiting for deletion; the worker deletes it afterwards.
func TestRemoveFreesNameAtOnce(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, testOptions(t))
	require.NoError(t, s.Create(ctx, "a", "", 0))
	root, err := s.Get(ctx, "a", MountOptions{})
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(root, "old"), []byte("old\n"), 0o644))
	require.NoError(t, s.Put(ctx, "a"))

	resume := pauseWorker(s)
	require.NoError(t, s.Remove(ctx, "a"))
	assert.False(t, s.Exists("a"), "gone at once")
	_, err = s.Lookup("a")
	assert.ErrorIs(t, err, ErrNotFound)
	_, dels := pending(t, s)
	assert.Equal(t, 1, dels, "the old device is still to be deleted")
	layers, pend, err := s.Count()
	require.NoError(t, err)
	assert.Equal(t, 0, layers)
	assert.Equal(t, 1, pend)

	require.NoError(t, s.Create(ctx, "a", "", 0), "the name is free at once")
	root, err = s.Get(ctx, "a", MountOptions{})
	require.NoError(t, err)
	assert.NoFileExists(t, filepath.Join(root, "old"), "a new layer, not the old one")
	require.NoError(t, s.Put(ctx, "a"))
	_, dels = pending(t, s)
	assert.Equal(t, 1, dels)
	resume()

	require.NoError(t, s.Drain(ctx))
	deacts, dels := pending(t, s)
	assert.Zero(t, deacts)
	assert.Zero(t, dels)
	assert.True(t, s.Exists("a"))
	assert.False(t, active(t, s, DeviceName("a")), "drained: Put's deactivation done")
	closeAndCheckIDs(t, s)
}

// Put unmounts at once and leaves the deactivation to the worker; a Get in
// between reuses the active device.
func TestPutDeactivatesInBackground(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, testOptions(t))
	require.NoError(t, s.Create(ctx, "a", "", 0))
	_, err := s.Get(ctx, "a", MountOptions{})
	require.NoError(t, err)

	resume := pauseWorker(s)
	require.NoError(t, s.Put(ctx, "a"))
	mounted, _ := s.Mounted("a")
	assert.False(t, mounted, "unmounted when Put returns")
	assert.NoDirExists(t, s.mountPoint("a"))
	assert.True(t, active(t, s, DeviceName("a")), "deactivation is left to the worker")
	deacts, _ := pending(t, s)
	assert.Equal(t, 1, deacts)

	_, err = s.Get(ctx, "a", MountOptions{})
	require.NoError(t, err, "Get reuses the active device")
	deacts, _ = pending(t, s)
	assert.Zero(t, deacts, "in use again: not to be deactivated")
	resume()
	require.NoError(t, s.Drain(ctx))
	assert.True(t, active(t, s, DeviceName("a")), "mounted: the worker left it alone")

	require.NoError(t, s.Put(ctx, "a"))
	require.Eventually(t, func() bool { return !active(t, s, DeviceName("a")) }, 10*time.Second, 20*time.Millisecond,
		"the worker deactivates without being asked")
}

// A device the worker cannot delete (held open elsewhere; deferred
// deletion lets Remove go ahead) is retried with backoff and logged, not
// lost; it goes once released, without anyone asking.
func TestFailedDeleteRetried(t *testing.T) {
	ctx := context.Background()
	o := testOptions(t)
	o.DeferredRemoval, o.DeferredDeletion = true, true
	o.DeferredInterval = 400 * time.Millisecond // the longest backoff
	log, hook := logtest.NewNullLogger()
	o.Logger = log
	s := openStore(t, o)
	require.NoError(t, s.Create(ctx, "a", "", 0))
	node, err := s.Activate(ctx, "a")
	require.NoError(t, err)
	f, err := os.Open(node)
	require.NoError(t, err)

	require.NoError(t, s.Remove(ctx, "a"))
	assert.False(t, s.Exists("a"))
	require.NoError(t, s.Create(ctx, "a", "", 0), "the name is free while the old device is held")

	retries := func() int {
		n := 0
		for _, e := range hook.AllEntries() {
			if e.Level == logrus.WarnLevel && e.Message == "background work left undone; retrying" {
				n++
			}
		}
		return n
	}
	require.Eventually(t, func() bool { return retries() >= 3 }, 10*time.Second, 20*time.Millisecond, "retried and logged")
	_, dels := pending(t, s)
	assert.Equal(t, 1, dels, "not lost")
	var gaps []time.Duration
	var last time.Time
	for _, e := range hook.AllEntries() {
		if e.Message == "background work left undone; retrying" {
			assert.ErrorIs(t, e.Data[logrus.ErrorKey].(error), thinpool.ErrBusy)
			if !last.IsZero() {
				gaps = append(gaps, e.Time.Sub(last))
			}
			last = e.Time
		}
	}
	require.GreaterOrEqual(t, len(gaps), 2)
	assert.Greater(t, gaps[1], gaps[0], "backoff grows: %v", gaps)

	require.NoError(t, f.Close())
	require.Eventually(t, func() bool { _, d := pending(t, s); return d == 0 }, 10*time.Second, 20*time.Millisecond,
		"deleted once released, without Drain")
	assert.True(t, s.Exists("a"))
	closeAndCheckIDs(t, s)
}

// Close finishes the deletions the worker had not done yet.
func TestCloseDrains(t *testing.T) {
	testenv.RequireDM(t)
	ctx := context.Background()
	o := testOptions(t)
	s, err := Open(ctx, o)
	require.NoError(t, err)
	resume := pauseWorker(s)
	for _, n := range []string{"a", "b", "c"} {
		require.NoError(t, s.Create(ctx, n, "", 0))
		_, err := s.Get(ctx, n, MountOptions{})
		require.NoError(t, err)
		require.NoError(t, s.Put(ctx, n))
		require.NoError(t, s.Remove(ctx, n))
	}
	_, dels := pending(t, s)
	require.Equal(t, 3, dels)
	resume()
	st, err := s.PoolStatus(ctx)
	require.NoError(t, err)
	require.NoError(t, s.Close())
	ids := testenv.ThinIDs(t, st.MetadataFile)
	assert.Len(t, ids, 1, "only the base device is left in the pool: %v", ids)
}

// A deletion Close cannot finish (the device is held elsewhere) stays
// recorded, and the next Open's worker finishes it.
func TestCloseLeavesRecord(t *testing.T) {
	testenv.RequireDM(t)
	ctx := context.Background()
	o := testOptions(t)
	o.DeferredRemoval, o.DeferredDeletion = true, true
	s, err := Open(ctx, o)
	require.NoError(t, err)
	require.NoError(t, s.Create(ctx, "b", "", 0))
	node, err := s.Activate(ctx, "b")
	require.NoError(t, err)
	f, err := os.Open(node)
	require.NoError(t, err)
	require.NoError(t, s.Remove(ctx, "b"))
	err = s.Close()
	assert.ErrorIs(t, err, thinpool.ErrBusy, "Close cannot deactivate a device held elsewhere")
	require.NoError(t, f.Close())

	s = openStore(t, o)
	require.Eventually(t, func() bool { _, d := pending(t, s); return d == 0 }, 10*time.Second, 20*time.Millisecond,
		"the next Open's worker deletes it")
	assert.False(t, s.Exists("b"))
	closeAndCheckIDs(t, s)
}

// With SyncRemove, Remove deletes the device before it returns.
func TestSyncRemove(t *testing.T) {
	ctx := context.Background()
	o := testOptions(t)
	o.SyncRemove = true
	s := openStore(t, o)
	require.NoError(t, s.Create(ctx, "a", "", 0))
	_, err := s.Get(ctx, "a", MountOptions{})
	require.NoError(t, err)
	require.NoError(t, s.Put(ctx, "a"))
	resume := pauseWorker(s)
	require.NoError(t, s.Remove(ctx, "a"))
	_, err = s.Pool().Lookup(DeviceName("a"))
	assert.ErrorIs(t, err, thinpool.ErrNotFound, "deleted, not retired")
	_, dels := pending(t, s)
	assert.Zero(t, dels)
	resume()
	closeAndCheckIDs(t, s)
}
