package thinpool

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Without the disk, findLabelled says which label it looked for and why
// the devices it could not read failed (errno kept); a directory that is
// no block device's is passed over.
func TestFindLabelledNoDisk(t *testing.T) {
	const uuid = "0f97f2187a2c62b45b2aeceee5210c4d"
	sys := t.TempDir()

	_, err := findLabelled(sys, uuid)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "no block device in "+sys+" holds the dmthin label "+uuid)
	assert.NotContains(t, err.Error(), "could not be read")

	require.NoError(t, os.Mkdir(filepath.Join(sys, "notadevice"), 0o755))
	gone := filepath.Join(sys, "gone0")
	require.NoError(t, os.Mkdir(gone, 0o755))
	// A number no device has: its node does not exist.
	require.NoError(t, os.WriteFile(filepath.Join(gone, "dev"), []byte("4095:1048575\n"), 0o644))
	_, err = findLabelled(sys, uuid)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "holds the dmthin label "+uuid)
	assert.Contains(t, err.Error(), "1 device(s) could not be read")
	assert.True(t, errors.Is(err, os.ErrNotExist), "%v", err)

	_, err = findLabelled(filepath.Join(sys, "missing"), uuid)
	assert.True(t, errors.Is(err, os.ErrNotExist), "%v", err)
}
