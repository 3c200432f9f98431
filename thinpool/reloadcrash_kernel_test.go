//go:build dmthin_kernel

package thinpool

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/devmapper"
	"github.com/dmthin/dmthin/internal/proc"
	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/dmthin/dmthin/loopback"
)

// Kills inside a reload, with I/O in flight. The child (this test binary,
// re-executed) opens the pool, writes to a thin device from a goroutine
// (O_DIRECT and fdatasync, recording each durable chunk), and grows the
// pool or resizes a device; it SIGKILLs itself at a named step. Killed
// while the pool or the device is suspended, its writer's thread sleeps
// uninterruptibly and the process cannot finish dying, so it keeps the
// store's lock: the parent's Open must resume what it left suspended, get
// the lock once the process is gone, and find every durable chunk intact.

const (
	envReloadCrash = "DMTHIN_RELOAD_CRASH"
	ioChunk        = 64 << 10
)

type reloadCrashSpec struct {
	Opts     Options
	Op       string // grow-data, grow-meta, autogrow, resize, grow-direct
	Step     string
	Progress string // file the writer appends each durable chunk's offset to
	DiskFile string // grow-direct: the file behind the whole disk's loop device
}

type reloadCrashCase struct {
	op    string
	steps []string
	mod   func(*Options)
}

var (
	growSteps   = []string{"grow:extended", "grow:capacity", "reload:loaded", "reload:suspended", "reload:resumed", "grow:rearmed"}
	reloadSteps = []string{"reload:loaded", "reload:suspended", "reload:resumed"}
)

var reloadCrashCases = []reloadCrashCase{
	{op: "grow-data", steps: growSteps},
	{op: "grow-meta", steps: growSteps},
	{op: "autogrow", steps: growSteps, mod: func(o *Options) {
		o.LoopDataSize = 32 * MiB
		o.AutoGrow = &AutoGrow{ThresholdPercent: 50, StepPercent: 100, MaxDataSize: 512 * MiB}
	}},
	{op: "resize", steps: reloadSteps},
	// A pool on a whole disk that grew: the label, then the data linear
	// device's reload (the first reload:* steps), then the pool's.
	{op: "grow-direct", steps: []string{"direct:grow:label", "reload:loaded", "reload:suspended", "reload:resumed", "direct:grow:linear", "grow:rearmed"}},
}

const (
	grownData = 768 * MiB
	grownMeta = 32 * MiB
	grownDisk = 768 * MiB
	ioSize    = 256 * MiB
)

func init() {
	raw := os.Getenv(envReloadCrash)
	if raw == "" {
		return
	}
	reloadCrashChild(raw)
	os.Exit(3) // the child kills itself at its step
}

func reloadCrashChild(raw string) {
	var sp reloadCrashSpec
	if err := json.Unmarshal([]byte(raw), &sp); err != nil {
		fmt.Fprintln(os.Stderr, "reload crash child:", err)
		return
	}
	ctx := context.Background()
	p, err := Open(ctx, sp.Opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "reload crash child: open:", err)
		return
	}
	path, err := p.Activate(ctx, "io")
	if err != nil {
		fmt.Fprintln(os.Stderr, "reload crash child: activate:", err)
		return
	}
	wrote := make(chan struct{})
	go func() {
		if err := durableWriter(path, sp.Progress, wrote); err != nil {
			fmt.Fprintln(os.Stderr, "reload crash child: writer:", err)
		}
	}()
	<-wrote // I/O is under way before the operation starts
	p.hook = func(s string) {
		if s != sp.Step {
			return
		}
		// Let the writer reach the device again: when it is suspended,
		// the write sleeps in the kernel as the process dies.
		time.Sleep(300 * time.Millisecond)
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
	switch sp.Op {
	case "grow-data":
		err = p.Grow(ctx, grownData, 0)
	case "grow-meta":
		err = p.Grow(ctx, 0, grownMeta)
	case "resize":
		err = p.Resize(ctx, "io", 2*ioSize)
	case "grow-direct":
		var l *loopback.Device
		if err = loopback.CreateSparse(sp.DiskFile, grownDisk); err == nil {
			if l, err = loopback.Find(sp.DiskFile); err == nil {
				if err = l.SetCapacity(); err == nil {
					err = p.Grow(ctx, 0, 0)
				}
			}
		}
	case "autogrow":
		// The writer crosses the threshold; the growth loop reloads.
		time.Sleep(2 * time.Minute)
	}
	fmt.Fprintf(os.Stderr, "reload crash child: step %q never reached (op error: %v)\n", sp.Step, err)
}

// durableWriter writes chunks to the device at path from its start, each
// made durable (fdatasync) before its offset is appended to progress, and
// closes wrote after the first one.
func durableWriter(path, progress string, wrote chan struct{}) error {
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		return err
	}
	log, err := os.OpenFile(progress, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	buf, err := unix.Mmap(-1, 0, ioChunk, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return err
	}
	first := true
	for off := int64(0); off+ioChunk <= ioSize; off += ioChunk {
		copy(buf, chunkPattern(off))
		if _, err := f.WriteAt(buf, off); err != nil {
			return err
		}
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			return err
		}
		if _, err := fmt.Fprintln(log, off); err != nil {
			return err
		}
		if first {
			close(wrote)
			first = false
		}
	}
	return nil
}

// chunkPattern is the content of the chunk at off: its offset, repeated.
func chunkPattern(off int64) []byte {
	return bytes.Repeat(binary.LittleEndian.AppendUint64(nil, uint64(off)), ioChunk/8)
}

func TestReloadCrashWithIOInFlight(t *testing.T) {
	testenv.RequireDM(t)
	for _, cc := range reloadCrashCases {
		for _, step := range cc.steps {
			t.Run(cc.op+"/"+step, func(t *testing.T) { runReloadCrash(t, cc, step) })
		}
	}
}

func runReloadCrash(t *testing.T, cc reloadCrashCase, step string) {
	var d *disk
	mod := cc.mod
	if cc.op == "grow-direct" {
		d = newDisk(t, 512*MiB)
		mod = func(o *Options) { o.LoopDataSize, o.LoopMetadataSize, o.Device = 0, 0, d.loop.Path() }
	}
	tp := openPool(t, mod)
	ctx := context.Background()
	_, err := tp.Create(ctx, "io", ioSize)
	require.NoError(t, err)
	_, err = tp.Activate(ctx, "io")
	require.NoError(t, err)
	before, err := tp.Status(ctx)
	require.NoError(t, err)
	opts := tp.opts
	opts.Logger = nil
	require.NoError(t, tp.Close())

	progress := filepath.Join(t.TempDir(), "progress")
	sp := reloadCrashSpec{Opts: opts, Op: cc.op, Step: step, Progress: progress}
	if d != nil {
		sp.DiskFile = d.file
	}
	raw, err := json.Marshal(sp)
	require.NoError(t, err)
	var out bytes.Buffer
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envReloadCrash+"="+string(raw))
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		select {
		case <-exited:
		case <-time.After(time.Minute):
			t.Errorf("the child never exited")
		}
	})

	// Wait until the child is killed: exited, or dying and stuck.
	var waitErr error
	done := false
	deadline := time.Now().Add(3 * time.Minute)
	for !done && !proc.Dying(cmd.Process.Pid) {
		select {
		case waitErr = <-exited:
			done = true
		case <-time.After(20 * time.Millisecond):
		}
		require.True(t, time.Now().Before(deadline), "the child was never killed at %s:\n%s", step, &out)
	}

	p, err := Open(ctx, tp.opts)
	require.NoError(t, err, "Open after a kill at %s", step)
	tp.Pool = p
	if !done {
		select {
		case waitErr = <-exited:
		case <-time.After(time.Minute):
			require.Fail(t, "the killed child did not exit after Open", "step %s", step)
		}
	}
	exited <- waitErr // for the cleanup
	var ee *exec.ExitError
	require.ErrorAs(t, waitErr, &ee, "the child must be killed at %s:\n%s", step, &out)
	ws := ee.Sys().(syscall.WaitStatus)
	require.True(t, ws.Signaled() && ws.Signal() == syscall.SIGKILL, "the child should die of SIGKILL at %s, got %v:\n%s", step, waitErr, &out)

	// Nothing of the pool is left suspended.
	for _, dm := range []string{p.name, p.dmName("io")} {
		info, err := p.dm.Info(dm)
		require.NoError(t, err)
		require.False(t, info.Suspended, "%s is suspended after a kill at %s", dm, step)
		assert.False(t, info.InactiveTable, "%s keeps an inactive table after a kill at %s", dm, step)
	}

	// Every chunk the writer made durable is there.
	path, err := p.Activate(ctx, "io")
	require.NoError(t, err)
	b, err := os.ReadFile(progress)
	require.NoError(t, err)
	lines := strings.Fields(string(b))
	require.NotEmpty(t, lines)
	dev, err := os.Open(path)
	require.NoError(t, err)
	got := make([]byte, ioChunk)
	for _, l := range lines {
		off, err := strconv.ParseInt(l, 10, 64)
		require.NoError(t, err)
		_, err = dev.ReadAt(got, off)
		require.NoError(t, err)
		require.True(t, bytes.Equal(chunkPattern(off), got), "chunk at %d, made durable before a kill at %s, is lost", off, step)
	}
	require.NoError(t, dev.Close())
	t.Logf("%d chunks made durable before the kill at %s are intact", len(lines), step)

	// The growth is there, or can be done again.
	st, err := p.Status(ctx)
	require.NoError(t, err)
	switch cc.op {
	case "grow-data":
		// The file was extended first: Open takes in what it has.
		assert.Equal(t, int64(grownData), st.DataTotal, "data after a kill at %s", step)
	case "grow-meta":
		assert.Equal(t, int64(grownMeta), st.MetadataTotal, "metadata after a kill at %s", step)
	case "autogrow":
		assert.Greater(t, st.DataTotal, before.DataTotal, "data after a kill at %s", step)
	case "grow-direct":
		// The disk grew first: Open takes in what it has.
		assert.Greater(t, st.DataTotal, before.DataTotal+200*MiB, "data after a kill at %s", step)
	case "resize":
		require.NoError(t, p.Resize(ctx, "io", 2*ioSize), "the resize can be done again after a kill at %s", step)
		d, err := p.Get("io")
		require.NoError(t, err)
		assert.Equal(t, int64(2*ioSize), d.Size)
	}
	assert.Equal(t, devmapper.PoolReadWrite, st.Mode, "pool mode after a kill at %s", step)

	// The inspector's check is healthy, and the pool's own metadata
	// agrees with the records.
	in, err := Inspect(InspectOptions{Root: tp.root})
	require.NoError(t, err)
	rep, err := in.Check(ctx)
	require.NoError(t, errors.Join(err, in.Close()))
	assert.True(t, rep.Healthy(), "check after a kill at %s: %+v", step, rep)
	assertPoolMatchesRecords(t, p)
	want := recordIDs(t, p)
	require.NoError(t, p.Shutdown(ctx))
	var ids []uint32
	if d != nil {
		ids = metadataIDs(t, d)
	} else {
		ids = testenv.ThinIDs(t, tp.metaPath)
	}
	assert.Equal(t, want, ids, "thin ids in the pool's metadata vs the records after a kill at %s", step)
	p, err = Open(ctx, tp.opts)
	require.NoError(t, err)
	tp.Pool = p
}
