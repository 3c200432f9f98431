//go:build dmthin_kernel

package thinpool

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/internal/devlabel"
	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/dmthin/dmthin/loopback"
)

// Kernel tests of a pool on one whole device (Options.Device, direct.go).
// A loop device over a sparse file stands in for the disk; growing the
// disk is truncating the file bigger and LOOP_SET_CAPACITY.

type disk struct {
	file string
	loop *loopback.Device
}

func newDisk(t *testing.T, size int64) *disk {
	t.Helper()
	testenv.RequireDM(t)
	d := &disk{file: filepath.Join(t.TempDir(), "disk-"+testenv.Suffix(t))}
	require.NoError(t, loopback.CreateSparse(d.file, size))
	l, err := loopback.Attach(d.file, loopback.Options{})
	require.NoError(t, err)
	d.loop = l
	t.Cleanup(func() { assert.NoError(t, l.Detach()) })
	return d
}

// grow makes the disk size bytes and tells the loop device.
func (d *disk) grow(t *testing.T, size int64) {
	t.Helper()
	require.NoError(t, loopback.CreateSparse(d.file, size))
	require.NoError(t, d.loop.SetCapacity())
}

func directOptions(t *testing.T, dev string) Options {
	zero := 0
	return Options{Root: filepath.Join(t.TempDir(), "pool"), Device: dev, MinFreeSpacePercent: &zero}
}

// openDirect opens the pool and shuts it down at the end of the test,
// checking that no dm device of the pool is left.
func openDirect(t *testing.T, opts Options) *Pool {
	t.Helper()
	p, err := Open(context.Background(), opts)
	require.NoError(t, err)
	// The linear devices under the pool are no strays of recovery.
	st, err := p.Status(context.Background())
	require.NoError(t, err)
	assert.Empty(t, st.FaultyDevices, "faulty devices after Open")
	assert.Equal(t, opts.Device, st.Device)
	assert.Equal(t, p.dm.NodePath(p.prefix+"-pool-data"), st.DataDevice)
	assert.Equal(t, p.dm.NodePath(p.prefix+"-pool-meta"), st.MetadataDevice)
	t.Cleanup(func() {
		if !p.closed {
			assert.NoError(t, p.Shutdown(context.Background()))
		}
		assertNoDevicesOf(t, p.prefix)
	})
	return p
}

// assertNoDevicesOf checks that no dm device with the prefix is left.
func assertNoDevicesOf(t *testing.T, prefix string) {
	t.Helper()
	assert.Empty(t, dmNames(t, prefix), "dm devices left")
}

// dmNames lists the names of the dm devices with the prefix, from sysfs.
func dmNames(t *testing.T, prefix string) []string {
	t.Helper()
	entries, err := filepath.Glob("/sys/block/dm-*/dm/name")
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		b, err := os.ReadFile(e)
		require.NoError(t, err)
		if n := strings.TrimSpace(string(b)); strings.HasPrefix(n, prefix+"-") {
			names = append(names, n)
		}
	}
	return names
}

// metadataIDs copies the metadata area out of the disk's backing file (the
// pool must be shut down) and returns the thin ids thin_dump finds there,
// after thin_check has passed it.
func metadataIDs(t *testing.T, d *disk) []uint32 {
	t.Helper()
	l, err := devlabel.Read(d.loop.Path())
	require.NoError(t, err)
	src, err := os.Open(d.file)
	require.NoError(t, err)
	defer src.Close()
	meta := filepath.Join(t.TempDir(), "metadata")
	dst, err := os.Create(meta)
	require.NoError(t, err)
	_, err = io.Copy(dst, io.NewSectionReader(src, l.MetaOffset, l.MetaLength))
	require.NoError(t, err)
	require.NoError(t, dst.Close())
	thinCheck(t, meta)
	return testenv.ThinIDs(t, meta)
}

// TestDirectLayoutAndReopen: a blank disk is laid out (label, metadata
// area, data area), layers written, then the pool is closed and reopened
// (devices still up) and shut down and reopened (from the label alone):
// the data is intact each time and thin_dump of the metadata area agrees
// with the records.
func TestDirectLayoutAndReopen(t *testing.T) {
	ctx := context.Background()
	d := newDisk(t, 256*MiB)
	opts := directOptions(t, d.loop.Path())
	p := openDirect(t, opts)

	l, err := devlabel.Read(d.loop.Path())
	require.NoError(t, err)
	known, err := p.st.metaString(keyDeviceUUID)
	require.NoError(t, err)
	assert.Equal(t, l.UUID.String(), known, "the store knows the label")
	st, err := p.Status(ctx)
	require.NoError(t, err)
	assert.Equal(t, l.DataLength, st.DataTotal, "the pool's data space is the label's data area")
	assert.Equal(t, l.MetaLength, st.MetadataTotal, "metadata space")
	assert.ElementsMatch(t, []string{p.name, p.prefix + "-pool-meta", p.prefix + "-pool-data"}, dmNames(t, p.prefix))
	t.Logf("layout of 256MiB: metadata %d bytes at %d, data %d bytes at %d", l.MetaLength, l.MetaOffset, l.DataLength, l.DataOffset)

	_, err = p.Create(ctx, "base", 64*MiB)
	require.NoError(t, err)
	path, err := p.Activate(ctx, "base")
	require.NoError(t, err)
	data := pattern(3, 4*MiB)
	writeFile(t, path, 8*MiB, data)
	_, err = p.Snapshot(ctx, "layer", "base", 0)
	require.NoError(t, err)
	require.NoError(t, p.Deactivate(ctx, "base", false))
	assertPoolMatchesRecords(t, p)

	// Close keeps the devices; Open finds them.
	require.NoError(t, p.Close())
	p = openDirect(t, opts)
	path, err = p.Activate(ctx, "layer")
	require.NoError(t, err)
	assert.Equal(t, data, readFile(t, path, 8*MiB, len(data)), "after Close and Open")

	// Shutdown removes the pool and the linear devices; Open rebuilds
	// them from the label.
	want := recordIDs(t, p)
	require.NoError(t, p.Shutdown(ctx))
	assert.Empty(t, dmNames(t, p.prefix), "shutdown removed the pool and its linear devices")
	assert.Equal(t, want, metadataIDs(t, d), "thin ids in the metadata area vs records")
	p = openDirect(t, opts)
	path, err = p.Activate(ctx, "layer")
	require.NoError(t, err)
	assert.Equal(t, data, readFile(t, path, 8*MiB, len(data)), "after Shutdown and Open")
	l2, err := devlabel.Read(d.loop.Path())
	require.NoError(t, err)
	assert.Equal(t, l, l2, "the label was not rewritten")
	assert.ErrorIs(t, func() error { _, err := p.Create(ctx, "pool-data", MiB); return err }(), ErrInvalidName)
}

// TestDirectGrow: the disk grows while the pool is down (Open grows it) and
// while it is up (Grow): the label, the data linear device and the pool
// take the new size, the metadata area stays, and the data is intact.
func TestDirectGrow(t *testing.T) {
	ctx := context.Background()
	d := newDisk(t, 256*MiB)
	opts := directOptions(t, d.loop.Path())
	p := openDirect(t, opts)
	l0, err := devlabel.Read(d.loop.Path())
	require.NoError(t, err)
	_, err = p.Create(ctx, "base", 64*MiB)
	require.NoError(t, err)
	path, err := p.Activate(ctx, "base")
	require.NoError(t, err)
	data := pattern(5, 2*MiB)
	writeFile(t, path, 0, data)
	require.NoError(t, p.Shutdown(ctx))

	d.grow(t, 512*MiB)
	p = openDirect(t, opts)
	l1, err := devlabel.Read(d.loop.Path())
	require.NoError(t, err)
	assert.Equal(t, int64(512*MiB)-l0.DataOffset, l1.DataLength, "the label's data area takes the disk")
	assert.Equal(t, l0.MetaLength, l1.MetaLength, "the metadata area stays")
	assert.Equal(t, l0.Seq+1, l1.Seq)
	st, err := p.Status(ctx)
	require.NoError(t, err)
	assert.Equal(t, l1.DataLength, st.DataTotal, "pool grown at Open")
	path, err = p.Activate(ctx, "base")
	require.NoError(t, err)
	assert.Equal(t, data, readFile(t, path, 0, len(data)))

	// Grow while a device is active and written to.
	d.grow(t, 768*MiB)
	require.NoError(t, p.Grow(ctx, 0, 0))
	l2, err := devlabel.Read(d.loop.Path())
	require.NoError(t, err)
	st, err = p.Status(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(768*MiB)-l0.DataOffset, l2.DataLength)
	assert.Equal(t, l2.DataLength, st.DataTotal, "pool grown by Grow")
	assert.Equal(t, data, readFile(t, path, 0, len(data)))
	more := pattern(9, MiB)
	writeFile(t, path, 32*MiB, more)
	assert.Equal(t, more, readFile(t, path, 32*MiB, len(more)))
	assert.ErrorContains(t, p.Grow(ctx, GiB, 0), "grow the devices")

	// A disk that shrank below the data area is refused.
	want := recordIDs(t, p)
	require.NoError(t, p.Shutdown(ctx))
	assert.Equal(t, want, metadataIDs(t, d))
	require.NoError(t, os.Truncate(d.file, 512*MiB))
	require.NoError(t, d.loop.SetCapacity())
	_, err = Open(ctx, opts)
	assert.ErrorContains(t, err, "must not shrink")
	assert.Empty(t, dmNames(t, p.prefix), "a refused Open leaves no device")
}

// TestDirectRefusals: a disk holding ext4 (mounted, or not) is refused and
// left untouched unless forced; a corrupt label is refused with a clear
// error; the label of another store's pool is refused unless forced, and
// a store that knows another label refuses the disk.
func TestDirectRefusals(t *testing.T) {
	ctx := context.Background()
	t.Run("ext4", func(t *testing.T) {
		fs := loopWithExt4(t, 64*MiB)
		opts := directOptions(t, fs.Path())
		mnt := t.TempDir()
		require.NoError(t, unix.Mount(fs.Path(), mnt, "ext4", 0, ""))
		before := headSum(t, fs.Path())
		_, err := Open(ctx, opts)
		assert.ErrorIs(t, err, ErrDeviceInUse)
		assert.ErrorIs(t, err, unix.EBUSY)
		assert.Equal(t, before, headSum(t, fs.Path()), "mounted: untouched")
		require.NoError(t, unix.Unmount(mnt, 0))

		before = headSum(t, fs.Path())
		_, err = Open(ctx, opts)
		assert.ErrorIs(t, err, ErrDeviceInUse)
		assert.ErrorContains(t, err, "ext2/3/4")
		t.Logf("ext4 disk: %v", err)
		assert.Equal(t, before, headSum(t, fs.Path()), "unmounted: untouched")
		out, err := exec.Command("e2fsck", "-n", "-f", fs.Path()).CombinedOutput()
		assert.NoError(t, err, "the filesystem is intact: %s", out)

		opts.ForceDevices = true
		p := openDirect(t, opts)
		_, err = p.Create(ctx, "d", MiB)
		require.NoError(t, err)
		_, err = devlabel.Read(fs.Path())
		assert.NoError(t, err, "forced: labelled")
	})

	t.Run("labels", func(t *testing.T) {
		d := newDisk(t, 128*MiB)
		opts := directOptions(t, d.loop.Path())
		p := openDirect(t, opts)
		_, err := p.Create(ctx, "kept", MiB)
		require.NoError(t, err)
		prefix := p.prefix
		require.NoError(t, p.Shutdown(ctx))

		// Another store (a new root) finds this store's label.
		other := directOptions(t, d.loop.Path())
		_, err = Open(ctx, other)
		assert.ErrorIs(t, err, ErrDeviceInUse)
		assert.ErrorContains(t, err, "another dmthin store")
		t.Logf("another store's disk: %v", err)

		// The same disk given as a data device is refused too.
		meta := newDisk(t, 16*MiB)
		_, err = Open(ctx, Options{Root: filepath.Join(t.TempDir(), "p"), DataDevice: d.loop.Path(), MetadataDevice: meta.loop.Path()})
		assert.ErrorIs(t, err, ErrDeviceInUse)
		assert.ErrorContains(t, err, "dmthin whole-device label")

		// A corrupt label: one flipped bit.
		f, err := os.OpenFile(d.file, os.O_RDWR, 0)
		require.NoError(t, err)
		b := make([]byte, 1)
		_, err = f.ReadAt(b, 60)
		require.NoError(t, err)
		b[0] ^= 0x10
		_, err = f.WriteAt(b, 60)
		require.NoError(t, err)
		require.NoError(t, f.Close())
		flushCache(t, d.loop.Path())
		_, err = Open(ctx, opts)
		assert.ErrorIs(t, err, devlabel.ErrCorrupt)
		assert.ErrorContains(t, err, "checksum")
		t.Logf("corrupt label: %v", err)
		forced := opts
		forced.ForceDevices = true
		_, err = Open(ctx, forced)
		assert.ErrorIs(t, err, devlabel.ErrCorrupt, "a store with a pool never overwrites its disk")
		assert.Empty(t, dmNames(t, prefix), "refusals leave no device")

		// A new store may overwrite it when forced.
		_, err = Open(ctx, other)
		assert.ErrorIs(t, err, devlabel.ErrCorrupt)
		other.ForceDevices = true
		q := openDirect(t, other)
		_, err = q.Get("kept")
		assert.ErrorIs(t, err, ErrNotFound)

		// The first store now finds a label it does not know.
		require.NoError(t, q.Shutdown(ctx))
		_, err = Open(ctx, opts)
		assert.ErrorIs(t, err, ErrPoolNotOurs)
	})

	t.Run("options", func(t *testing.T) {
		o := Options{Root: "/r", Device: "/dev/x", DataDevice: "/dev/y", MetadataDevice: "/dev/z", LoopDataSize: GiB}
		err := o.Validate()
		assert.ErrorContains(t, err, "Device excludes")
		assert.ErrorContains(t, err, "loopback sizes make no sense with direct")
	})
}

const GiB = 1 << 30

// flushCache drops a block device's cached pages (BLKFLSBUF).
func flushCache(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKFLSBUF, 0)
	require.Zero(t, errno)
}

// The direct crash child: re-executed test binary that opens the pool with
// openHook set, and SIGKILLs itself at the named step of Open.
const (
	envDirectCrashOpts = "DMTHIN_DIRECT_CRASH_OPTS"
	envDirectCrashStep = "DMTHIN_DIRECT_CRASH_STEP"
)

func init() {
	if os.Getenv(envDirectCrashOpts) == "" {
		return
	}
	var o Options
	if err := json.Unmarshal([]byte(os.Getenv(envDirectCrashOpts)), &o); err != nil {
		fmt.Fprintln(os.Stderr, "direct crash child:", err)
		os.Exit(3)
	}
	step := os.Getenv(envDirectCrashStep)
	openHook = func(s string) {
		if s == step {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	}
	_, err := Open(context.Background(), o)
	fmt.Fprintf(os.Stderr, "direct crash child: step %q never reached (open error: %v)\n", step, err)
	os.Exit(3)
}

func crashOpen(t *testing.T, opts Options, step string) {
	t.Helper()
	raw, err := json.Marshal(opts)
	require.NoError(t, err)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), envDirectCrashOpts+"="+string(raw), envDirectCrashStep+"="+step)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "child must be killed, output:\n%s", out)
	ws := ee.Sys().(syscall.WaitStatus)
	require.True(t, ws.Signaled() && ws.Signal() == syscall.SIGKILL, "child should die of SIGKILL at %s, got %v:\n%s", step, err, out)
}

// TestDirectCrash kills Open (a child process, SIGKILL) at each step of the
// first layout and of a grow, then reopens: the pool opens, has the whole
// disk, keeps its data, and thin_dump of its metadata agrees with the
// records.
func TestDirectCrash(t *testing.T) {
	ctx := context.Background()
	for _, step := range []string{"direct:layout:intent", "direct:layout:zeroed", "direct:layout:label"} {
		t.Run(step, func(t *testing.T) {
			d := newDisk(t, 128*MiB)
			opts := directOptions(t, d.loop.Path())
			crashOpen(t, opts, step)
			p := openDirect(t, opts)
			l, err := devlabel.Read(d.loop.Path())
			require.NoError(t, err)
			known, err := p.st.metaString(keyDeviceUUID)
			require.NoError(t, err)
			assert.Equal(t, known, l.UUID.String())
			st, err := p.Status(ctx)
			require.NoError(t, err)
			assert.Equal(t, l.DataLength, st.DataTotal)
			_, err = p.Create(ctx, "after", 8*MiB)
			require.NoError(t, err)
			path, err := p.Activate(ctx, "after")
			require.NoError(t, err)
			data := pattern(7, MiB)
			writeFile(t, path, 0, data)
			assert.Equal(t, data, readFile(t, path, 0, len(data)))
			want := recordIDs(t, p)
			require.NoError(t, p.Shutdown(ctx))
			assert.Equal(t, want, metadataIDs(t, d), "thin ids vs records after a crash at %s", step)
		})
	}
	for _, step := range []string{"direct:grow:label", "direct:grow:linear"} {
		t.Run(step, func(t *testing.T) {
			d := newDisk(t, 128*MiB)
			opts := directOptions(t, d.loop.Path())
			p := openDirect(t, opts)
			_, err := p.Create(ctx, "base", 32*MiB)
			require.NoError(t, err)
			path, err := p.Activate(ctx, "base")
			require.NoError(t, err)
			data := pattern(1, MiB)
			writeFile(t, path, 0, data)
			_, err = p.Snapshot(ctx, "snap", "base", 0)
			require.NoError(t, err)
			before, err := p.Status(ctx)
			require.NoError(t, err)
			// The pool stays up (Close keeps it); the child finds the disk
			// bigger and is killed while growing it.
			require.NoError(t, p.Close())
			d.grow(t, 384*MiB)
			crashOpen(t, opts, step)

			l, err := devlabel.Read(d.loop.Path())
			require.NoError(t, err)
			assert.Equal(t, int64(384*MiB)-l.DataOffset, l.DataLength, "the label was grown first")
			p = openDirect(t, opts)
			st, err := p.Status(ctx)
			require.NoError(t, err)
			assert.Greater(t, st.DataTotal, before.DataTotal)
			assert.Equal(t, l.DataLength, st.DataTotal, "the pool took the grown area")
			for _, n := range []string{"base", "snap"} {
				path, err := p.Activate(ctx, n)
				require.NoError(t, err)
				assert.Equal(t, data, readFile(t, path, 0, len(data)), "%s after a crash at %s", n, step)
			}
			assertPoolMatchesRecords(t, p)
			want := recordIDs(t, p)
			require.NoError(t, p.Shutdown(ctx))
			assert.Equal(t, want, metadataIDs(t, d), "thin ids vs records after a crash at %s", step)
		})
	}
}
