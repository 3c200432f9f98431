package loopback

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestAttachFlags attaches with each combination of options, through both
// kernel interfaces, and checks what the kernel reports in the status and in
// sysfs, then detaches.
func TestAttachFlags(t *testing.T) {
	testenv.RequireRoot(t)
	for _, m := range methods {
		for _, opts := range []Options{
			{},
			{ReadOnly: true},
			{Autoclear: true},
			{DirectIO: true},
			{ReadOnly: true, DirectIO: true, Autoclear: true},
		} {
			t.Run(fmt.Sprintf("%s/%+v", m.name, opts), func(t *testing.T) {
				path := newBacking(t, "flags", 4*MiB)
				if opts.DirectIO && !canODirect(t, path) {
					// tmpfs before Linux 6.6 (the test VM's /tmp) refuses
					// O_DIRECT: check the documented refusal instead.
					_, err := attach(path, opts, m.m)
					require.ErrorIs(t, err, ErrDirectIO)
					t.Skipf("%s refuses O_DIRECT; checked that Attach fails with ErrDirectIO (%v)", filepath.Dir(path), err)
				}
				d := attachT(t, path, opts, m.m)

				assert.Equal(t, "/dev/loop"+strconv.Itoa(d.Number()), d.Path())
				assert.Equal(t, path, d.BackingFile())
				maj, min := d.Dev()
				assert.Equal(t, fmt.Sprintf("%d:%d", maj, min), mustSysfs(t, d.Number(), "dev"))
				assert.True(t, boundTo(t, d.Number(), path), "sysfs backing_file of loop%d", d.Number())

				st, err := d.Status()
				require.NoError(t, err)
				assert.Equal(t, d.Number(), st.Number)
				assert.True(t, st.sameFile(ptr(statT(t, path))), "status names another file: %+v", st)
				assert.Equal(t, opts.flags(), st.Flags&(FlagReadOnly|FlagAutoclear|FlagDirectIO), "flags %v", st.Flags)
				assert.Equal(t, boolDigit(opts.ReadOnly), mustSysfs(t, d.Number(), "ro"))
				assert.Equal(t, boolDigit(opts.Autoclear), mustSysfs(t, d.Number(), "loop/autoclear"))
				assert.Equal(t, boolDigit(opts.DirectIO), mustSysfs(t, d.Number(), "loop/dio"))

				size, err := d.Size()
				require.NoError(t, err)
				assert.Equal(t, int64(4*MiB), size)

				n := d.Number()
				require.NoError(t, d.Detach())
				waitUnbound(t, n, path)
				_, err = d.Size()
				assert.True(t, errors.Is(err, ErrClosed), "Size after Detach: %v", err)
				assert.NoError(t, d.Close(), "Close after Detach")
			})
		}
	}
}

// canODirect reports whether the file system holding path lets it be
// opened with O_DIRECT.
func canODirect(t *testing.T, path string) bool {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.EINVAL) {
		return false
	}
	require.NoError(t, err)
	unix.Close(fd)
	return true
}

// TestDirectIORefused: on a file system without O_DIRECT (ramfs), asking for
// direct I/O fails with ErrDirectIO and leaves nothing attached, rather than
// falling back to buffered I/O.
func TestDirectIORefused(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	require.NoError(t, unix.Mount("dmthin-"+testenv.Suffix(t), dir, "ramfs", 0, "mode=0700"))
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("cleanup: unmount %s: %v", dir, err)
		}
	})
	path := filepath.Join(dir, "dio-"+testenv.Suffix(t)+".img")
	require.NoError(t, CreateSparse(path, 4*MiB))
	t.Cleanup(func() { detachAll(t, path) })
	require.False(t, canODirect(t, path), "ramfs accepted O_DIRECT; this test needs a file system that refuses it")

	for _, m := range methods {
		t.Run(m.name, func(t *testing.T) {
			d, err := attach(path, Options{DirectIO: true}, m.m)
			if err == nil {
				d.Detach()
				t.Fatalf("direct I/O on ramfs attached %s", d.Path())
			}
			assert.ErrorIs(t, err, ErrDirectIO)
			assert.ErrorIs(t, err, unix.EINVAL)
			_, err = Find(path)
			assert.ErrorIs(t, err, ErrNotFound, "a refused attach left a device bound")

			// Without direct I/O the same file attaches.
			d = attachT(t, path, Options{}, m.m)
			require.NoError(t, d.Detach())
		})
	}
}

func ptr[T any](v T) *T { return &v }

func boolDigit(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

func mustSysfs(t *testing.T, n int, attr string) string {
	t.Helper()
	v, ok := sysfsAttr(t, n, attr)
	require.True(t, ok, "/sys/block/loop%d/%s missing", n, attr)
	return v
}

// TestDataRoundTrip: what the file holds is read through the device, and
// what is written through the device lands in the file.
func TestDataRoundTrip(t *testing.T) {
	testenv.RequireRoot(t)
	for _, m := range methods {
		t.Run(m.name, func(t *testing.T) {
			path := newBacking(t, "data", 4*MiB)
			before := bytes.Repeat([]byte("file->dev "), 100)
			writeAt(t, path, before, 0)

			d := attachT(t, path, Options{}, m.m)
			dev, err := os.OpenFile(d.Path(), os.O_RDWR, 0)
			require.NoError(t, err)
			defer dev.Close()
			got := make([]byte, len(before))
			_, err = dev.ReadAt(got, 0)
			require.NoError(t, err)
			assert.Equal(t, before, got)

			after := bytes.Repeat([]byte("dev->file "), 100)
			_, err = dev.WriteAt(after, 3*MiB)
			require.NoError(t, err)
			require.NoError(t, dev.Sync())
			data, err := os.ReadFile(path)
			require.NoError(t, err)
			assert.Equal(t, after, data[3*MiB:3*MiB+len(after)])
		})
	}
}

func writeAt(t *testing.T, path string, b []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(b, off)
	require.NoError(t, err)
	require.NoError(t, f.Close())
}

// TestReadOnlyRefusesWrites: a read-only device cannot be written, whether
// the kernel refuses the read-write open or the write itself.
func TestReadOnlyRefusesWrites(t *testing.T) {
	testenv.RequireRoot(t)
	for _, m := range methods {
		t.Run(m.name, func(t *testing.T) {
			path := newBacking(t, "ro", 4*MiB)
			writeAt(t, path, []byte("original"), 0)
			d := attachT(t, path, Options{ReadOnly: true}, m.m)

			dev, err := os.OpenFile(d.Path(), os.O_RDWR, 0)
			if err == nil {
				defer dev.Close()
				_, err = dev.WriteAt([]byte("changed!"), 0)
				if err == nil {
					err = dev.Sync()
				}
			}
			require.Error(t, err, "writing a read-only loop device")
			assert.True(t, errors.Is(err, unix.EPERM) || errors.Is(err, unix.EROFS) || errors.Is(err, unix.EACCES),
				"want EPERM/EROFS/EACCES, got %v", err)
			data, err := os.ReadFile(path)
			require.NoError(t, err)
			assert.Equal(t, "original", string(data[:8]))
		})
	}
}

// TestAutoclearOnClose: with Autoclear, closing the only handle unbinds the
// device; without it, the binding outlives the handle.
func TestAutoclearOnClose(t *testing.T) {
	testenv.RequireRoot(t)
	for _, m := range methods {
		t.Run(m.name, func(t *testing.T) {
			path := newBacking(t, "autoclear", 4*MiB)
			d := attachT(t, path, Options{Autoclear: true}, m.m)
			n := d.Number()
			require.True(t, boundTo(t, n, path))
			require.NoError(t, d.Close())
			waitUnbound(t, n, path)
			_, err := Find(path)
			assert.True(t, errors.Is(err, ErrNotFound), "Find after autoclear: %v", err)

			keep := newBacking(t, "keep", 4*MiB)
			d = attachT(t, keep, Options{}, m.m)
			require.NoError(t, d.Close())
			assert.True(t, boundTo(t, d.Number(), keep), "without autoclear the device must stay bound after Close")
		})
	}
}

// TestAttachErrors: failures name the operation and path and keep the errno,
// and leave nothing bound.
func TestAttachErrors(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	for _, tc := range []struct {
		name   string
		path   string
		opts   Options
		op     string
		target error
	}{
		{"missing file", filepath.Join(dir, "missing.img"), Options{}, "open", unix.ENOENT},
		// Opening a directory read-only works; binding it does not.
		{"directory", dir, Options{ReadOnly: true}, "LOOP_SET_FD", unix.EINVAL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := Attach(tc.path, tc.opts)
			if err == nil {
				d.Detach()
				t.Fatalf("Attach(%s) succeeded on %s", tc.path, d.Path())
			}
			assert.True(t, errors.Is(err, tc.target), "got %v, want %v", err, tc.target)
			var le *Error
			require.True(t, errors.As(err, &le), "%T", err)
			assert.Equal(t, tc.op, le.Op)
		})
	}
}

// TestUnboundDeviceErrno opens a loop device that this test added and holds
// exclusively (so no other attacher can bind it), and checks that the
// kernel's ENXIO for an unbound device comes back through every method.
func TestUnboundDeviceErrno(t *testing.T) {
	testenv.RequireRoot(t)
	ctl, err := unix.Open(controlPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(ctl) }) // after the removal below
	n := -1
	for i := 200 + os.Getpid()%100; i < 400; i++ {
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(ctl), unix.LOOP_CTL_ADD, uintptr(i))
		if errno == 0 {
			n = int(r)
			break
		}
		require.ErrorIs(t, errno, unix.EEXIST)
	}
	require.GreaterOrEqual(t, n, 0, "LOOP_CTL_ADD found no unused number")
	t.Cleanup(func() {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(ctl), unix.LOOP_CTL_REMOVE, uintptr(n))
		if errno == unix.EBUSY {
			t.Logf("loop%d is in use by another attacher; left in place", n)
		} else if errno != 0 {
			t.Errorf("cleanup: LOOP_CTL_REMOVE %d: %v", n, errno)
		}
	})

	d, err := openNumber(devDir, n, unix.O_RDONLY|unix.O_EXCL)
	require.NoError(t, err)
	defer d.Close()
	_, err = d.Status()
	if !errors.Is(err, unix.ENXIO) {
		// Bound by someone between our add and our exclusive open: not
		// ours to touch.
		t.Skipf("loop%d was taken by another attacher (%v)", n, err)
	}
	var le *Error
	require.True(t, errors.As(err, &le))
	assert.Equal(t, "LOOP_GET_STATUS64", le.Op)
	assert.Equal(t, d.Path(), le.Path)

	err = d.SetCapacity()
	assert.True(t, errors.Is(err, unix.ENXIO), "SetCapacity: %v", err)
	err = d.Detach()
	assert.True(t, errors.Is(err, unix.ENXIO), "Detach: %v", err)
	assert.True(t, errors.As(err, &le) && le.Op == "LOOP_CLR_FD", "%v", err)
	// Detach closed the handle anyway.
	assert.True(t, errors.Is(d.Detach(), ErrClosed))
}

// TestEnsureNode makes a loop node where none exists (no udev) and checks
// that it is the kernel's device.
func TestEnsureNode(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	p, err := ensureNode(dir, 0)
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(dir, "loop0"), p)
	st := statT(t, p)
	assert.Equal(t, uint32(unix.S_IFBLK), st.Mode&unix.S_IFMT)
	assert.Equal(t, mustSysfs(t, 0, "dev"), fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev)))
	// Again: the node is there, nothing to do.
	_, err = ensureNode(dir, 0)
	require.NoError(t, err)

	require.NoError(t, os.WriteFile(filepath.Join(dir, "loop1"), nil, 0o600))
	_, err = ensureNode(dir, 1)
	assert.True(t, errors.Is(err, ErrNotLoop), "a regular file as node: %v", err)
}
