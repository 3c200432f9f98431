package loopback

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestFindAfterRestart: a device attached without autoclear survives its
// handle, and Find gives it back by the file, also through another name.
func TestFindAfterRestart(t *testing.T) {
	testenv.RequireRoot(t)
	path := newBacking(t, "restart", 4*MiB)
	other := newBacking(t, "other", 4*MiB)
	d, err := Attach(path, Options{})
	require.NoError(t, err)
	n := d.Number()
	maj, min := d.Dev()
	require.NoError(t, d.Close()) // the "restart"
	// A second bound file, so Find has to tell them apart.
	o := attachT(t, other, Options{}, useConfigure)

	link := filepath.Join(t.TempDir(), "link.img")
	require.NoError(t, os.Symlink(path, link))
	for _, p := range []string{path, link} {
		f, err := Find(p)
		require.NoError(t, err, p)
		assert.Equal(t, n, f.Number(), p)
		fmaj, fmin := f.Dev()
		assert.Equal(t, [2]uint32{maj, min}, [2]uint32{fmaj, fmin}, p)
		require.NoError(t, f.Close())
	}
	f, err := Find(other)
	require.NoError(t, err)
	assert.Equal(t, o.Number(), f.Number())
	require.NoError(t, f.Close())

	f, err = Find(path)
	require.NoError(t, err)
	assert.Equal(t, path, f.BackingFile())
	require.NoError(t, f.Detach())
	waitUnbound(t, n, path)
	_, err = Find(path)
	assert.True(t, errors.Is(err, ErrNotFound), "after Detach: %v", err)
}

func TestFindNotFound(t *testing.T) {
	testenv.RequireRoot(t)
	path := newBacking(t, "unbound", MiB)
	_, err := Find(path)
	assert.True(t, errors.Is(err, ErrNotFound), "unbound file: %v", err)
	var le *Error
	require.True(t, errors.As(err, &le))
	assert.Equal(t, path, le.Path)

	_, err = Find(filepath.Join(t.TempDir(), "missing.img"))
	assert.True(t, errors.Is(err, unix.ENOENT), "missing file: %v", err)
	assert.False(t, errors.Is(err, ErrNotFound))
}

// TestGrow: after the file grows, the device keeps its size until
// SetCapacity, then has the new one.
func TestGrow(t *testing.T) {
	testenv.RequireRoot(t)
	for _, m := range methods {
		t.Run(m.name, func(t *testing.T) {
			path := newBacking(t, "grow", 4*MiB)
			d := attachT(t, path, Options{}, m.m)
			size, err := d.Size()
			require.NoError(t, err)
			require.Equal(t, int64(4*MiB), size)

			require.NoError(t, CreateSparse(path, 12*MiB))
			size, err = d.Size()
			require.NoError(t, err)
			assert.Equal(t, int64(4*MiB), size, "the kernel saw the growth before SetCapacity")

			require.NoError(t, d.SetCapacity())
			size, err = d.Size()
			require.NoError(t, err)
			assert.Equal(t, int64(12*MiB), size)

			// Through a handle from Find too.
			require.NoError(t, CreateSparse(path, 16*MiB))
			f, err := Find(path)
			require.NoError(t, err)
			defer f.Close()
			require.NoError(t, f.SetCapacity())
			size, err = d.Size()
			require.NoError(t, err)
			assert.Equal(t, int64(16*MiB), size)
		})
	}
}
