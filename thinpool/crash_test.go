package thinpool

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmthin/dmthin/internal/testenv"
)

// The crash test runs one operation in a child process (this test binary,
// re-executed) that SIGKILLs itself at a chosen step, then reopens the pool
// in the parent and checks that recovery left it consistent.

const (
	envCrashOpts = "DMTHIN_CRASH_OPTS"
	envCrashOp   = "DMTHIN_CRASH_OP"
	envCrashStep = "DMTHIN_CRASH_STEP"
)

type crashCase struct {
	op    string   // create, snapshot, delete, activate
	steps []string // steps the op passes, in order
	// present: whether the op's target device must exist after recovery,
	// by the step the crash happened at.
	present map[string]bool
}

var crashCases = []crashCase{
	// The intent is durable at create:intent; at create:message the pool
	// has the thin id and the outcome is only staged: recovery asks the
	// pool and rolls the record forward.
	{"create", []string{"create:intent", "create:message"},
		map[string]bool{"create:intent": false, "create:message": true}},
	// A create that also moves the pool's transaction id (every
	// syncEvery-th change; the child sets it to 1).
	{"create-sync", []string{"create:intent", "create:message", "create:txid"},
		map[string]bool{"create:intent": false, "create:message": true, "create:txid": true}},
	{"snapshot", []string{"snapshot:suspended", "create:intent", "create:message"},
		map[string]bool{"snapshot:suspended": false, "create:intent": false, "create:message": true}},
	// delete:marked commits the intent; delete:intent is after the dm
	// device is gone, before the message.
	{"delete", []string{"delete:marked", "delete:intent", "delete:message"},
		map[string]bool{"delete:marked": false, "delete:intent": false, "delete:message": false}},
	// Delete with discard: the deleting intent must be durable before a
	// single block is discarded.
	{"delete-discard", []string{"delete:marked", "delete:discarded", "delete:intent", "delete:message"},
		map[string]bool{"delete:marked": false, "delete:discarded": false, "delete:intent": false, "delete:message": false}},
	{"activate", []string{"activate:created", "activate:loaded", "activate:resumed"},
		map[string]bool{"activate:created": true, "activate:loaded": true, "activate:resumed": true}},
	// Retire of an active device, then (retire-delete) the deletion of
	// its tombstone, with discard, as layerstore's worker does it: the
	// name is free at every step, the thin id is kept until deleted.
	{"retire", []string{"retire:recorded", "retire:renamed"},
		map[string]bool{"retire:recorded": false, "retire:renamed": false}},
	// A retired record is not marked "deleting" first: after a kill past
	// the message Open finds its thin id gone and drops it.
	{"retire-delete", []string{"delete:discarded", "delete:intent", "delete:message"},
		map[string]bool{"delete:discarded": false, "delete:intent": false, "delete:message": false}},
}

// crashLabels are given to the devices the crash child makes: a device that
// survives recovery must have them (labels are committed with the intent).
var crashLabels = map[string]string{"made-by": "crash-child"}

// TestMain runs the crash child when the parent test asked for one.
func TestMain(m *testing.M) {
	if os.Getenv(envCrashOpts) != "" {
		crashChild()
		os.Exit(3) // crashChild kills itself at its step; getting here is a failure
	}
	os.Exit(m.Run())
}

// crashChild opens the pool and runs one operation that kills the process
// at the step named in the environment.
func crashChild() {
	var o Options
	if err := json.Unmarshal([]byte(os.Getenv(envCrashOpts)), &o); err != nil {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		return
	}
	ctx := context.Background()
	p, err := Open(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "crash child: open:", err)
		return
	}
	step := os.Getenv(envCrashStep)
	p.hook = func(s string) {
		if s == step {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	}
	switch os.Getenv(envCrashOp) {
	case "create":
		_, err = p.Create(ctx, "target", 16*MiB, WithLabels(crashLabels))
	case "create-sync":
		p.msgMu.Lock()
		p.syncEvery = 1
		p.msgMu.Unlock()
		_, err = p.Create(ctx, "target", 16*MiB, WithLabels(crashLabels))
	case "snapshot":
		_, err = p.Snapshot(ctx, "target", "origin", 0, WithLabels(crashLabels))
	case "delete":
		err = p.Delete(ctx, "target", DeleteOptions{})
	case "delete-discard":
		err = p.Delete(ctx, "target", DeleteOptions{Discard: true})
	case "activate":
		_, err = p.Activate(ctx, "target")
	case "retire":
		_, err = p.Retire(ctx, "target", RetireOptions{})
	case "retire-delete":
		var d Device
		if d, err = p.Retire(ctx, "target", RetireOptions{}); err == nil {
			err = p.Delete(ctx, d.Name, DeleteOptions{Discard: true})
		}
	case "faildelete":
		// The parent holds victim's thin id open: the delete message
		// fails; the next operation is killed on its way.
		if err = p.Delete(ctx, "victim", DeleteOptions{}); err == nil {
			fmt.Fprintln(os.Stderr, "crash child: delete of a held thin id succeeded")
			return
		}
		_, err = p.Create(ctx, "target", 16*MiB, WithLabels(crashLabels))
	}
	fmt.Fprintf(os.Stderr, "crash child: step %q never reached (op error: %v)\n", step, err)
}

func TestCrashRecovery(t *testing.T) {
	testenv.RequireDM(t)
	for _, cc := range crashCases {
		for _, step := range cc.steps {
			t.Run(cc.op+"/"+step, func(t *testing.T) { runCrash(t, cc, step) })
		}
	}
}

func runCrash(t *testing.T, cc crashCase, step string) {
	runCrashOn(t, openPool(t, nil), func(tp *testPool) []uint32 { return testenv.ThinIDs(t, tp.metaPath) }, cc, step)
}

// runCrashOn runs a crash case on the pool tp; offlineIDs reads the thin
// ids of its metadata once it is shut down (nil: the live comparison is
// the only one, for an external pool that Shutdown leaves active).
func runCrashOn(t *testing.T, tp *testPool, offlineIDs func(*testPool) []uint32, cc crashCase, step string) {
	ctx := context.Background()
	// The world before the operation: an active origin with data, and the
	// target where delete and activate need it.
	_, err := tp.Create(ctx, "origin", 32*MiB)
	require.NoError(t, err)
	opath, err := tp.Activate(ctx, "origin")
	require.NoError(t, err)
	data := pattern(11, MiB)
	writeFile(t, opath, 0, data)
	deletes := strings.HasPrefix(cc.op, "delete") || strings.HasPrefix(cc.op, "retire")
	if deletes || cc.op == "activate" {
		_, err = tp.Snapshot(ctx, "target", "origin", 0)
		require.NoError(t, err)
	}
	if deletes {
		_, err = tp.Activate(ctx, "target")
		require.NoError(t, err)
	}
	opts := tp.opts
	opts.Logger = nil
	require.NoError(t, tp.Close())

	raw, err := json.Marshal(opts)
	require.NoError(t, err)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), envCrashOpts+"="+string(raw), envCrashOp+"="+cc.op, envCrashStep+"="+step)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "child must be killed, output:\n%s", out)
	ws := ee.Sys().(syscall.WaitStatus)
	require.True(t, ws.Signaled() && ws.Signal() == syscall.SIGKILL, "child should die of SIGKILL at %s, got %v:\n%s", step, err, out)

	// Recovery.
	p, err := Open(ctx, tp.opts)
	require.NoError(t, err, "reopen after crash at %s", step)
	tp.Pool = p
	recs, err := p.st.all()
	require.NoError(t, err)
	names := map[string]*record{}
	var retired []*record
	for _, r := range recs {
		if r.Retired != "" {
			// Left for the caller's Delete (layerstore's worker).
			assert.Contains(t, []State{StateRetired, StateDeleting}, r.State, "retired record %q", r.Name)
			assert.Equal(t, "target", r.Retired)
			retired = append(retired, r)
		} else {
			assert.Contains(t, []State{StateReady}, r.State, "record %q settled", r.Name)
		}
		names[r.Name] = r
	}
	target, has := names["target"]
	assert.Equal(t, cc.present[step], has, "target after crash at %s", step)
	if has && (strings.HasPrefix(cc.op, "create") || cc.op == "snapshot") {
		assert.Equal(t, crashLabels, target.Labels, "labels of the target after crash at %s", step)
	}

	// No stray or suspended dm devices of this pool.
	live, err := p.dm.List()
	require.NoError(t, err)
	for _, l := range live {
		if p.isPoolDevice(l.Name) || !strings.HasPrefix(l.Name, p.prefix+"-") {
			continue
		}
		name := strings.TrimPrefix(l.Name, p.prefix+"-")
		assert.Contains(t, names, name, "dm device %s has a record", l.Name)
		info, err := p.dm.Info(l.Name)
		require.NoError(t, err)
		assert.True(t, info.LiveTable && !info.Suspended, "dm device %s usable", l.Name)
	}
	// The origin kept its data and works.
	d, err := p.Get("origin")
	require.NoError(t, err)
	path, err := p.Activate(ctx, "origin")
	require.NoError(t, err)
	assert.Equal(t, data, readFile(t, path, 0, MiB))
	if has {
		tpath, err := p.Activate(ctx, "target")
		require.NoError(t, err)
		if !strings.HasPrefix(cc.op, "create") {
			assert.Equal(t, data, readFile(t, tpath, 0, MiB), "snapshot content")
		}
	}
	// No id handed out twice: a new device gets an id no record has.
	nd, err := p.Create(ctx, "after", MiB)
	require.NoError(t, err)
	for _, r := range recs {
		assert.NotEqual(t, r.ID, nd.ID)
	}
	assert.Equal(t, "origin", d.Name)
	if strings.HasPrefix(cc.op, "retire") {
		// The name is free, and the retired device can be deleted.
		_, err := p.Create(ctx, "target", MiB)
		require.NoError(t, err, "the retired name can be used again after a crash at %s", step)
		for _, r := range retired {
			require.NoError(t, p.Delete(ctx, r.Name, DeleteOptions{Discard: true}), "delete retired %q after a crash at %s", r.Name, step)
		}
		left, err := p.Retired()
		require.NoError(t, err)
		assert.Empty(t, left)
	}

	assertPoolMatchesRecords(t, p)
	// Records and the pool's own metadata agree (thin_dump offline).
	want := recordIDs(t, p)
	require.NoError(t, p.Shutdown(ctx))
	if offlineIDs != nil {
		got := offlineIDs(tp)
		assert.Equal(t, want, got, "thin ids in pool metadata vs records after crash at %s", step)
	}
	p, err = Open(ctx, tp.opts)
	require.NoError(t, err)
	tp.Pool = p
}

// TestCrashAfterFailedDelete: an operation fails (the pool refuses a
// delete because the thin id is held open), then the process is killed
// during the next operation. After reopening, the deleting record is
// finished and thin_dump of the pool agrees with the records.
func TestCrashAfterFailedDelete(t *testing.T) {
	testenv.RequireDM(t)
	for _, step := range []string{"create:intent", "create:message"} {
		t.Run(step, func(t *testing.T) {
			tp := openPool(t, nil)
			ctx := context.Background()
			_, err := tp.Create(ctx, "victim", 8*MiB)
			require.NoError(t, err)
			release := holdThin(t, tp.Pool, "victim")
			opts := tp.opts
			opts.Logger = nil
			require.NoError(t, tp.Close())
			raw, err := json.Marshal(opts)
			require.NoError(t, err)
			cmd := exec.Command(os.Args[0])
			cmd.Env = append(os.Environ(), envCrashOpts+"="+string(raw), envCrashOp+"=faildelete", envCrashStep+"="+step)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			require.ErrorAs(t, err, &ee, "child must be killed, output:\n%s", out)
			ws := ee.Sys().(syscall.WaitStatus)
			require.True(t, ws.Signaled() && ws.Signal() == syscall.SIGKILL, "child should die of SIGKILL at %s, got %v:\n%s", step, err, out)
			release()

			p, err := Open(ctx, tp.opts)
			require.NoError(t, err)
			tp.Pool = p
			_, err = p.Get("victim")
			assert.ErrorIs(t, err, ErrNotFound, "the failed delete was finished")
			_, err = p.Get("target")
			assert.Equal(t, step == "create:message", err == nil, "target after crash at %s: %v", step, err)
			assertPoolMatchesRecords(t, p)
		})
	}
}
