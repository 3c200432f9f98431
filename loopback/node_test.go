package loopback

import (
	"bufio"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// unusedBlockMajor returns a block major number in the range for local use
// (240-254) that no driver registered: opening a node with it gives ENXIO.
func unusedBlockMajor(t *testing.T) uint32 {
	t.Helper()
	f, err := os.Open("/proc/devices")
	require.NoError(t, err)
	defer f.Close()
	used := map[uint32]bool{}
	block := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "Block devices:") {
			block = true
			continue
		}
		if n, _, ok := strings.Cut(line, " "); block && ok {
			if maj, err := strconv.ParseUint(n, 10, 32); err == nil {
				used[uint32(maj)] = true
			}
		}
	}
	require.NoError(t, sc.Err())
	for maj := uint32(240); maj <= 254; maj++ {
		if !used[maj] {
			return maj
		}
	}
	t.Skip("every block major of 240-254 is registered; no driverless major for a stale node")
	return 0
}

// TestOpenNumberRefuses: openNumber only hands out a node that is the
// kernel's loopN. A node of another device, a stale node, or no way to make
// one fail with the errno (or ErrNotLoop) and the path, and an existing
// node is left as it was.
func TestOpenNumberRefuses(t *testing.T) {
	testenv.RequireRoot(t)
	// Two devices of this test: a node named after the first that opens
	// the second is a node of the wrong device.
	first := attachT(t, newBacking(t, "node-a", MiB), Options{}, useConfigure)
	second := attachT(t, newBacking(t, "node-b", MiB), Options{}, useConfigure)
	bogus := unusedBlockMajor(t)

	dir := t.TempDir()
	notDir := filepath.Join(dir, "file")
	require.NoError(t, os.WriteFile(notDir, []byte("x"), 0o600))
	for _, tc := range []struct {
		name   string
		dir    string
		n      int
		setup  func(t *testing.T, node string)
		op     string
		target error
	}{
		{"regular file as node", dir, 1, func(t *testing.T, node string) {
			require.NoError(t, os.WriteFile(node, []byte("not a device"), 0o600))
		}, "stat", ErrNotLoop},
		{"node of another loop device", dir, first.Number(), func(t *testing.T, node string) {
			maj, min := second.Dev()
			require.NoError(t, unix.Mknod(node, unix.S_IFBLK|0o600, int(unix.Mkdev(maj, min))))
		}, "fstat", ErrNotLoop},
		{"stale node without a driver", dir, 2, func(t *testing.T, node string) {
			require.NoError(t, unix.Mknod(node, unix.S_IFBLK|0o600, int(unix.Mkdev(bogus, 2))))
		}, "open", unix.ENXIO},
		{"directory missing", filepath.Join(dir, "missing"), 0, nil, "mknod", unix.ENOENT},
		{"directory is a file", notDir, 0, nil, "stat", unix.ENOTDIR},
	} {
		t.Run(tc.name, func(t *testing.T) {
			node := filepath.Join(tc.dir, "loop"+strconv.Itoa(tc.n))
			var before unix.Stat_t
			if tc.setup != nil {
				tc.setup(t, node)
				require.NoError(t, unix.Stat(node, &before))
			}
			d, err := openNumber(tc.dir, tc.n, unix.O_RDONLY)
			if err == nil {
				d.Close()
				t.Fatalf("openNumber(%s, %d) opened %s", tc.dir, tc.n, d.Path())
			}
			assert.ErrorIs(t, err, tc.target)
			var le *Error
			require.ErrorAs(t, err, &le)
			assert.Equal(t, tc.op, le.Op)
			assert.Equal(t, node, le.Path)
			if tc.setup != nil {
				after := statT(t, node)
				assert.Equal(t, [2]uint64{uint64(before.Mode), before.Rdev}, [2]uint64{uint64(after.Mode), after.Rdev},
					"the refused node was changed")
			}
		})
	}
	// Both devices are still bound to their files: a refused node touched
	// neither.
	for _, d := range []*Device{first, second} {
		assert.True(t, boundTo(t, d.Number(), d.BackingFile()), "loop%d", d.Number())
	}
}

// privateDevAndSys gives the calling test goroutine a mount namespace of its
// own in which /sys and /dev are empty tmpfs: a container without sysfs and
// with a static /dev, and no udev. The goroutine stays locked to its thread,
// which ends with it, so the namespace never leaks to other tests. Subtests
// (other goroutines) would not see it.
func privateDevAndSys(t *testing.T) {
	t.Helper()
	runtime.LockOSThread() // never unlocked: the thread exits with the test
	require.NoError(t, unix.Unshare(unix.CLONE_NEWNS))
	require.NoError(t, unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""))
	for _, dir := range []string{"/sys", "/dev"} {
		require.NoError(t, unix.Mount("dmthintest-"+testenv.Suffix(t), dir, "tmpfs", 0, "mode=0755"))
	}
	// Runs before newBacking's cleanups, so that they see the real /dev
	// and sysfs (this thread only).
	t.Cleanup(func() {
		for _, dir := range []string{"/dev", "/sys"} {
			if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
				t.Errorf("cleanup: unmount %s: %v", dir, err)
			}
		}
	})
}

// TestWithoutSysfsOrUdev runs Attach and Find where there is no sysfs and
// /dev is a static directory with no loop nodes: Attach makes the node it
// needs (LOOP_MAJOR:N), Find lists the nodes in /dev. Stale nodes that open
// no device make Attach give up after its bounded attempts, keeping the
// errno, and Find skip them.
func TestWithoutSysfsOrUdev(t *testing.T) {
	testenv.RequireRoot(t)
	path := newBacking(t, "nosysfs", 4*MiB)
	ctl := statT(t, controlPath)
	bogus := unusedBlockMajor(t)

	privateDevAndSys(t)
	_, err := os.Stat(sysBlockDir)
	require.ErrorIs(t, err, os.ErrNotExist, "sysfs still visible")

	// No /dev/loop-control: nothing can be asked for.
	d, err := Attach(path, Options{})
	if err == nil {
		d.Detach()
		t.Fatalf("Attach without %s gave %s", controlPath, d.Path())
	}
	assert.ErrorIs(t, err, unix.ENOENT)
	var le *Error
	require.ErrorAs(t, err, &le)
	assert.Equal(t, [2]string{"open", controlPath}, [2]string{le.Op, le.Path})

	require.NoError(t, unix.Mknod(controlPath, unix.S_IFCHR|0o600, int(ctl.Rdev)))

	// Stale nodes, opening no device, for the free device the kernel
	// gives and the next few (in case another attacher takes it).
	fd, err := unix.Open(controlPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	free, err := unix.IoctlRetInt(fd, unix.LOOP_CTL_GET_FREE)
	unix.Close(fd)
	require.NoError(t, err)
	var stale []string
	for n := 0; n <= free+16; n++ {
		p := filepath.Join(devDir, "loop"+strconv.Itoa(n))
		require.NoError(t, unix.Mknod(p, unix.S_IFBLK|0o600, int(unix.Mkdev(bogus, uint32(n)))))
		stale = append(stale, p)
	}
	d, err = Attach(path, Options{})
	if err == nil {
		d.Detach()
		t.Fatalf("Attach through stale nodes gave %s", d.Path())
	}
	assert.ErrorIs(t, err, ErrNoFreeDevice)
	assert.ErrorIs(t, err, unix.ENXIO, "the last attempt's errno is kept")
	require.ErrorAs(t, err, &le)
	assert.Equal(t, [2]string{"attach", path}, [2]string{le.Op, le.Path})
	_, err = Find(path)
	assert.ErrorIs(t, err, ErrNotFound, "Find through stale nodes")
	for _, p := range stale {
		require.NoError(t, os.Remove(p))
	}

	// A /dev with no loop node: Attach makes it, Find finds it there.
	d, err = Attach(path, Options{})
	require.NoError(t, err)
	n := d.Number()
	t.Cleanup(func() { d.Close() })
	node := statT(t, d.Path())
	assert.Equal(t, uint32(unix.S_IFBLK), node.Mode&unix.S_IFMT)
	assert.Equal(t, [2]uint32{loopMajor, uint32(n)}, [2]uint32{unix.Major(node.Rdev), unix.Minor(node.Rdev)})
	maj, min := d.Dev()
	assert.Equal(t, [2]uint32{loopMajor, uint32(n)}, [2]uint32{maj, min})
	st, err := d.Status()
	require.NoError(t, err)
	assert.True(t, st.sameFile(ptr(statT(t, path))), "status names another file: %+v", st)

	f, err := Find(path)
	require.NoError(t, err)
	assert.Equal(t, n, f.Number())
	require.NoError(t, f.Close())

	require.NoError(t, d.Detach())
	_, err = Find(path)
	assert.ErrorIs(t, err, ErrNotFound, "after Detach")
}
