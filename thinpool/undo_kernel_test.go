//go:build dmthin_kernel

package thinpool

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	logtest "github.com/sirupsen/logrus/hooks/test"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/devmapper"
	"github.com/dmthin/dmthin/internal/testenv"
)

// The undo paths: an ioctl fails half-way through an operation (the fault
// is injected in the device-mapper client, the kernel sees nothing of the
// failed call), and the operation must return the kernel's errno, leave
// nothing half-made in the kernel or the store, and work once the fault is
// gone.

// faults fails the ioctls it is told to, each the given number of times.
type faults struct {
	mu   sync.Mutex
	left map[string]int // op+" "+dm name (or "*suffix") -> failures left
	hits int
}

func (f *faults) fail(op, name string, times int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.left == nil {
		f.left = map[string]int{}
	}
	f.left[op+" "+name] = times
}

func (f *faults) fault(op, name string) unix.Errno {
	f.mu.Lock()
	defer f.mu.Unlock()
	for k, n := range f.left {
		kop, pat, _ := strings.Cut(k, " ")
		if n == 0 || kop != op {
			continue
		}
		// "name", or "*suffix" for any name ending so ("*" for any).
		if pat == name || (strings.HasPrefix(pat, "*") && strings.HasSuffix(name, pat[1:])) {
			f.left[k]--
			f.hits++
			return unix.EIO
		}
	}
	return 0
}

// injectFaults gives p a device-mapper client that consults f; stop puts
// the pool's own client back.
func injectFaults(t *testing.T, p *Pool, f *faults) (stop func()) {
	t.Helper()
	c, err := devmapper.Open(devmapper.Options{NodeDir: p.opts.DeviceDir, Fault: f.fault})
	require.NoError(t, err)
	old := p.dm
	p.dm = c
	var once sync.Once
	stop = func() {
		once.Do(func() {
			if p.closed {
				// Close closed the client it had, c.
				_ = old.Close()
				return
			}
			p.dm = old
			assert.NoError(t, c.Close())
		})
	}
	t.Cleanup(stop)
	return stop
}

func requireNoDM(t *testing.T, p *Pool, name string) {
	t.Helper()
	_, err := p.dm.Info(p.dmName(name))
	assert.True(t, devmapper.IsNotFound(err), "dm device of %q left: %v", name, err)
}

// Activate: create, load, resume; each failure removes the device again.
func TestActivateUndo(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	_, err := tp.Create(ctx, "a", 16*MiB)
	require.NoError(t, err)
	f := &faults{}
	stop := injectFaults(t, tp.Pool, f)
	for _, op := range []string{"DM_DEV_CREATE", "DM_TABLE_LOAD", "DM_DEV_RESUME"} {
		f.fail(op, tp.dmName("a"), 1)
		_, err := tp.Activate(ctx, "a")
		require.Error(t, err, op)
		assert.ErrorIs(t, err, unix.EIO, op)
		requireNoDM(t, tp.Pool, "a")
		d, err := tp.Get("a")
		require.NoError(t, err)
		assert.Equal(t, StateReady, d.State, "the record is untouched by a failed %s", op)
	}
	stop()
	path, err := tp.Activate(ctx, "a")
	require.NoError(t, err)
	writeFile(t, path, 0, pattern(2, MiB))
	assertPoolMatchesRecords(t, tp.Pool)
}

// Snapshot of an active origin: a failed suspend makes nothing; a failed
// resume after the snapshot was made says so and names the device, and
// the origin does not stay suspended for long (resume is retried).
func TestSnapshotUndo(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	_, err := tp.Create(ctx, "o", 16*MiB)
	require.NoError(t, err)
	opath, err := tp.Activate(ctx, "o")
	require.NoError(t, err)
	data := pattern(4, MiB)
	writeFile(t, opath, 0, data)
	f := &faults{}
	stop := injectFaults(t, tp.Pool, f)

	f.fail("DM_DEV_SUSPEND", tp.dmName("o"), 1)
	_, err = tp.Snapshot(ctx, "s1", "o", 0)
	require.Error(t, err)
	assert.ErrorIs(t, err, unix.EIO)
	_, err = tp.Get("s1")
	assert.ErrorIs(t, err, ErrNotFound, "a snapshot whose origin could not be suspended is not made")

	// The first resume fails, the retry works.
	f.fail("DM_DEV_RESUME", tp.dmName("o"), 1)
	_, err = tp.Snapshot(ctx, "s2", "o", 0)
	require.NoError(t, err, "a resume that works on retry")
	info, err := tp.dm.Info(tp.dmName("o"))
	require.NoError(t, err)
	assert.False(t, info.Suspended)
	stop()
	spath, err := tp.Activate(ctx, "s2")
	require.NoError(t, err)
	assert.Equal(t, data, readFile(t, spath, 0, MiB))
	assertPoolMatchesRecords(t, tp.Pool)
}

// A reload that fails to load or to suspend leaves the live table and
// clears what it loaded; Resize puts the record back.
func TestReloadUndo(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	_, err := tp.Create(ctx, "r", 16*MiB)
	require.NoError(t, err)
	_, err = tp.Activate(ctx, "r")
	require.NoError(t, err)
	f := &faults{}
	stop := injectFaults(t, tp.Pool, f)
	for _, op := range []string{"DM_TABLE_LOAD", "DM_DEV_SUSPEND"} {
		f.fail(op, tp.dmName("r"), 1)
		err := tp.Resize(ctx, "r", 32*MiB)
		require.Error(t, err, op)
		assert.ErrorIs(t, err, unix.EIO, op)
		info, err := tp.dm.Info(tp.dmName("r"))
		require.NoError(t, err)
		assert.False(t, info.Suspended || info.InactiveTable, "after a failed %s: %+v", op, info)
		d, err := tp.Get("r")
		require.NoError(t, err)
		assert.Equal(t, int64(16*MiB), d.Size, "record put back after a failed %s", op)
	}
	stop()
	require.NoError(t, tp.Resize(ctx, "r", 32*MiB))
}

// Delete: a dm device that cannot be removed (not busy: an error) leaves
// a record marked deleting that the next Open finishes.
func TestDeleteFinishedByOpenAfterRemoveFails(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	_, err := tp.Create(ctx, "d", 16*MiB)
	require.NoError(t, err)
	_, err = tp.Activate(ctx, "d")
	require.NoError(t, err)
	f := &faults{}
	stop := injectFaults(t, tp.Pool, f)
	f.fail("DM_DEV_REMOVE", tp.dmName("d"), 1)
	err = tp.Delete(ctx, "d", DeleteOptions{})
	require.Error(t, err)
	assert.ErrorIs(t, err, unix.EIO)
	assert.ErrorContains(t, err, "recovery finishes it")
	stop()
	d, err := tp.Get("d")
	require.NoError(t, err)
	assert.Equal(t, StateDeleting, d.State)
	opts := tp.opts
	require.NoError(t, tp.Close())
	p, err := Open(ctx, opts)
	require.NoError(t, err)
	tp.Pool = p
	_, err = p.Get("d")
	assert.ErrorIs(t, err, ErrNotFound, "Open finished the delete")
	requireNoDM(t, p, "d")
	assertPoolMatchesRecords(t, p)
}

// Shutdown that cannot remove the pool device says so and leaves the
// pool usable by the next Open; the next Shutdown works.
func TestShutdownUndo(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	_, err := tp.Create(ctx, "a", 16*MiB)
	require.NoError(t, err)
	_, err = tp.Activate(ctx, "a")
	require.NoError(t, err)
	opts := tp.opts
	f := &faults{}
	injectFaults(t, tp.Pool, f)
	f.fail("DM_DEV_REMOVE", tp.name, 10)
	err = tp.Shutdown(ctx)
	require.Error(t, err)
	assert.ErrorIs(t, err, unix.EIO)
	p, err := Open(ctx, opts)
	require.NoError(t, err, "what a failed Shutdown left opens")
	tp.Pool = p
	_, err = p.Activate(ctx, "a")
	require.NoError(t, err)
}

// Open: a pool device that cannot be made (its table refused) fails Open
// with the errno and leaves no dm device and no loop device; the next
// Open makes the pool.
func TestOpenUndo(t *testing.T) {
	testenv.RequireDM(t)
	ctx := context.Background()
	root := filepath.Join(t.TempDir(), "pool")
	opts := smallOptions(root)
	f := &faults{}
	f.fail("DM_TABLE_LOAD", "*", 1)
	openFault = f.fault
	_, err := Open(ctx, opts)
	openFault = nil
	require.Error(t, err)
	assert.ErrorIs(t, err, unix.EIO)
	assert.Equal(t, 1, f.hits)
	loops, err := filepath.Glob("/sys/block/loop*/loop/backing_file")
	require.NoError(t, err)
	for _, l := range loops {
		bf, err := os.ReadFile(l)
		if err == nil {
			assert.False(t, strings.HasPrefix(strings.TrimSpace(string(bf)), root), "loop device over %s left", bf)
		}
	}
	st, err := openStore(filepath.Join(root, "metadata.db"))
	require.NoError(t, err)
	prefix, err := st.metaString(keyPrefix)
	require.NoError(t, err)
	require.NoError(t, st.close())
	require.NotEmpty(t, prefix)
	c, err := devmapper.Open(devmapper.Options{})
	require.NoError(t, err)
	defer c.Close()
	devs, err := c.List()
	require.NoError(t, err)
	for _, d := range devs {
		assert.False(t, strings.HasPrefix(d.Name, prefix), "device %s left by a failed Open", d.Name)
	}

	tp := openPool(t, func(o *Options) { o.Root = root })
	_, err = tp.Create(ctx, "a", 16*MiB)
	require.NoError(t, err, "the next Open makes the pool")
}

// Open on a whole disk whose linear devices or pool cannot be made: the
// error has the errno, nothing is left in the kernel, and the next Open
// goes on from the label the first wrote.
func TestDirectOpenUndo(t *testing.T) {
	ctx := context.Background()
	for _, dev := range []string{directMetaSuffix, directDataSuffix, "-pool"} {
		t.Run(strings.TrimPrefix(dev, "-"), func(t *testing.T) {
			d := newDisk(t, 256*MiB)
			opts := directOptions(t, d.loop.Path())
			f := &faults{}
			f.fail("DM_TABLE_LOAD", "*"+dev, 1)
			openFault = f.fault
			_, err := Open(ctx, opts)
			openFault = nil
			require.Error(t, err)
			assert.ErrorIs(t, err, unix.EIO)
			require.Equal(t, 1, f.hits)
			st, err := openStore(filepath.Join(opts.Root, "metadata.db"))
			require.NoError(t, err)
			prefix, err := st.metaString(keyPrefix)
			require.NoError(t, err)
			require.NoError(t, st.close())
			assertNoDevicesOf(t, prefix)
			p := openDirect(t, opts)
			_, err = p.Create(ctx, "a", 16*MiB)
			require.NoError(t, err)
			path, err := p.Activate(ctx, "a")
			require.NoError(t, err)
			writeFile(t, path, 0, pattern(9, MiB))
		})
	}
}

// The growth loop retries a growth whose reload failed: a writer that
// outruns the pool meanwhile waits (its writes are queued) and succeeds,
// the failure is logged once, and the pool ends up grown.
func TestAutoGrowRetriesAfterAFailedReload(t *testing.T) {
	old := autoGrowInterval
	autoGrowInterval = 200 * time.Millisecond
	t.Cleanup(func() { autoGrowInterval = old })
	logger, hook := logtest.NewNullLogger()
	tp := openPool(t, growOptions(logger, AutoGrow{ThresholdPercent: 50, StepPercent: 100, MaxDataSize: 512 * MiB}))
	ctx := context.Background()
	_, err := tp.Create(ctx, "big", 256*MiB)
	require.NoError(t, err)
	path, err := tp.Activate(ctx, "big")
	require.NoError(t, err)
	f := &faults{}
	f.fail("DM_TABLE_LOAD", tp.name, 2)
	injectFaults(t, tp.Pool, f)

	n, err := directWrite(t, path, 0, 96*MiB, MiB)
	require.NoError(t, err, "after %d MiB", n/MiB)
	assert.Equal(t, 2, f.hits, "both injected failures were met")
	assert.Equal(t, 1, logged(hook, "thin pool auto-grow"), "the same failure is logged once")
	st, err := tp.Status(ctx)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, st.DataTotal, int64(96*MiB))
	assert.Equal(t, devmapper.PoolReadWrite, st.Mode)
	fi, err := os.Stat(tp.dataPath)
	require.NoError(t, err)
	assert.Equal(t, st.DataTotal, fi.Size(), "the table covers the whole data file")
	assert.Equal(t, pattern(byte(50), MiB), readFile(t, path, 50*MiB, MiB))
}

// Retire of an active device whose rename fails deactivates it instead:
// the name is free, the tombstone holds the thin id for the caller's
// Delete.
func TestRetireDeactivatesWhenRenameFails(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	_, err := tp.Create(ctx, "x", 16*MiB)
	require.NoError(t, err)
	_, err = tp.Activate(ctx, "x")
	require.NoError(t, err)
	f := &faults{}
	f.fail("DM_DEV_RENAME", tp.dmName("x"), 1)
	stop := injectFaults(t, tp.Pool, f)
	d, err := tp.Retire(ctx, "x", RetireOptions{})
	require.NoError(t, err)
	stop()
	assert.Equal(t, 1, f.hits)
	requireNoDM(t, tp.Pool, "x")
	_, err = tp.Get("x")
	assert.ErrorIs(t, err, ErrNotFound, "the name is free")
	_, err = tp.Create(ctx, "x", 16*MiB)
	require.NoError(t, err)
	require.NoError(t, tp.Delete(ctx, d.Name, DeleteOptions{Discard: true}))
	assertPoolMatchesRecords(t, tp.Pool)
}

// A stray device Open cannot remove is reported, not fatal; the next
// Open removes it.
func TestOpenReportsStrayItCannotRemove(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	opts := tp.opts
	stray := tp.prefix + "-stray"
	_, err := tp.dm.Activate(stray, "", devmapper.Table{{Length: 8, Params: devmapper.RawParams{Type: "error"}}}, false)
	require.NoError(t, err)
	t.Cleanup(func() { _ = tp.dm.Remove(stray, devmapper.RemoveOptions{}) })
	require.NoError(t, tp.Close())
	f := &faults{}
	f.fail("DM_DEV_REMOVE", stray, 100)
	openFault = f.fault
	p, err := Open(ctx, opts)
	openFault = nil
	require.NoError(t, err, "a stray that cannot be removed does not stop Open")
	tp.Pool = p
	st, err := p.Status(ctx)
	require.NoError(t, err)
	require.Len(t, st.FaultyDevices, 1)
	assert.Equal(t, stray, st.FaultyDevices[0].Name)
	assert.Contains(t, st.FaultyDevices[0].Reason, "input/output error")
	require.NoError(t, p.Close())
	p, err = Open(ctx, opts)
	require.NoError(t, err)
	tp.Pool = p
	st, err = p.Status(ctx)
	require.NoError(t, err)
	assert.Empty(t, st.FaultyDevices)
	_, err = p.dm.Info(stray)
	assert.True(t, devmapper.IsNotFound(err), "the next Open removed the stray")
}

// A record Open cannot settle (the probe of its thin id fails, the delete
// it must finish fails) is marked faulty with the reason and Open starts
// anyway, as an engine must: the device is reported (Status), never
// handed out, and Delete removes it once the kernel answers again.
func TestOpenMarksWhatItCannotSettleFaulty(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	opts := tp.opts
	_, err := tp.Create(ctx, "creating", 16*MiB)
	require.NoError(t, err)
	_, err = tp.Create(ctx, "deleting", 16*MiB)
	require.NoError(t, err)
	_, err = tp.Activate(ctx, "deleting")
	require.NoError(t, err)
	// What crashes leave: a create whose outcome was not recorded, a
	// delete that was marked and not done.
	for name, st := range map[string]State{"creating": StateCreating, "deleting": StateDeleting} {
		rec, err := tp.st.get(name)
		require.NoError(t, err)
		rec.State = st
		require.NoError(t, tp.st.update(func(tx txn) error { return putRecord(tx, rec) }))
	}
	require.NoError(t, tp.Close())

	// The pool keeps its client: the fault is switched off after Open.
	var on atomic.Bool
	on.Store(true)
	openFault = func(op, name string) unix.Errno {
		if !on.Load() {
			return 0
		}
		if (op == "DM_DEV_CREATE" && strings.Contains(name, "-probe-")) || (op == "DM_DEV_REMOVE" && strings.HasSuffix(name, "-deleting")) {
			return unix.EIO
		}
		return 0
	}
	p, err := Open(ctx, opts)
	openFault = nil
	on.Store(false)
	require.NoError(t, err, "Open starts with devices it cannot settle")
	tp.Pool = p
	st, err := p.Status(ctx)
	require.NoError(t, err)
	assert.Equal(t, 2, st.Faulty)
	for _, name := range []string{"creating", "deleting"} {
		d, err := p.Get(name)
		require.NoError(t, err)
		assert.Equal(t, StateFaulty, d.State, name)
		assert.Contains(t, d.Fault, "input/output error", name)
		_, err = p.Activate(ctx, name)
		assert.Error(t, err, "a faulty device is not handed out: %s", name)
	}
	for _, name := range []string{"creating", "deleting"} {
		require.NoError(t, p.Delete(ctx, name, DeleteOptions{}), "a faulty device can be deleted")
	}
	assertSettled(t, p)
}
