package xfs

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmthin/dmthin/internal/testenv"
)

func TestFormat(t *testing.T) {
	requireXfsprogs(t)
	path := sparseFile(t, MinSize)
	require.NoError(t, Format(t.Context(), path, FormatOptions{Label: "layers", ExtraArgs: []string{"-i", "maxpct=10"}}))
	sb, err := ReadSuperblockFile(path)
	require.NoError(t, err)
	assertMatchesXfsDB(t, sb, xfsDB(t, path))
	assert.Equal(t, "layers", sb.Label)
	assert.Equal(t, uint64(MinSize), sb.Size())
	assert.Equal(t, 5, sb.Version, "CRCs on")

	// Formatting again makes a new filesystem (-f: the old one is no obstacle).
	require.NoError(t, Format(t.Context(), path, FormatOptions{}))
	again, err := ReadSuperblockFile(path)
	require.NoError(t, err)
	assert.NotEqual(t, sb.UUID, again.UUID)
	assert.Empty(t, again.Label)
}

func TestFormatRefusesSmallDevice(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "ran")
	fakeTool(t, toolMkfs, "echo ran > "+marker)
	path := sparseFile(t, MinSize-4096)
	err := Format(t.Context(), path, FormatOptions{})
	require.ErrorIs(t, err, ErrInvalidOptions)
	assert.Contains(t, err.Error(), "below the 300MiB mkfs.xfs needs")
	assert.NoFileExists(t, marker, "mkfs.xfs must not run")

	err = Format(t.Context(), filepath.Join(t.TempDir(), "missing"), FormatOptions{})
	assert.ErrorIs(t, err, os.ErrNotExist)
	err = Format(t.Context(), "", FormatOptions{})
	assert.ErrorIs(t, err, ErrInvalidOptions)
}

func TestFormatOptionsValidate(t *testing.T) {
	ok := [][]string{
		nil,
		{"-i", "maxpct=10"},
		{"-imaxpct=10"},
		{"-m", "crc=1,finobt=1", "-l", "size=32m"},
		{"-fq", "-d", "agcount=8"},
		{"-L", "-N"}, // "-N" is -L's value here
	}
	for _, args := range ok {
		assert.NoError(t, FormatOptions{ExtraArgs: args}.Validate(), "%q", args)
	}
	bad := []struct {
		opts FormatOptions
		msg  string
	}{
		{FormatOptions{ExtraArgs: []string{"/dev/sdb"}}, "not an option"},
		{FormatOptions{ExtraArgs: []string{"--", "-f"}}, "not an option"},
		{FormatOptions{ExtraArgs: []string{"-i"}}, "-i needs a value"},
		{FormatOptions{ExtraArgs: []string{"-N"}}, "-N only prints"},
		{FormatOptions{ExtraArgs: []string{"-fN"}}, "-N only prints"},
		{FormatOptions{ExtraArgs: []string{"-V"}}, "version"},
		{FormatOptions{Label: "thirteen-byte"}, "at most 12"},
		{FormatOptions{Label: "a\x00b"}, "NUL"},
	}
	for _, tt := range bad {
		err := tt.opts.Validate()
		require.ErrorIs(t, err, ErrInvalidOptions, "%+v", tt.opts)
		assert.Contains(t, err.Error(), tt.msg)
	}
	// Every problem at once.
	err := FormatOptions{Label: "thirteen-byte", ExtraArgs: []string{"x"}}.Validate()
	assert.Contains(t, err.Error(), "at most 12")
	assert.Contains(t, err.Error(), "not an option")
}

func TestFormatArgsAndExecError(t *testing.T) {
	fake := fakeTool(t, toolMkfs, `echo "args: $*"; echo "mkfs.xfs: no" >&2; exit 1`)
	path := sparseFile(t, MinSize)
	err := Format(t.Context(), path, FormatOptions{Label: "l", ExtraArgs: []string{"-b", "size=1024"}})
	var ee *ExecError
	require.ErrorAs(t, err, &ee)
	assert.Equal(t, []string{fake, "-f", "-q", "-K", "-L", "l", "-b", "size=1024", "--", path}, ee.Args)
	assert.Equal(t, 1, ee.ExitCode)
	assert.Equal(t, "mkfs.xfs: no", ee.Stderr)
	assert.Contains(t, err.Error(), "xfs: format "+path)
}

// A mkfs.xfs that exits 0 without writing a superblock is caught.
func TestFormatChecksTheResult(t *testing.T) {
	fakeTool(t, toolMkfs, "exit 0")
	err := Format(t.Context(), sparseFile(t, MinSize), FormatOptions{})
	require.ErrorIs(t, err, ErrNotXFS)
	assert.Contains(t, err.Error(), "reading the new superblock")
}

func TestToolMissing(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	withoutSbin(t)
	err := Format(t.Context(), sparseFile(t, MinSize), FormatOptions{})
	require.ErrorIs(t, err, ErrToolMissing)
	assert.Contains(t, err.Error(), "mkfs.xfs not found in PATH: install the xfsprogs package")
	err = Grow(t.Context(), t.TempDir())
	require.ErrorIs(t, err, ErrToolMissing)
	assert.Contains(t, err.Error(), "xfs_growfs not found")
}

func TestContextCancelKillsMkfs(t *testing.T) {
	sleep := testenv.RequireTool(t, "sleep")
	fakeTool(t, toolMkfs, "exec "+sleep+" 60")
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := Format(ctx, sparseFile(t, MinSize), FormatOptions{})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), 10*time.Second)
}
