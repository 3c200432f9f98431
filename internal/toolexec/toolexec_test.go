package toolexec

import (
	"context"
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
)

var errMissing = errors.New("tool missing")

func TestCapOutput(t *testing.T) {
	assert.Equal(t, "x", CapOutput([]byte("\n  x \n")))
	long := strings.Repeat("a", MaxOutput+100)
	got := CapOutput([]byte(long))
	assert.True(t, strings.HasPrefix(got, long[:MaxOutput]))
	assert.True(t, strings.HasSuffix(got, "... (100 more bytes)"), got[len(got)-40:])
}

func TestMissingNamesPackageAndSentinel(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	dir := t.TempDir()
	f := Finder{Dirs: []string{dir}, Package: "xfsprogs", Sentinel: errMissing}
	err := f.Run(context.Background(), "mkfs.xfs", nil)
	require.ErrorIs(t, err, errMissing)
	assert.EqualError(t, err, "mkfs.xfs not found in PATH, "+dir+": install the xfsprogs package")
	assert.NotErrorIs(t, (&ToolMissingError{Tool: "x"}), errMissing, "no sentinel matches nothing")
}

func TestOutputAndOkCodes(t *testing.T) {
	dir := t.TempDir()
	script := "#!/bin/sh\necho \"out $1\"\necho \"err $1\" >&2\nexit $1\n"
	require.NoError(t, os.WriteFile(filepath.Join(dir, "tool"), []byte(script), 0o755))
	t.Setenv("PATH", dir)
	f := Finder{Package: "p", Sentinel: errMissing}

	out, err := f.Output(context.Background(), "tool", nil, "0")
	require.NoError(t, err)
	assert.Equal(t, "out 0\n", out)
	out, err = f.Output(context.Background(), "tool", []int{1}, "1")
	require.NoError(t, err, "exit 1 listed as success")
	assert.Equal(t, "out 1\n", out)

	err = f.Run(context.Background(), "tool", []int{1}, "2")
	var ee *ExecError
	require.ErrorAs(t, err, &ee)
	assert.Equal(t, 2, ee.ExitCode)
	assert.Equal(t, "err 2", ee.Stderr)
	assert.Equal(t, "out 2", ee.Stdout)
	assert.Equal(t, filepath.Join(dir, "tool")+" 2: exit status 2: err 2: output: out 2", err.Error())
}

// envTiedChild makes the test binary, re-executed, the caller of a tool
// that would outlive it: it runs the tool and never returns.
const envTiedChild = "TOOLEXEC_TIED_CHILD"

// A tool started by a process that is killed dies with it: SIGKILL the
// caller while its tool runs, and the tool is gone soon after (without the
// parent-death signal it sleeps on, reparented to init).
func TestToolDiesWithCaller(t *testing.T) {
	if dir := os.Getenv(envTiedChild); dir != "" {
		// Run from a goroutine of its own, as an engine's operation
		// would, while other goroutines keep the runtime busy.
		go func() {
			_ = Finder{Dirs: []string{dir}, Package: "p"}.Run(context.Background(), "sleeper", nil)
		}()
		select {}
	}
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	script := "#!/bin/sh\necho $$ > " + pidFile + ".tmp\nmv " + pidFile + ".tmp " + pidFile + "\nexec sleep 600\n"
	require.NoError(t, os.WriteFile(filepath.Join(dir, "sleeper"), []byte(script), 0o755))
	child := exec.Command(os.Args[0], "-test.run=^TestToolDiesWithCaller$")
	child.Env = append(os.Environ(), envTiedChild+"="+dir)
	require.NoError(t, child.Start())
	var pid int
	require.Eventually(t, func() bool {
		b, err := os.ReadFile(pidFile)
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	}, 20*time.Second, 10*time.Millisecond, "the tool never started")
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	require.NoError(t, child.Process.Kill())
	_ = child.Wait()
	assert.Eventually(t, func() bool {
		// Gone, or a zombie waiting for init to reap it.
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		return err != nil || strings.Contains(string(b), ") Z ")
	}, 10*time.Second, 10*time.Millisecond, "the tool (pid %d) outlived the process that started it", pid)
}
