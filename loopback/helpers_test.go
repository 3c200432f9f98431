package loopback

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/stretchr/testify/require"
)

const MiB = 1 << 20

// TestMain runs the test binary as a helper process when
// TestMultiProcessAttach starts it so.
func TestMain(m *testing.M) {
	if path := os.Getenv(helperEnv); path != "" {
		os.Exit(helperMain(path))
	}
	os.Exit(m.Run())
}

// newBacking makes a sparse backing file of size bytes in a temporary
// directory, named with the test suffix, and registers a cleanup that
// detaches every loop device still bound to it (found by inode, so only
// devices this test attached), even when the test failed half-way.
func newBacking(t *testing.T, name string, size int64) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name+"-"+testenv.Suffix(t)+".img")
	require.NoError(t, CreateSparse(path, size))
	t.Cleanup(func() { detachAll(t, path) })
	return path
}

// detachAll detaches whatever loop devices are bound to path.
func detachAll(t *testing.T, path string) {
	t.Helper()
	for i := 0; i < 16; i++ {
		d, err := Find(path)
		if errors.Is(err, ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			return
		}
		if err != nil {
			t.Errorf("cleanup: find loop device of %s: %v", path, err)
			return
		}
		n := d.Number()
		if err := d.Detach(); err != nil {
			t.Errorf("cleanup: detach %s: %v", d.Path(), err)
			return
		}
		waitUnbound(t, n, path)
	}
	t.Errorf("cleanup: %s still bound after 16 detaches", path)
}

// attachT attaches and registers a cleanup that closes the handle (Detach
// of leftovers is newBacking's cleanup).
func attachT(t *testing.T, path string, opts Options, m method) *Device {
	t.Helper()
	d, err := attach(path, opts, m)
	require.NoError(t, err)
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("cleanup: close %s: %v", d.Path(), err)
		}
	})
	return d
}

// sysfsAttr reads /sys/block/loopN/<attr>, trimmed; ok is false when it
// does not exist.
func sysfsAttr(t *testing.T, n int, attr string) (string, bool) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(sysBlockDir, "loop"+strconv.Itoa(n), attr))
	if errors.Is(err, os.ErrNotExist) {
		return "", false
	}
	require.NoError(t, err)
	return strings.TrimSpace(string(data)), true
}

// boundTo reports whether sysfs shows loop device n bound to path.
func boundTo(t *testing.T, n int, path string) bool {
	t.Helper()
	got, ok := sysfsAttr(t, n, "loop/backing_file")
	return ok && got == path
}

// waitUnbound waits (bounded) until loop device n is no longer bound to
// path. Someone else may bind the number again at once, so only our file
// matters.
func waitUnbound(t *testing.T, n int, path string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for boundTo(t, n, path) {
		if time.Now().After(deadline) {
			t.Fatalf("loop%d still bound to %s after 5s", n, path)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var methods = []struct {
	name string
	m    method
}{
	{"LOOP_CONFIGURE", useConfigure},
	{"LOOP_SET_FD", useSetFD},
}
