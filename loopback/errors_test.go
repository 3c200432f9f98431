package loopback

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestAttachReadOnlyFile: a file on a read-only file system cannot be
// attached read-write (EROFS from the open, nothing bound), and attaches
// read-only as a read-only device showing the file's data.
func TestAttachReadOnlyFile(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	require.NoError(t, unix.Mount("dmthin-"+testenv.Suffix(t), dir, "tmpfs", 0, "mode=0700"))
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("cleanup: unmount %s: %v", dir, err)
		}
	})
	path := filepath.Join(dir, "ro-"+testenv.Suffix(t)+".img")
	require.NoError(t, CreateSparse(path, 4*MiB))
	data := bytes.Repeat([]byte("read-only "), 50)
	writeAt(t, path, data, 0)
	require.NoError(t, unix.Mount("", dir, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""))
	t.Cleanup(func() { detachAll(t, path) }) // before the unmount

	for _, m := range methods {
		t.Run(m.name, func(t *testing.T) {
			d, err := attach(path, Options{}, m.m)
			if err == nil {
				d.Detach()
				t.Fatalf("read-write attach of a file on a read-only mount gave %s", d.Path())
			}
			assert.ErrorIs(t, err, unix.EROFS)
			var le *Error
			require.ErrorAs(t, err, &le)
			assert.Equal(t, [2]string{"open", path}, [2]string{le.Op, le.Path})
			_, err = Find(path)
			assert.ErrorIs(t, err, ErrNotFound, "a refused attach left a device bound")

			d = attachT(t, path, Options{ReadOnly: true}, m.m)
			n := d.Number()
			st, err := d.Status()
			require.NoError(t, err)
			assert.True(t, st.Flags.Has(FlagReadOnly), "flags %v", st.Flags)
			assert.Equal(t, "1", mustSysfs(t, n, "ro"))
			got := make([]byte, len(data))
			_, err = unix.Pread(d.fd, got, 0)
			require.NoError(t, err)
			assert.Equal(t, data, got)
			require.NoError(t, d.Detach())
			waitUnbound(t, n, path)
		})
	}
}

// TestNilDevice: the *Device of a failed Attach or Find is nil; a deferred
// Close on it does nothing, and every other call answers ErrClosed rather
// than panicking.
func TestNilDevice(t *testing.T) {
	var d *Device
	assert.NoError(t, d.Close())
	assert.Equal(t, "", d.Path())
	assert.Equal(t, -1, d.Number())
	maj, min := d.Dev()
	assert.Equal(t, [2]uint32{0, 0}, [2]uint32{maj, min})
	assert.Equal(t, "", d.BackingFile())
	for name, call := range map[string]func() error{
		"Detach":      d.Detach,
		"SetCapacity": d.SetCapacity,
		"Size":        func() error { _, err := d.Size(); return err },
		"Status":      func() error { _, err := d.Status(); return err },
	} {
		err := call()
		assert.ErrorIs(t, err, ErrClosed, name)
	}
}

// TestErrorMessages: what a caller logs names the operation, the path and
// the cause; the backing file only when it is not the path itself.
func TestErrorMessages(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.img")
	_, findErr := Find(missing)
	var nilDev *Device
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"no path", nilDev.Detach(), "loopback: LOOP_CLR_FD: loopback: device handle is closed"},
		{"path only", findErr, "loopback: stat " + missing + ": no such file or directory"},
		{"file is the path", &Error{Op: "open", Path: missing, File: missing, Err: unix.EROFS},
			"loopback: open " + missing + ": read-only file system"},
		{"node and file", &Error{Op: "LOOP_SET_FD", Path: "/dev/loop3", File: missing, Err: unix.EBUSY},
			"loopback: LOOP_SET_FD /dev/loop3 (backing " + missing + "): device or resource busy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Error(t, tc.err)
			assert.Equal(t, tc.want, tc.err.Error())
		})
	}
}

// TestCreateSparseFileSizeLimit: a grow refused by the kernel (past
// RLIMIT_FSIZE here; past the file system's maximum in real use) keeps the
// errno, EFBIG, and leaves the file's size and data as they were.
func TestCreateSparseFileSizeLimit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "limit.img")
	require.NoError(t, CreateSparse(path, MiB))
	writeAt(t, path, []byte("kept"), 0)

	var old unix.Rlimit
	require.NoError(t, unix.Getrlimit(unix.RLIMIT_FSIZE, &old))
	if old.Cur != unix.RLIM_INFINITY && old.Cur < 4*MiB {
		t.Skipf("RLIMIT_FSIZE is already %d", old.Cur)
	}
	// Go ignores SIGXFSZ, so the kernel's answer is the errno.
	require.NoError(t, unix.Setrlimit(unix.RLIMIT_FSIZE, &unix.Rlimit{Cur: 2 * MiB, Max: old.Max}))
	err := CreateSparse(path, 4*MiB)
	require.NoError(t, unix.Setrlimit(unix.RLIMIT_FSIZE, &old))

	assert.ErrorIs(t, err, unix.EFBIG)
	var le *Error
	require.ErrorAs(t, err, &le)
	assert.Equal(t, [2]string{"ftruncate", path}, [2]string{le.Op, le.Path})
	assert.Equal(t, int64(MiB), statT(t, path).Size)
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, "kept", string(got[:4]))
}
