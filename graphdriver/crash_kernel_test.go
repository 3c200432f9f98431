package graphdriver

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/docker/go-units"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/dmthin/dmthin/layerstore"
)

// The crash tests run one driver operation in a child process (this test
// binary, re-executed) that SIGKILLs itself at a named step, then Init the
// driver again in the parent and check what it finds: Init succeeds, Exists
// tells the truth, nothing is left mounted or active that the driver does
// not account for, and the pool's own metadata (thin_dump) holds exactly
// the thin ids of the records.

const envDriverCrash = "DMTHIN_DRIVER_CRASH"

// stepTarHalf is the kill point half-way through ApplyDiff's tar stream.
const stepTarHalf = "tar:half"

type crashSpec struct {
	Home    string
	Options []string
	Op      string // init, create, remove, put, applydiff
	Step    string
	ID      string
	Size    string
	// ToolPidFile: at Step, do not die at once but once the step's tool
	// (a child process) runs, after writing its pid here.
	ToolPidFile string
}

func TestMain(m *testing.M) {
	if raw := os.Getenv(envDriverCrash); raw != "" {
		crashChild(raw)
		os.Exit(3) // the child kills itself at its step; getting here is a failure
	}
	os.Exit(m.Run())
}

func killSelf() {
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {}
}

func crashChild(raw string) {
	var sp crashSpec
	if err := json.Unmarshal([]byte(raw), &sp); err != nil {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		return
	}
	hook := func(step string) {
		switch {
		case step != sp.Step:
		case sp.ToolPidFile != "":
			go killWhileToolRuns(sp.ToolPidFile)
		default:
			killSelf()
		}
	}
	cfg, err := ParseOptions(sp.Options)
	if err != nil {
		fmt.Fprintln(os.Stderr, "crash child: options:", err)
		return
	}
	d, err := newDriver(sp.Home, cfg, nil, hook)
	if err == nil {
		switch sp.Op {
		case "init":
		case "create":
			err = d.Create(sp.ID, "", &CreateOpts{StorageOpt: map[string]string{"size": sp.Size}})
		case "remove":
			// Drain: the crash may be meant for the background deletion.
			if err = d.Remove(sp.ID); err == nil {
				err = d.Drain(context.Background())
			}
		case "put":
			if _, err = d.Get(sp.ID, ""); err == nil {
				if err = d.Put(sp.ID); err == nil {
					err = d.Drain(context.Background())
				}
			}
		case "applydiff":
			_, err = d.ApplyDiff(sp.ID, "", &killingReader{r: bytes.NewReader(crashTar()), killAt: int64(len(crashTar()) / 2), armed: sp.Step == stepTarHalf})
		}
	}
	fmt.Fprintf(os.Stderr, "crash child: step %q never reached (op error: %v)\n", sp.Step, err)
}

// killingReader kills the process once killAt bytes were read, if armed.
type killingReader struct {
	r      io.Reader
	n      int64
	killAt int64
	armed  bool
}

func (k *killingReader) Read(p []byte) (int, error) {
	if k.armed && k.n >= k.killAt {
		killSelf()
	}
	if k.armed && int64(len(p)) > k.killAt-k.n {
		p = p[:k.killAt-k.n]
	}
	n, err := k.r.Read(p)
	k.n += int64(n)
	return n, err
}

// crashTar is a layer of 16 files of 256 KiB.
func crashTar() []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	data := bytes.Repeat([]byte("0123456789abcdef"), 16<<10)
	for i := 0; i < 16; i++ {
		_ = tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("f%02d", i), Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg})
		_, _ = tw.Write(data)
	}
	_ = tw.Close()
	return b.Bytes()
}

// runCrashChild runs sp in a child and requires that it died of SIGKILL.
func runCrashChild(t *testing.T, sp crashSpec) {
	t.Helper()
	raw, err := json.Marshal(sp)
	require.NoError(t, err)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envDriverCrash+"="+string(raw))
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "the child must be killed at %s; output:\n%s", sp.Step, out)
	ws := ee.Sys().(syscall.WaitStatus)
	require.True(t, ws.Signaled() && ws.Signal() == syscall.SIGKILL, "the child should die of SIGKILL at %s, got %v:\n%s", sp.Step, err, out)
}

type driverCrashCase struct {
	name  string
	op    string
	steps []string
	opts  []string // the child's options on top of smallPool
	// setup prepares home before the child runs (nil: a fresh home).
	setup func(t *testing.T, home string)
	// exists: whether the target layer must exist after the crash at a step.
	exists map[string]bool
	// after checks the reopened driver.
	after func(t *testing.T, d *Driver, step string)
}

const crashTarget = "target"

var driverCrashCases = []driverCrashCase{
	{
		name:  "format-base",
		op:    "init",
		steps: []string{layerstore.StepBaseCreated, layerstore.StepBaseFormatted, layerstore.StepBaseMounted, layerstore.StepBaseRecorded},
		after: func(t *testing.T, d *Driver, _ string) {
			require.NoError(t, d.Create("l", "", nil))
			withLayer(t, d, "l", func(root string) {
				assert.Empty(t, dirNames(t, root), "the layer's root is the base's empty rootfs")
			})
		},
	},
	{
		name:  "grow-base",
		op:    "init",
		steps: []string{layerstore.StepBaseResized, layerstore.StepBaseMounted},
		opts:  []string{"dm.basesize=512M"},
		setup: func(t *testing.T, home string) {
			d := initDriver(t, home, smallPool) // a 256M base
			require.NoError(t, d.Create("old", "", nil))
			require.NoError(t, d.Cleanup())
		},
		after: func(t *testing.T, d *Driver, _ string) {
			assert.Equal(t, "512MiB", statusMap(d)["Base Device Size"])
			require.NoError(t, d.Create("new", "", nil))
			withLayer(t, d, "new", func(root string) {
				assert.Greater(t, fsSize(t, root), int64(400*units.MiB), "the base filesystem was grown")
			})
		},
	},
	{
		name:   "create-with-size",
		op:     "create",
		steps:  []string{layerstore.StepCreateSnapshot, layerstore.StepCreateMounted, layerstore.StepCreateGrown, layerstore.StepCreateDone},
		exists: map[string]bool{layerstore.StepCreateDone: true},
		after: func(t *testing.T, d *Driver, step string) {
			if !d.Exists(crashTarget) {
				require.NoError(t, d.Create(crashTarget, "", &CreateOpts{StorageOpt: map[string]string{"size": "512M"}}), "a retry makes the layer")
			}
			withLayer(t, d, crashTarget, func(root string) {
				assert.Greater(t, fsSize(t, root), int64(400*units.MiB), "the layer's filesystem has its size")
			})
		},
	},
	{
		name:   "sync-remove-with-discard",
		op:     "remove",
		steps:  []string{layerstore.StepRemoveMarked, layerstore.StepRemoveUnmounted, layerstore.StepRemoveDeleted},
		opts:   []string{"dm.blkdiscard=true", "dm.sync_remove=true"},
		setup:  leftMounted,
		exists: map[string]bool{},
		after:  idUsableAgain,
	},
	{
		// The default: Remove retires the device, the worker (Drain in the
		// child) deletes it.
		name:  "remove-with-discard",
		op:    "remove",
		steps: []string{layerstore.StepRemoveUnmounted, layerstore.StepRemoveRetired, layerstore.StepRemoveDeleted},
		opts:  []string{"dm.blkdiscard=true"},
		setup: leftMounted,
		// Killed before the retire, the removal had not happened.
		exists: map[string]bool{layerstore.StepRemoveUnmounted: true},
		after: func(t *testing.T, d *Driver, step string) {
			if d.Exists(crashTarget) {
				require.NoError(t, d.Remove(crashTarget), "the engine retries the removal")
			}
			idUsableAgain(t, d, step)
			require.NoError(t, d.Drain(context.Background()))
			st := statusMap(d)
			assert.Equal(t, "0", st["Deferred Deleted Device Count"], "the retired device was deleted after a crash at %s", step)
		},
	},
	{
		// Put's deactivation, left to the worker (Drain in the child).
		name:  "put",
		op:    "put",
		steps: []string{layerstore.StepPutUnmounted, layerstore.StepPutDeactivated},
		setup: func(t *testing.T, home string) {
			d := initDriver(t, home, smallPool)
			require.NoError(t, d.Create(crashTarget, "", nil))
			require.NoError(t, d.Cleanup())
		},
		exists: map[string]bool{layerstore.StepPutUnmounted: true, layerstore.StepPutDeactivated: true},
		after: func(t *testing.T, d *Driver, step string) {
			require.NoError(t, d.Drain(context.Background()))
			dev, err := d.store.Pool().Get(layerstore.DeviceName(crashTarget))
			require.NoError(t, err)
			assert.False(t, dev.Active, "a device left active by a crash at %s is deactivated, not leaked", step)
		},
	},
	{
		name:  "applydiff",
		op:    "applydiff",
		steps: []string{layerstore.StepGetMounted, stepTarHalf},
		setup: func(t *testing.T, home string) {
			d := initDriver(t, home, smallPool)
			require.NoError(t, d.Create(crashTarget, "", nil))
			require.NoError(t, d.Cleanup())
		},
		exists: map[string]bool{layerstore.StepGetMounted: true, stepTarHalf: true},
		after: func(t *testing.T, d *Driver, _ string) {
			// The engine removes a layer whose apply did not finish, and
			// applies it again.
			require.NoError(t, d.Remove(crashTarget))
			require.NoError(t, d.Create(crashTarget, "", nil))
			n, err := d.ApplyDiff(crashTarget, "", bytes.NewReader(crashTar()))
			require.NoError(t, err)
			assert.Equal(t, int64(16*256*units.KiB), n)
		},
	},
}

// leftMounted makes the crash target with a file and leaves it mounted by
// a process that dies (Remove unmounts it).
func leftMounted(t *testing.T, home string) {
	d := initDriver(t, home, smallPool)
	require.NoError(t, d.Create(crashTarget, "", nil))
	withLayer(t, d, crashTarget, func(root string) { writeFile(t, root, "f", "data\n") })
	mustGet(t, d, crashTarget) // left mounted: Remove unmounts it
	require.NoError(t, d.store.Pool().Close())
}

func idUsableAgain(t *testing.T, d *Driver, _ string) {
	require.NoError(t, d.Create(crashTarget, "", nil), "the id can be used again")
	withLayer(t, d, crashTarget, func(root string) { assert.Empty(t, dirNames(t, root)) })
}

func TestDriverCrash(t *testing.T) {
	testenv.RequireDM(t)
	for _, cc := range driverCrashCases {
		for _, step := range cc.steps {
			t.Run(cc.name+"/"+step, func(t *testing.T) { runDriverCrash(t, cc, step) })
		}
	}
}

func runDriverCrash(t *testing.T, cc driverCrashCase, step string) {
	home := newHome(t)
	if cc.setup != nil {
		cc.setup(t, home)
	}
	opts := append(append([]string(nil), smallPool...), cc.opts...)
	runCrashChild(t, crashSpec{Home: home, Options: opts, Op: cc.op, Step: step, ID: crashTarget, Size: "512M"})

	d, err := Init(home, opts, testLogger(t))
	require.NoError(t, err, "Init after a crash at %s", step)
	poolName := d.store.Pool().Name()
	t.Cleanup(func() { _ = d.Cleanup() })

	if cc.exists != nil {
		assert.Equal(t, cc.exists[step], d.Exists(crashTarget), "Exists(%q) after a crash at %s", crashTarget, step)
		_, gerr := d.Get(crashTarget, "")
		if cc.exists[step] {
			require.NoError(t, gerr, "Get agrees with Exists")
			require.NoError(t, d.Put(crashTarget))
		} else {
			assert.ErrorIs(t, gerr, ErrNotFound, "Get agrees with Exists")
		}
	}
	assertAccounted(t, d)
	cc.after(t, d, step)
	assertAccounted(t, d)

	// The pool's metadata and the records agree. The background work is
	// done first, so that Cleanup does not change the pool after the
	// records are read.
	require.NoError(t, d.Drain(context.Background()))
	want := recordThinIDs(t, d)
	require.NoError(t, d.Cleanup())
	assertNothingLeft(t, home, poolName)
	assert.Equal(t, want, testenv.ThinIDs(t, filepath.Join(home, "devicemapper", "metadata")), "thin ids in the pool's metadata vs the records after a crash at %s", step)
}

// assertAccounted checks that nothing is mounted under home but layers the
// driver counts as mounted, no temporary mount is left, and every active
// device of the pool belongs to a record.
func assertAccounted(t *testing.T, d *Driver) {
	t.Helper()
	mounts, err := mountsUnder(d.mntDir())
	require.NoError(t, err)
	for id := range mounts {
		mounted, _ := d.store.Mounted(id)
		assert.True(t, mounted, "mnt/%s is mounted but the driver does not know it", id)
		assert.True(t, d.Exists(id), "mnt/%s is mounted but the layer does not exist", id)
	}
	homeMounts, err := mountsUnder(d.home)
	require.NoError(t, err)
	for name := range homeMounts {
		assert.False(t, strings.HasPrefix(name, ".base-mnt-"), "temporary base mount %s left", name)
	}
	entries, err := os.ReadDir(d.home)
	require.NoError(t, err)
	for _, e := range entries {
		assert.False(t, strings.HasPrefix(e.Name(), ".base-mnt-"), "temporary mount point %s left", e.Name())
	}
	devs, err := d.store.Pool().List()
	require.NoError(t, err)
	known := map[string]bool{}
	for _, dev := range devs {
		if dev.Active {
			known[filepath.Base(dev.Path)] = true
		}
	}
	for _, name := range activeDMWithPrefix(t, d.store.Pool().Name()) {
		assert.True(t, known[name], "active device %s has no record", name)
	}
}

func recordThinIDs(t *testing.T, d *Driver) []uint32 {
	t.Helper()
	devs, err := d.store.Pool().List()
	require.NoError(t, err)
	var ids []uint32
	for _, dev := range devs {
		ids = append(ids, dev.ID)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

func fsSize(t *testing.T, path string) int64 {
	t.Helper()
	var fs unix.Statfs_t
	require.NoError(t, unix.Statfs(path, &fs))
	return int64(fs.Blocks) * fs.Bsize
}
