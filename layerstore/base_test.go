package layerstore

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "base.json")
	require.NoError(t, writeFileAtomic(p, []byte("one\n")))
	require.NoError(t, writeFileAtomic(p, []byte("two\n")))
	data, err := os.ReadFile(p)
	require.NoError(t, err)
	assert.Equal(t, "two\n", string(data))
	fi, err := os.Stat(p)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 1, "no temporary file left")
}
