package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/devmapper"
	"github.com/dmthin/dmthin/internal/proc"
	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/dmthin/dmthin/thinpool"
)

// The engine killed inside a reload, as an operator meets it: the pool is
// suspended, and the killed process cannot exit (its writer waits for the
// pool) so it holds the store. status and check say so; gc resumes the pool
// (its Open settles what the dead process left), the process exits, and
// check is healthy again.

const envStuckChild = "DMTHIN_STUCK_CHILD"

func init() {
	raw := os.Getenv(envStuckChild)
	if raw == "" {
		return
	}
	stuckChild(raw)
	os.Exit(3) // it kills itself
}

// stuckChild opens the pool, writes to a device from a goroutine, suspends
// the pool as a reload does and is killed before the resume.
func stuckChild(raw string) {
	var o thinpool.Options
	if err := json.Unmarshal([]byte(raw), &o); err != nil {
		fmt.Fprintln(os.Stderr, "stuck child:", err)
		return
	}
	ctx := context.Background()
	p, err := thinpool.Open(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "stuck child: open:", err)
		return
	}
	path, err := p.Activate(ctx, "io")
	if err != nil {
		fmt.Fprintln(os.Stderr, "stuck child: activate:", err)
		return
	}
	wrote := make(chan struct{})
	go func() {
		f, err := os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT, 0)
		if err != nil {
			fmt.Fprintln(os.Stderr, "stuck child:", err)
			return
		}
		buf, _ := unix.Mmap(-1, 0, 64<<10, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
		for off := int64(0); ; off = (off + 64<<10) % (32 << 20) {
			_, werr := f.WriteAt(buf, off)
			serr := unix.Fdatasync(int(f.Fd()))
			if werr != nil || serr != nil {
				fmt.Fprintln(os.Stderr, "stuck child: write:", werr, serr)
				return
			}
			select {
			case <-wrote:
			default:
				close(wrote)
			}
		}
	}()
	<-wrote
	dm, err := devmapper.Open(devmapper.Options{})
	if err == nil {
		err = dm.Suspend(p.Name(), devmapper.SuspendOptions{})
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "stuck child: suspend:", err)
		return
	}
	time.Sleep(300 * time.Millisecond) // the writer reaches the suspended pool
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {}
}

func TestPoolLeftSuspendedByAKilledEngine(t *testing.T) {
	testenv.RequireDM(t)
	ctx := context.Background()
	root := filepath.Join(t.TempDir(), "root-"+testenv.Suffix(t))
	zero := 0
	o := thinpool.Options{Root: root, LoopDataSize: dataSize, LoopMetadataSize: metaSize, MinFreeSpacePercent: &zero}
	p, err := thinpool.Open(ctx, o)
	require.NoError(t, err)
	poolName := p.Name()
	_, err = p.Create(ctx, "io", 32<<20)
	require.NoError(t, err)
	require.NoError(t, p.Close())
	t.Cleanup(func() {
		if p, err := thinpool.Open(ctx, o); assert.NoError(t, err) {
			assert.NoError(t, p.Shutdown(ctx))
		}
	})

	raw, err := json.Marshal(o)
	require.NoError(t, err)
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), envStuckChild+"="+string(raw))
	child.Stdout, child.Stderr = os.Stderr, os.Stderr
	require.NoError(t, child.Start())
	exited := make(chan error, 1)
	go func() { exited <- child.Wait() }()
	t.Cleanup(func() {
		_ = child.Process.Kill()
		if dm, err := devmapper.Open(devmapper.Options{}); err == nil {
			_, _ = dm.Resume(poolName) // never leave the VM's pool suspended
			_ = dm.Close()
		}
		select {
		case <-exited:
		case <-time.After(time.Minute):
			t.Error("the child never exited")
		}
	})
	require.Eventually(t, func() bool { return proc.Dying(child.Process.Pid) }, 2*time.Minute, 20*time.Millisecond, "the child was never killed")
	select {
	case err := <-exited:
		t.Fatalf("the killed child exited (%v): its writer was not stuck on the suspended pool, nothing to test", err)
	case <-time.After(500 * time.Millisecond):
	}

	r := execCLI(t, "status", "--root", root, "--json")
	require.Equal(t, exitOK, r.code)
	rep := decode[thinpool.Report](t, r)
	assert.True(t, rep.InUse)
	assert.True(t, rep.HolderDying)
	assert.Equal(t, []string{poolName}, rep.Suspended)
	r = execCLI(t, "status", "--root", root)
	assert.Contains(t, r.stdout, "held by a process that was killed and has not exited")
	assert.Regexp(t, `suspended\s+`+poolName+` \(I/O to them waits`, r.stdout)

	r = execCLI(t, "check", "--root", root, "--json")
	require.Equal(t, exitProblems, r.code)
	cr := decode[thinpool.CheckReport](t, r)
	assert.Equal(t, []string{"suspended - " + poolName + " -"}, findingKinds(cr))

	r = execCLI(t, "gc", "--root", root, "--yes")
	require.Equal(t, exitOK, r.code, "gc on a pool a killed engine left suspended")
	select {
	case err := <-exited:
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee)
		assert.Equal(t, syscall.SIGKILL, ee.Sys().(syscall.WaitStatus).Signal())
		exited <- err // for the cleanup
	case <-time.After(time.Minute):
		t.Fatal("the killed engine did not exit once gc resumed its pool")
	}
	r = execCLI(t, "check", "--root", root)
	assert.Equal(t, exitOK, r.code, "check after gc")
	r = execCLI(t, "status", "--root", root, "--json")
	assert.Empty(t, decode[thinpool.Report](t, r).Suspended)
}
