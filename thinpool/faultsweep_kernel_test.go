//go:build dmthin_kernel

package thinpool

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/devmapper"
)

// TestEveryIoctlFailure fails, one run at a time, each device-mapper ioctl
// an operation makes (the first run counts them), as a kernel that answers
// EIO or a device that went away would. Whatever the failure, the
// operation returns an error that keeps the errno (or succeeds, where the
// failed call was a retry or a report), and the pool stays one that the
// next Open settles completely: nothing suspended, no inactive table, no
// faulty or stray device, the records and the pool's thin ids agree. Then
// the operation can be done again.

type sweepCase struct {
	name string
	// setup makes the world before the operation (the pool is open).
	setup func(t *testing.T, p *Pool)
	op    func(ctx context.Context, p *Pool) error
	// after checks the pool after a fault-free retry of op, when set.
	after func(t *testing.T, p *Pool)
	// orphans: setup leaves orphans that only op removes; before op is
	// done again, the records and thin ids need not agree.
	orphans bool
}

func sweepOrigin(t *testing.T, p *Pool) {
	t.Helper()
	ctx := context.Background()
	_, err := p.Create(ctx, "origin", 16*MiB)
	require.NoError(t, err)
	path, err := p.Activate(ctx, "origin")
	require.NoError(t, err)
	writeFile(t, path, 0, pattern(6, MiB))
}

var sweepCases = []sweepCase{
	{name: "create", op: func(ctx context.Context, p *Pool) error {
		_, err := p.Create(ctx, "new", 16*MiB)
		return err
	}},
	{name: "snapshot", setup: sweepOrigin, op: func(ctx context.Context, p *Pool) error {
		_, err := p.Snapshot(ctx, "snap", "origin", 0)
		return err
	}},
	{name: "activate", setup: func(t *testing.T, p *Pool) {
		_, err := p.Create(context.Background(), "dev", 16*MiB)
		require.NoError(t, err)
	}, op: func(ctx context.Context, p *Pool) error {
		_, err := p.Activate(ctx, "dev")
		return err
	}},
	{name: "deactivate", setup: sweepOrigin, op: func(ctx context.Context, p *Pool) error {
		return p.Deactivate(ctx, "origin", false)
	}},
	{name: "delete-discard", setup: sweepOrigin, op: func(ctx context.Context, p *Pool) error {
		return p.Delete(ctx, "origin", DeleteOptions{Discard: true})
	}},
	{name: "retire-and-delete", setup: sweepOrigin, op: func(ctx context.Context, p *Pool) error {
		d, err := p.Retire(ctx, "origin", RetireOptions{})
		if err != nil {
			return err
		}
		return p.Delete(ctx, d.Name, DeleteOptions{Discard: true})
	}},
	{name: "resize", setup: sweepOrigin, op: func(ctx context.Context, p *Pool) error {
		return p.Resize(ctx, "origin", 32*MiB)
	}},
	{name: "grow", op: func(ctx context.Context, p *Pool) error {
		return p.Grow(ctx, 768*MiB, 24*MiB)
	}, after: func(t *testing.T, p *Pool) {
		st, err := p.Status(context.Background())
		require.NoError(t, err)
		assert.Equal(t, int64(768*MiB), st.DataTotal)
		assert.Equal(t, int64(24*MiB), st.MetadataTotal)
	}},
	{name: "status-and-check", setup: sweepOrigin, op: func(ctx context.Context, p *Pool) error {
		if _, err := p.Status(ctx); err != nil {
			return err
		}
		_, err := p.Check(ctx)
		return err
	}},
	{name: "shutdown", setup: sweepOrigin, op: func(ctx context.Context, p *Pool) error {
		return p.Shutdown(ctx)
	}},
	{name: "gc", setup: sweepOrphans, orphans: true, op: func(ctx context.Context, p *Pool) error {
		rep, err := p.Check(ctx)
		if err != nil {
			return err
		}
		_, err = p.RemoveOrphans(ctx, rep.Findings, GCOptions{Discard: true})
		return err
	}, after: func(t *testing.T, p *Pool) {
		rep, err := p.Check(context.Background())
		require.NoError(t, err)
		assert.True(t, rep.Healthy(), "%+v", rep)
	}},
	{name: "deferred-delete", setup: func(t *testing.T, p *Pool) {
		sweepOrigin(t, p)
		f, err := os.Open(p.dm.NodePath(p.dmName("origin")))
		require.NoError(t, err)
		sweepHeld = f
		t.Cleanup(func() { _ = f.Close() })
	}, op: func(ctx context.Context, p *Pool) error {
		if err := p.Delete(ctx, "origin", DeleteOptions{Deferred: true}); err != nil {
			return err
		}
		if sweepHeld != nil {
			_ = sweepHeld.Close()
			sweepHeld = nil
		}
		return p.ProcessDeferred(ctx)
	}},
}

// sweepHeld is the node deferred-delete's setup holds open.
var sweepHeld *os.File

// sweepOrphans leaves the three kinds of orphans check finds: a thin id
// no record names (a snapshot of origin made behind the pool's back, with
// blocks to discard), a record whose thin id is gone, a dm device with the
// pool's prefix and no record.
func sweepOrphans(t *testing.T, p *Pool) {
	t.Helper()
	sweepOrigin(t, p)
	ctx := context.Background()
	o, err := p.Get("origin")
	require.NoError(t, err)
	_, err = p.dm.Message(p.name, 0, fmt.Sprintf("create_snap %d %d", 4242, o.ID))
	require.NoError(t, err)
	_, err = p.Create(ctx, "lost", 16*MiB)
	require.NoError(t, err)
	l, err := p.Get("lost")
	require.NoError(t, err)
	_, err = p.dm.Message(p.name, 0, fmt.Sprintf("delete %d", l.ID))
	require.NoError(t, err)
	_, err = p.dm.Activate(p.prefix+"-stray", "", devmapper.Table{{Length: 8, Params: devmapper.RawParams{Type: "error"}}}, false)
	require.NoError(t, err)
}

// nthFault fails the n-th ioctl it is asked about (n from 1; 0 fails
// none) and records every call.
type nthFault struct {
	mu    sync.Mutex
	n     int
	calls []string
	armed bool // off for the client's own version check
}

func (f *nthFault) arm() {
	f.mu.Lock()
	f.armed = true
	f.mu.Unlock()
}

func (f *nthFault) fault(op, name string) unix.Errno {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.armed {
		return 0
	}
	f.calls = append(f.calls, op+" "+name)
	if len(f.calls) == f.n {
		return unix.EIO
	}
	return 0
}

func TestEveryIoctlFailure(t *testing.T) {
	for _, sc := range sweepCases {
		t.Run(sc.name, func(t *testing.T) {
			count := &nthFault{}
			require.NoError(t, runSweep(t, sc, count), "the operation without a fault")
			calls := count.calls
			require.NotEmpty(t, calls)
			for i := range calls {
				name := fmt.Sprintf("%02d-%s", i+1, strings.Fields(calls[i])[0])
				t.Run(name, func(t *testing.T) {
					f := &nthFault{n: i + 1}
					err := runSweep(t, sc, f)
					require.GreaterOrEqual(t, len(f.calls), f.n, "the operation made fewer ioctls than the first time")
					if err != nil {
						assert.ErrorIs(t, err, unix.EIO, "the failure of %s keeps its errno", calls[i])
					}
				})
			}
		})
	}
}

// runSweep runs one case on a fresh pool with f consulted for every ioctl
// of the operation, then reopens the pool without faults, checks that it is
// settled, and does the operation again. It returns the operation's error.
func runSweep(t *testing.T, sc sweepCase, f *nthFault) error {
	t.Helper()
	tp := openPool(t, nil)
	ctx := context.Background()
	if sc.setup != nil {
		sc.setup(t, tp.Pool)
	}
	opts := tp.opts
	c, err := devmapper.Open(devmapper.Options{NodeDir: opts.DeviceDir, Fault: f.fault})
	require.NoError(t, err)
	f.arm()
	own := tp.dm
	tp.dm = c
	opErr := sc.op(ctx, tp.Pool)
	if tp.closed {
		// Shutdown closed the client it had (c).
		require.NoError(t, own.Close())
	} else {
		tp.dm = own
		require.NoError(t, c.Close())
		// The engine stops (its Close may meet what the failure left).
		_ = tp.Close()
	}

	p, err := Open(ctx, opts)
	require.NoError(t, err, "Open after the failure (%v)", opErr)
	tp.Pool = p
	assertSettledKernel(t, p)
	if !sc.orphans {
		assertSettled(t, p)
	}
	if err := sc.op(ctx, p); err != nil && !errors.Is(err, ErrExists) && !errors.Is(err, ErrNotFound) {
		// Done already (create, delete), or done now.
		require.NoError(t, err, "the operation again, without a fault")
	}
	if p.closed {
		p, err = Open(ctx, opts)
		require.NoError(t, err)
		tp.Pool = p
	}
	if sc.after != nil {
		sc.after(t, p)
	}
	assertSettled(t, p)
	return opErr
}

// assertSettled checks a pool Open settled: no device of it suspended or
// with an inactive table, no faulty or stray device, and the records and
// the pool's thin ids agree.
func assertSettled(t *testing.T, p *Pool) {
	t.Helper()
	assertSettledKernel(t, p)
	st, err := p.Status(context.Background())
	require.NoError(t, err)
	assert.Empty(t, st.FaultyDevices)
	assert.Equal(t, devmapper.PoolReadWrite, st.Mode)
	recs, err := p.st.all()
	require.NoError(t, err)
	for _, r := range recs {
		// A deferred delete waits for its opener.
		assert.Contains(t, []State{StateReady, StateRetired, StateDeferredDelete}, r.State, "record %q settled", r.Name)
	}
	assertPoolMatchesRecords(t, p)
}

// assertSettledKernel checks that no device of the pool is suspended, has
// an inactive table, or lacks a live table.
func assertSettledKernel(t *testing.T, p *Pool) {
	t.Helper()
	live, err := p.dm.List()
	require.NoError(t, err)
	for _, l := range live {
		if !p.isPoolDevice(l.Name) && !strings.HasPrefix(l.Name, p.prefix+"-") {
			continue
		}
		info, err := p.dm.Info(l.Name)
		require.NoError(t, err)
		assert.False(t, info.Suspended, "%s suspended", l.Name)
		assert.False(t, info.InactiveTable, "%s has an inactive table", l.Name)
		assert.True(t, info.LiveTable, "%s has no live table", l.Name)
	}
}

// TestEveryIoctlFailureOfOpen does the same for Open itself: of a new
// loopback pool, of one left active (an engine that stopped without
// Shutdown), of one shut down, and of a new pool on a whole disk.
func TestEveryIoctlFailureOfOpen(t *testing.T) {
	ctx := context.Background()
	type openCase struct {
		name string
		// prepare returns the options, with the world Open will meet.
		prepare func(t *testing.T) Options
	}
	withRecords := func(t *testing.T, shutdown bool) Options {
		tp := openPool(t, nil)
		sweepOrigin(t, tp.Pool)
		_, err := tp.Snapshot(ctx, "snap", "origin", 0)
		require.NoError(t, err)
		opts := tp.opts
		if shutdown {
			require.NoError(t, tp.Shutdown(ctx))
		} else {
			require.NoError(t, tp.Close())
		}
		return opts
	}
	cases := []openCase{
		{"new", func(t *testing.T) Options {
			tp := openPool(t, nil)
			opts := tp.opts
			require.NoError(t, tp.Shutdown(ctx))
			// A root of its own, never opened; the teardown of tp opens
			// (and shuts down) the first.
			root := filepath.Join(t.TempDir(), "fresh")
			opts.Root = root
			t.Cleanup(func() {
				if p, err := Open(ctx, opts); err == nil {
					assert.NoError(t, p.Shutdown(ctx))
				}
			})
			return opts
		}},
		{"left-active", func(t *testing.T) Options { return withRecords(t, false) }},
		{"shut-down", func(t *testing.T) Options { return withRecords(t, true) }},
		{"loop-files-grown", func(t *testing.T) Options {
			opts := withRecords(t, true)
			opts.LoopDataSize, opts.LoopMetadataSize = 768*MiB, 24*MiB
			return opts
		}},
		{"whole-disk-grown", func(t *testing.T) Options {
			d := newDisk(t, 256*MiB)
			opts := directOptions(t, d.loop.Path())
			p, err := Open(ctx, opts)
			require.NoError(t, err)
			sweepOrigin(t, p)
			require.NoError(t, p.Close())
			d.grow(t, 384*MiB)
			t.Cleanup(func() {
				if p, err := Open(ctx, opts); err == nil {
					assert.NoError(t, p.Shutdown(ctx))
				}
			})
			return opts
		}},
		{"whole-disk-new", func(t *testing.T) Options {
			d := newDisk(t, 256*MiB)
			opts := directOptions(t, d.loop.Path())
			t.Cleanup(func() {
				if p, err := Open(ctx, opts); err == nil {
					assert.NoError(t, p.Shutdown(ctx))
				}
			})
			return opts
		}},
	}
	openOnce := func(t *testing.T, opts Options, f *nthFault) error {
		t.Helper()
		before := dmSet(t)
		f.arm()
		openFault = f.fault
		p, err := Open(ctx, opts)
		openFault = nil
		if err == nil {
			require.NoError(t, p.Close())
		} else {
			for name := range dmSet(t) {
				assert.True(t, before[name], "the failed Open left %s", name)
			}
		}
		p, rerr := Open(ctx, opts)
		require.NoError(t, rerr, "Open after a failed Open (%v)", err)
		assertSettled(t, p)
		require.NoError(t, p.Close())
		return err
	}
	for _, oc := range cases {
		t.Run(oc.name, func(t *testing.T) {
			count := &nthFault{}
			require.NoError(t, openOnce(t, oc.prepare(t), count))
			calls := count.calls
			require.NotEmpty(t, calls)
			for i := range calls {
				t.Run(fmt.Sprintf("%02d-%s", i+1, strings.Fields(calls[i])[0]), func(t *testing.T) {
					f := &nthFault{n: i + 1}
					err := openOnce(t, oc.prepare(t), f)
					require.GreaterOrEqual(t, len(f.calls), f.n, "Open made fewer ioctls than the first time")
					if err != nil {
						assert.ErrorIs(t, err, unix.EIO, "the failure of %s keeps its errno", calls[i])
					}
				})
			}
		})
	}
}

// dmSet is the set of the kernel's device-mapper device names.
func dmSet(t *testing.T) map[string]bool {
	t.Helper()
	c, err := devmapper.Open(devmapper.Options{})
	require.NoError(t, err)
	defer c.Close()
	live, err := c.List()
	require.NoError(t, err)
	set := map[string]bool{}
	for _, l := range live {
		set[l.Name] = true
	}
	return set
}

// TestEveryIoctlFailureOfTheInspector fails each ioctl of the operator's
// read-only views (status report, check, usage, options) in turn: the view
// returns an error that keeps the errno (or what it could read), and it
// leaves the pool as it was: no metadata snapshot held, nothing suspended,
// and a check without faults is healthy.
func TestEveryIoctlFailureOfTheInspector(t *testing.T) {
	ctx := context.Background()
	views := []struct {
		name string
		run  func(in *Inspector) error
	}{
		{"report", func(in *Inspector) error { _, err := in.Report(ctx); return err }},
		{"check", func(in *Inspector) error { _, err := in.Check(ctx); return err }},
		{"usage", func(in *Inspector) error {
			u, err := in.Usage(ctx, "origin", "snap")
			if err == nil {
				for _, x := range u {
					if !x.Known {
						return errors.New(x.UsageError)
					}
				}
			}
			return err
		}},
		{"options", func(in *Inspector) error { _, err := in.Options(); return err }},
	}
	for _, live := range []bool{false, true} {
		for _, v := range views {
			sub := v.name + "/stopped"
			if live {
				sub = v.name + "/live"
			}
			t.Run(sub, func(t *testing.T) {
				tp := openPool(t, nil)
				sweepOrigin(t, tp.Pool)
				_, err := tp.Snapshot(ctx, "snap", "origin", 0)
				require.NoError(t, err)
				opts, name, prefix := tp.opts, tp.name, tp.prefix
				dm, err := devmapper.Open(devmapper.Options{})
				require.NoError(t, err)
				defer dm.Close()
				if !live {
					require.NoError(t, tp.Close())
				}
				view := func(f *nthFault) error {
					in, err := Inspect(InspectOptions{Root: opts.Root})
					require.NoError(t, err)
					c, err := devmapper.Open(devmapper.Options{Fault: f.fault})
					require.NoError(t, err)
					f.arm()
					own := in.dm
					in.dm, in.p.dm = c, c
					verr := v.run(in)
					in.dm, in.p.dm = own, own
					require.NoError(t, c.Close())
					require.NoError(t, in.Close())
					return verr
				}
				count := &nthFault{}
				require.NoError(t, view(count))
				for i := range count.calls {
					f := &nthFault{n: i + 1}
					err := view(f)
					require.GreaterOrEqual(t, len(f.calls), f.n, "fewer ioctls than the first time")
					if err != nil && !strings.Contains(err.Error(), "input/output error") {
						assert.ErrorIs(t, err, unix.EIO, "the failure of %s keeps its errno", count.calls[i])
					}
					lines, err := dm.Status(name, devmapper.StatusOptions{NoFlush: true})
					require.NoError(t, err)
					ps, err := devmapper.ParseThinPoolStatus(lines[0].Params)
					require.NoError(t, err)
					assert.Nil(t, ps.HeldMetadataRoot, "a metadata snapshot left after the failure of %s", count.calls[i])
					for _, n := range []string{name, prefix + "-origin"} {
						info, err := dm.Info(n)
						require.NoError(t, err)
						assert.False(t, info.Suspended || info.InactiveTable, "%s after the failure of %s", n, count.calls[i])
					}
				}
				in, err := Inspect(InspectOptions{Root: opts.Root})
				require.NoError(t, err)
				rep, err := in.Check(ctx)
				require.NoError(t, errors.Join(err, in.Close()))
				assert.True(t, rep.Healthy(), "%+v", rep)
			})
		}
	}
}
