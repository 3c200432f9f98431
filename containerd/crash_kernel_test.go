package containerd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/stretchr/testify/require"

	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/dmthin/dmthin/layerstore"
)

// The crash child: a re-run of this test binary that opens the
// snapshotter under a root the parent made, runs one operation and
// SIGKILLs itself at the named step.
const envCrash = "DMTHIN_SNAPSHOTTER_CRASH"

type crashPlan struct {
	Config Config
	Op     string // prepare, view, commit, remove
	Step   string
}

func TestMain(m *testing.M) {
	if v := os.Getenv(envServe); v != "" {
		if err := serveChild(v); err != nil {
			fmt.Fprintln(os.Stderr, "dmthin-snapshotter:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if v := os.Getenv(envCrash); v != "" {
		err := crashChild(v)
		fmt.Fprintln(os.Stderr, "crash child: the step was never reached:", err)
		os.Exit(3)
	}
	os.Exit(m.Run())
}

func crashChild(v string) error {
	var plan crashPlan
	if err := json.Unmarshal([]byte(v), &plan); err != nil {
		return err
	}
	ctx := context.Background()
	hook := func(s string) {
		if s == plan.Step {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	}
	sn, err := open(ctx, plan.Config, nil, hook)
	if err != nil {
		return err
	}
	switch plan.Op {
	case "prepare":
		_, err = sn.Prepare(ctx, "new", "c1")
	case "view":
		_, err = sn.View(ctx, "view", "c1")
	case "commit":
		err = sn.Commit(ctx, "c2", "a1")
	case "remove":
		if err = sn.Remove(ctx, "a1"); err == nil {
			err = sn.Cleanup(ctx)
		}
	default:
		err = fmt.Errorf("unknown op %q", plan.Op)
	}
	return err
}

// TestCrash kills a process serving the snapshotter at every step of
// Prepare, View, Commit and Remove (the snapshotter's own steps and the
// layer store's), then opens the root again and checks that containerd's
// view (Stat, Walk) agrees with the pool's records and the pool's
// metadata (thin_dump), that the operation can be finished or retried,
// that the parent's data is intact, and that nothing is left behind.
func TestCrash(t *testing.T) {
	testenv.RequireDM(t)
	testenv.RequireTool(t, "thin_dump")
	cases := []struct {
		op    string
		steps []string
		async bool
	}{
		{"prepare", []string{layerstore.StepCreateSnapshot, layerstore.StepCreateDone, stepPrepareDevice, stepPrepareLabelled}, false},
		{"view", []string{stepPrepareDevice, stepPrepareLabelled}, false},
		{"commit", []string{stepCommitDeactivated, stepCommitLabelled}, false},
		{"remove", []string{stepRemoveDeactivated, layerstore.StepRemoveMarked, layerstore.StepRemoveUnmounted, layerstore.StepRemoveDeleted}, false},
		// async_remove: the layer store retires the device; the child's
		// Cleanup waits for the background deletion.
		{"remove", []string{layerstore.StepRemoveUnmounted, layerstore.StepRemoveRetired, layerstore.StepRemoveDeleted}, true},
	}
	for _, c := range cases {
		for _, step := range c.steps {
			name := c.op + "/" + step
			if c.async {
				name += "/async"
			}
			t.Run(name, func(t *testing.T) { crashAt(t, c.op, step, c.async) })
		}
	}
}

func crashAt(t *testing.T, op, step string, async bool) {
	ctx := context.Background()
	cfg := testConfig(t.TempDir())
	cfg.AsyncRemove = async
	cfg.DiscardBlocks = true

	// c1 (committed, holding a file) and a1 (active, its child).
	sn, err := New(ctx, cfg, testLogger(t))
	require.NoError(t, err)
	t.Cleanup(func() { _ = closeAndCheck(t, cfg) })
	writeCommitted(t, sn, "c1", "", "hello", "from c1")
	_, err = sn.Prepare(ctx, "a1", "c1")
	require.NoError(t, err)
	require.NoError(t, sn.Close())

	plan, err := json.Marshal(crashPlan{Config: cfg, Op: op, Step: step})
	require.NoError(t, err)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envCrash+"="+string(plan))
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "crash child: %s", out)
	require.Equal(t, syscall.SIGKILL, ee.Sys().(syscall.WaitStatus).Signal(), "crash child did not die at %s: %s", step, out)

	sn, err = New(ctx, cfg, testLogger(t))
	require.NoError(t, err, "open after a crash at %s", step)
	defer func() { require.NoError(t, sn.Close()) }()
	checkAgrees(t, sn)

	// The operation can be finished: retried, or found done.
	switch op {
	case "prepare", "view":
		key := map[string]string{"prepare": "new", "view": "view"}[op]
		if _, err := sn.Stat(ctx, key); errdefs.IsNotFound(err) {
			if op == "prepare" {
				_, err = sn.Prepare(ctx, key, "c1")
			} else {
				_, err = sn.View(ctx, key, "c1")
			}
			require.NoError(t, err, "retry %s", op)
		} else {
			require.NoError(t, err)
			_, err = sn.Mounts(ctx, key)
			require.NoError(t, err)
		}
		checkFile(t, sn, key, "hello", "from c1")
		require.NoError(t, sn.Remove(ctx, key))
	case "commit":
		if _, err := sn.Stat(ctx, "c2"); errdefs.IsNotFound(err) {
			_, err := sn.Stat(ctx, "a1")
			require.NoError(t, err, "neither a1 nor c2 after a crash in commit")
			require.NoError(t, sn.Commit(ctx, "c2", "a1"), "retry commit")
		} else {
			require.NoError(t, err)
			_, err := sn.Stat(ctx, "a1")
			require.True(t, errdefs.IsNotFound(err), "both a1 and c2 after commit: %v", err)
		}
		info, err := sn.Stat(ctx, "c2")
		require.NoError(t, err)
		require.Equal(t, snapshots.KindCommitted, info.Kind)
		require.Equal(t, "c1", info.Parent)
		checkView(t, sn, "c2", "hello", "from c1")
	case "remove":
		if _, err := sn.Stat(ctx, "a1"); err == nil {
			require.NoError(t, sn.Remove(ctx, "a1"), "retry remove")
		} else {
			require.True(t, errdefs.IsNotFound(err), "%v", err)
		}
		require.NoError(t, sn.Cleanup(ctx))
	}
	checkAgrees(t, sn)
	checkView(t, sn, "c1", "hello", "from c1")
}

// checkAgrees compares containerd's view with the layer store: every
// snapshot Walk shows has its layer, and every layer of the pool belongs
// to a snapshot (or awaits Cleanup).
func checkAgrees(t *testing.T, sn *Snapshotter) {
	t.Helper()
	ctx := context.Background()
	seen := map[string]bool{}
	require.NoError(t, sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		st, err := sn.Stat(ctx, info.Name)
		if err != nil {
			return err
		}
		if st.Kind != info.Kind || st.Parent != info.Parent {
			return fmt.Errorf("Stat and Walk disagree on %q", info.Name)
		}
		seen[info.Name] = true
		return nil
	}))
	layers, err := sn.Store().Layers()
	require.NoError(t, err)
	sn.mu.Lock()
	defer sn.mu.Unlock()
	pending := map[string]bool{}
	for _, l := range sn.removed {
		pending[l] = true
	}
	for _, l := range layers {
		e, removed, err := decodeEntry(l.Name, l.Device.Labels)
		require.NoError(t, err, "layer %s has no snapshot after recovery", l.Name)
		if removed {
			require.True(t, pending[l.Name], "layer %s removed but not queued for Cleanup", l.Name)
			continue
		}
		require.True(t, seen[e.info.Name], "layer %s holds %q, which Walk does not show", l.Name, e.info.Name)
		delete(seen, e.info.Name)
	}
	require.Empty(t, seen, "snapshots without a layer")
}

// closeAndCheck opens the root once more, shuts the pool down and compares
// the thin ids in the pool's metadata (thin_dump) with the records: none
// leaked, none lost. It also checks that no device-mapper device of the
// pool is left.
func closeAndCheck(t *testing.T, cfg Config) error {
	t.Helper()
	sn, err := New(context.Background(), cfg, testLogger(t))
	if err != nil {
		t.Errorf("reopen for the final check: %v", err)
		return err
	}
	// What the background worker has to do (async_remove) is done first,
	// so that Close does not change the pool after the records are read.
	require.NoError(t, sn.Store().Drain(context.Background()))
	devs, err := sn.Store().Pool().List()
	require.NoError(t, err)
	prefix := sn.Store().Pool().Name()
	var want []uint32
	for _, d := range devs {
		want = append(want, d.ID)
	}
	slices.Sort(want)
	require.NoError(t, sn.Close())
	out, err := exec.Command("dmsetup", "ls").CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.NotContains(t, string(out), prefix, "pool device left after Close")
	meta := filepath.Join(cfg.RootPath, "pool", "devicemapper", "metadata")
	got := testenv.ThinIDs(t, meta)
	require.Equal(t, want, got, "thin ids in the pool's metadata vs the records")
	return nil
}

// writeCommitted prepares key from parent, writes file, and commits it as
// name... key and name are the same here for brevity.
func writeCommitted(t *testing.T, sn *Snapshotter, name, parent, file, content string) {
	t.Helper()
	ctx := context.Background()
	key := name + "-active"
	mounts, err := sn.Prepare(ctx, key, parent)
	require.NoError(t, err)
	dir := t.TempDir()
	require.NoError(t, mount.All(mounts, dir))
	werr := os.WriteFile(filepath.Join(dir, file), []byte(content), 0o644)
	require.NoError(t, errors.Join(werr, mount.UnmountAll(dir, 0)))
	require.NoError(t, sn.Commit(ctx, name, key))
}

// checkFile mounts the active snapshot or view key and reads file.
func checkFile(t *testing.T, sn *Snapshotter, key, file, want string) {
	t.Helper()
	mounts, err := sn.Mounts(context.Background(), key)
	require.NoError(t, err)
	dir := t.TempDir()
	require.NoError(t, mount.All(mounts, dir))
	got, rerr := os.ReadFile(filepath.Join(dir, file))
	require.NoError(t, errors.Join(rerr, mount.UnmountAll(dir, 0)))
	require.Equal(t, want, string(got))
}

// checkView reads file through a fresh view of the committed snapshot name.
func checkView(t *testing.T, sn *Snapshotter, name, file, want string) {
	t.Helper()
	ctx := context.Background()
	key := "check-view-of-" + name
	_, err := sn.View(ctx, key, name)
	require.NoError(t, err)
	checkFile(t, sn, key, file, want)
	require.NoError(t, sn.Remove(ctx, key))
}
