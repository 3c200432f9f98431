package loopback

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestConcurrentAttach attaches 8 files from 8 goroutines released at once:
// every one gets its own device, bound to its own file.
func TestConcurrentAttach(t *testing.T) {
	testenv.RequireRoot(t)
	const n = 8
	paths := make([]string, n)
	for i := range paths {
		paths[i] = newBacking(t, fmt.Sprintf("concurrent%d", i), MiB)
	}
	devs := make([]*Device, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			devs[i], errs[i] = Attach(paths[i], Options{})
		})
	}
	close(start)
	wg.Wait()
	for i := range n {
		if devs[i] != nil {
			t.Cleanup(func() { devs[i].Close() })
		}
	}

	seen := map[int]string{}
	for i := range n {
		require.NoError(t, errs[i], paths[i])
		num := devs[i].Number()
		assert.NotContains(t, seen, num, "loop%d given to %s and %s", num, seen[num], paths[i])
		seen[num] = paths[i]
		st, err := devs[i].Status()
		require.NoError(t, err)
		assert.True(t, st.sameFile(ptr(statT(t, paths[i]))), "loop%d is not bound to %s", num, paths[i])
	}
	for i := range n {
		num := devs[i].Number()
		require.NoError(t, devs[i].Detach())
		waitUnbound(t, num, paths[i])
	}
}

// helperEnv names the backing file a helper process attaches.
const helperEnv = "LOOPBACK_TEST_HELPER_FILE"

// helperMain is the body of a helper process of TestMultiProcessAttach (the
// test binary run again, see TestMain). It waits for "go" on stdin, attaches
// path (with autoclear, so a killed helper leaves nothing bound), prints
// "attached N", waits for stdin to close, detaches and prints "detached".
func helperMain(path string) int {
	in := bufio.NewReader(os.Stdin)
	if line, err := in.ReadString('\n'); err != nil || line != "go\n" {
		fmt.Printf("error: want go, got %q %v\n", line, err)
		return 1
	}
	d, err := Attach(path, Options{Autoclear: true})
	if err != nil {
		fmt.Printf("error: %v\n", err)
		return 1
	}
	fmt.Printf("attached %d\n", d.Number())
	io.Copy(io.Discard, in)
	if err := d.Detach(); err != nil {
		fmt.Printf("error: %v\n", err)
		return 1
	}
	fmt.Println("detached")
	return 0
}

// TestMultiProcessAttach races several processes for free loop devices:
// each ends on its own device, and all are unbound afterwards.
func TestMultiProcessAttach(t *testing.T) {
	testenv.RequireRoot(t)
	const n = 6
	type helper struct {
		path  string
		cmd   *exec.Cmd
		stdin io.WriteCloser
		lines chan string
	}
	helpers := make([]*helper, n)
	for i := range helpers {
		h := &helper{path: newBacking(t, fmt.Sprintf("proc%d", i), MiB), lines: make(chan string, 8)}
		h.cmd = exec.Command(os.Args[0], "-test.run=^$")
		h.cmd.Env = append(os.Environ(), helperEnv+"="+h.path)
		h.cmd.Stderr = os.Stderr
		var err error
		h.stdin, err = h.cmd.StdinPipe()
		require.NoError(t, err)
		stdout, err := h.cmd.StdoutPipe()
		require.NoError(t, err)
		require.NoError(t, h.cmd.Start())
		t.Cleanup(func() {
			h.cmd.Process.Kill()
			h.cmd.Wait()
		})
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				h.lines <- sc.Text()
			}
			close(h.lines)
		}()
		helpers[i] = h
	}
	// Release them together.
	for _, h := range helpers {
		_, err := io.WriteString(h.stdin, "go\n")
		require.NoError(t, err)
	}

	seen := map[int]string{}
	for _, h := range helpers {
		line := expectLine(t, h.lines, "attached ")
		num, err := strconv.Atoi(strings.TrimPrefix(line, "attached "))
		require.NoError(t, err, line)
		assert.NotContains(t, seen, num, "loop%d given to %s and %s", num, seen[num], h.path)
		seen[num] = h.path
		assert.True(t, boundTo(t, num, h.path), "loop%d not bound to %s", num, h.path)
	}
	for _, h := range helpers {
		require.NoError(t, h.stdin.Close())
	}
	for _, h := range helpers {
		expectLine(t, h.lines, "detached")
		require.NoError(t, h.cmd.Wait())
	}
	for num, path := range seen {
		waitUnbound(t, num, path)
	}
}

// expectLine returns the next line a helper prints that is neither testing's
// own output nor empty, failing on "error:" lines and after 30s.
func expectLine(t *testing.T, lines <-chan string, prefix string) string {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("helper exited before printing %q", prefix)
			}
			if strings.HasPrefix(line, prefix) {
				return line
			}
			if strings.HasPrefix(line, "error:") {
				t.Fatalf("helper: %s", line)
			}
		case <-timeout:
			t.Fatalf("no %q from helper after 30s", prefix)
		}
	}
}
