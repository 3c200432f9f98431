package fsys

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmthin/dmthin/internal/testenv"
)

func TestNew(t *testing.T) {
	fs, err := New("", Options{})
	require.NoError(t, err)
	assert.Equal(t, Ext4, fs.Type(), "ext4 is the default")
	fs, err = New(XFS, Options{})
	require.NoError(t, err)
	assert.Equal(t, XFS, fs.Type())
	assert.Equal(t, "nouuid", fs.MountData())
	assert.Equal(t, int64(300<<20), fs.MinSize())

	_, err = New("btrfs", Options{})
	require.ErrorIs(t, err, ErrUnsupported)
	assert.Contains(t, err.Error(), `"btrfs" (want ext4 or xfs)`)
	three, minusTwo := 3, -2
	_, err = New(Ext4, Options{NoSpaceMaxRetries: &three})
	require.ErrorIs(t, err, ErrInvalidOptions)
	_, err = New(XFS, Options{NoSpaceMaxRetries: &minusTwo})
	require.ErrorIs(t, err, ErrInvalidOptions)
	_, err = New(XFS, Options{NoSpaceMaxRetries: &three})
	require.NoError(t, err)
}

func TestValidateMkfsArgs(t *testing.T) {
	e, _ := New(Ext4, Options{})
	x, _ := New(XFS, Options{})
	assert.NoError(t, e.ValidateMkfsArgs([]string{"-m0"}))
	assert.NoError(t, x.ValidateMkfsArgs([]string{"-i", "maxpct=10"}))
	assert.ErrorIs(t, e.ValidateMkfsArgs([]string{"/dev/x"}), ErrInvalidOptions)
	assert.ErrorIs(t, x.ValidateMkfsArgs([]string{"-N"}), ErrInvalidOptions)
}

func TestJoinMountData(t *testing.T) {
	assert.Equal(t, "", JoinMountData())
	assert.Equal(t, "nouuid", JoinMountData("nouuid", ""))
	assert.Equal(t, "nouuid,discard", JoinMountData("", "nouuid", "discard"))
}

// Format and Identify, for both.
func TestFormatIdentify(t *testing.T) {
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			testenv.RequireTool(t, "mkfs."+name)
			fs, err := New(name, Options{})
			require.NoError(t, err)
			path := filepath.Join(t.TempDir(), "img")
			require.NoError(t, os.WriteFile(path, nil, 0o600))
			require.NoError(t, os.Truncate(path, fs.MinSize()))

			_, err = fs.Identify(path)
			require.ErrorIs(t, err, ErrNotFormatted, "zeros")
			require.NoError(t, fs.Format(t.Context(), path, nil))
			id, err := fs.Identify(path)
			require.NoError(t, err)
			assert.Len(t, id.UUID, 36)
			assert.Equal(t, fs.MinSize(), id.Size)

			other := Ext4
			if name == Ext4 {
				other = XFS
			}
			ofs, _ := New(other, Options{})
			_, err = ofs.Identify(path)
			assert.ErrorIs(t, err, ErrNotFormatted, "an %s filesystem is no %s one", name, other)
		})
	}
}
