package loopback

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func statT(t *testing.T, path string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	require.NoError(t, unix.Stat(path, &st))
	return st
}

func TestCreateSparseNew(t *testing.T) {
	path := filepath.Join(t.TempDir(), "new.img")
	require.NoError(t, CreateSparse(path, 64*MiB))
	st := statT(t, path)
	assert.Equal(t, int64(64*MiB), st.Size)
	assert.Equal(t, uint32(unix.S_IFREG|0o600), st.Mode&(unix.S_IFMT|0o7777), "mode %o", st.Mode)
	// Sparse: nothing allocated (a few blocks of slack for file systems
	// that preallocate).
	assert.LessOrEqual(t, st.Blocks*512, int64(64*1024), "allocated bytes of a fresh sparse file")
}

func TestCreateSparseGrowKeepsData(t *testing.T) {
	path := filepath.Join(t.TempDir(), "grow.img")
	require.NoError(t, CreateSparse(path, MiB))
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte("hello"), 4096)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	require.NoError(t, CreateSparse(path, 8*MiB))
	st := statT(t, path)
	assert.Equal(t, int64(8*MiB), st.Size)
	assert.LessOrEqual(t, st.Blocks*512, int64(64*1024), "growing must not allocate")
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, "hello", string(data[4096:4101]))

	// Same size again: nothing to do, no error.
	require.NoError(t, CreateSparse(path, 8*MiB))
	assert.Equal(t, int64(8*MiB), statT(t, path).Size)
}

func TestCreateSparseErrors(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big.img")
	require.NoError(t, CreateSparse(big, 4*MiB))
	require.NoError(t, os.Mkdir(filepath.Join(dir, "adir"), 0o700))

	for _, tc := range []struct {
		name   string
		path   string
		size   int64
		target error
	}{
		{"shrink", big, 2 * MiB, ErrShrink},
		{"zero", filepath.Join(dir, "zero.img"), 0, ErrBadSize},
		{"negative", filepath.Join(dir, "neg.img"), -512, ErrBadSize},
		{"not sector aligned", filepath.Join(dir, "odd.img"), 1000, ErrBadSize},
		{"directory", filepath.Join(dir, "adir"), MiB, unix.EISDIR},
		{"missing parent", filepath.Join(dir, "nope", "x.img"), MiB, unix.ENOENT},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CreateSparse(tc.path, tc.size)
			require.Error(t, err)
			assert.True(t, errors.Is(err, tc.target), "got %v, want %v", err, tc.target)
			var le *Error
			require.True(t, errors.As(err, &le))
			assert.Equal(t, tc.path, le.Path)
		})
	}
	// The refused shrink left the file as it was; refused sizes made no file.
	assert.Equal(t, int64(4*MiB), statT(t, big).Size)
	for _, name := range []string{"zero.img", "neg.img", "odd.img"} {
		_, err := os.Stat(filepath.Join(dir, name))
		assert.True(t, errors.Is(err, os.ErrNotExist), name)
	}
}

func TestCreateSparseNotRegular(t *testing.T) {
	// A FIFO stands in for anything that is not a regular file (opening
	// one read-write does not block).
	path := filepath.Join(t.TempDir(), "fifo")
	require.NoError(t, unix.Mkfifo(path, 0o600))
	err := CreateSparse(path, MiB)
	assert.True(t, errors.Is(err, ErrNotRegular), "got %v", err)
}
