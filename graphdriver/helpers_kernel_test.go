package graphdriver

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmthin/dmthin/internal/testenv"
)

// Kernel tests build real pools on loop devices under t.TempDir(): they need
// root and a kernel with dm-thin-pool (hack/vm.sh test runs them in a VM).

// smallPool keeps tests' pools small; the loopback files are sparse.
var smallPool = []string{
	"dm.loopdatasize=2G",
	"dm.loopmetadatasize=64M",
	"dm.basesize=256M",
	"dm.blkdiscard=false",
}

type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testLogger(t *testing.T) logrus.FieldLogger {
	l := logrus.New()
	l.SetOutput(testLogWriter{t})
	l.SetLevel(logrus.InfoLevel)
	return l
}

// newHome is a fresh home directory whose name carries the test suffix.
func newHome(t *testing.T) string {
	return filepath.Join(t.TempDir(), "home-"+testenv.Suffix(t))
}

// openDriver inits a driver on home with the small pool options plus extra.
// At the end of the test it is cleaned up and nothing it made may be left
// in the kernel: no mount under home, no device-mapper device of its pool,
// no loop device over its files.
func openDriver(t *testing.T, home string, extra ...string) *Driver {
	t.Helper()
	testenv.RequireDM(t)
	d, err := Init(home, append(append([]string(nil), smallPool...), extra...), testLogger(t))
	require.NoError(t, err)
	t.Cleanup(func() { cleanupAndCheck(t, d) })
	return d
}

// initDriver inits a driver the test cleans up itself; if the test stops
// early, Cleanup still runs (its error is the test's business only when it
// calls it).
func initDriver(t *testing.T, home string, opts []string) *Driver {
	t.Helper()
	testenv.RequireDM(t)
	d, err := Init(home, opts, testLogger(t))
	require.NoError(t, err)
	t.Cleanup(func() { _ = d.Cleanup() })
	return d
}

// cleanupAndCheck runs Cleanup (again: a second call does nothing) and
// checks the kernel holds nothing of the driver's.
func cleanupAndCheck(t *testing.T, d *Driver) {
	t.Helper()
	poolName := d.store.Pool().Name()
	assert.NoError(t, d.Cleanup(), "cleanup")
	assertNothingLeft(t, d.home, poolName)
}

func assertNothingLeft(t *testing.T, home, poolName string) {
	t.Helper()
	mounts, err := mountsUnder(filepath.Join(home, "mnt"))
	require.NoError(t, err)
	assert.Empty(t, mounts, "layers still mounted")
	prefix := strings.TrimSuffix(poolName, "-pool") + "-"
	for _, name := range dmNames(t) {
		assert.False(t, strings.HasPrefix(name, prefix), "device-mapper device %s left", name)
	}
	for _, f := range loopBackingFiles(t) {
		assert.False(t, strings.HasPrefix(f, home+"/"), "loop device over %s left", f)
	}
}

// dmNames lists the device-mapper devices from sysfs.
func dmNames(t *testing.T) []string {
	t.Helper()
	paths, err := filepath.Glob("/sys/block/dm-*/dm/name")
	require.NoError(t, err)
	var names []string
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err == nil {
			names = append(names, strings.TrimSpace(string(b)))
		}
	}
	return names
}

func activeDMWithPrefix(t *testing.T, poolName string) []string {
	prefix := strings.TrimSuffix(poolName, "-pool") + "-"
	var out []string
	for _, n := range dmNames(t) {
		// The pool, and the linear devices of a pool on a whole disk.
		if strings.HasPrefix(n, prefix) && n != poolName && n != poolName+"-meta" && n != poolName+"-data" {
			out = append(out, n)
		}
	}
	return out
}

func loopBackingFiles(t *testing.T) []string {
	t.Helper()
	paths, err := filepath.Glob("/sys/block/loop*/loop/backing_file")
	require.NoError(t, err)
	var files []string
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err == nil {
			files = append(files, strings.TrimSpace(string(b)))
		}
	}
	return files
}

// get mounts a layer and registers its Put, unless the test puts it.
func mustGet(t *testing.T, d *Driver, id string) string {
	t.Helper()
	root, err := d.Get(id, "")
	require.NoError(t, err)
	return root
}

func writeFile(t *testing.T, root, rel, content string) {
	t.Helper()
	p := filepath.Join(root, rel)
	require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
	require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
}

func readFile(t *testing.T, root, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, rel))
	require.NoError(t, err)
	return string(b)
}

// withLayer runs f with layer id mounted.
func withLayer(t *testing.T, d *Driver, id string, f func(root string)) {
	t.Helper()
	root := mustGet(t, d, id)
	f(root)
	require.NoError(t, d.Put(id))
}

// layerDevices lists the pool's devices as name -> size, for "nothing
// changed" checks.
func layerDevices(t *testing.T, d *Driver) map[string]int64 {
	t.Helper()
	devs, err := d.store.Pool().List()
	require.NoError(t, err)
	m := map[string]int64{}
	for _, dev := range devs {
		m[dev.Name] = dev.Size
	}
	return m
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}
