package thinpool

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestFindSignature runs the real mkfs tools on files and checks that each
// filesystem is recognised, and that zeros are not.
func TestFindSignature(t *testing.T) {
	dir := t.TempDir()
	blank := filepath.Join(dir, "blank")
	require.NoError(t, os.WriteFile(blank, make([]byte, 1<<20), 0o600))
	f, err := os.Open(blank)
	require.NoError(t, err)
	what, err := findSignature(f)
	f.Close()
	require.NoError(t, err)
	assert.Empty(t, what)

	for _, tc := range []struct {
		want string
		mkfs []string
		size int64
	}{
		{"ext2/3/4 filesystem", []string{"mkfs.ext4", "-q", "-F"}, 16 << 20},
		{"xfs filesystem", []string{"mkfs.xfs", "-q", "-f"}, 320 << 20},
	} {
		path := filepath.Join(dir, tc.mkfs[0])
		require.NoError(t, os.WriteFile(path, nil, 0o600))
		require.NoError(t, os.Truncate(path, tc.size))
		if _, err := exec.LookPath(tc.mkfs[0]); err != nil {
			t.Logf("%s not installed: %v", tc.mkfs[0], err)
			continue
		}
		out, err := exec.Command(tc.mkfs[0], append(tc.mkfs[1:], path)...).CombinedOutput()
		require.NoError(t, err, "%s", out)
		f, err := os.Open(path)
		require.NoError(t, err)
		what, err := findSignature(f)
		f.Close()
		require.NoError(t, err)
		assert.Equal(t, tc.want, what)
	}

	// The small table, each magic at its offset.
	for _, s := range signatures {
		b := make([]byte, 80<<10)
		copy(b[s.off:], s.magic)
		what, err := findSignature(bytes.NewReader(b))
		require.NoError(t, err)
		assert.Equal(t, s.what, what)
	}
}
