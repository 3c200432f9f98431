package ext4

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// imageFromTestdata writes a committed superblock head to a file, so that
// functions that read the superblock before running a tool get that far
// without e2fsprogs.
func imageFromTestdata(t *testing.T, name string) string {
	t.Helper()
	head, _ := readTestdata(t, name)
	path := filepath.Join(t.TempDir(), name+".img")
	require.NoError(t, os.WriteFile(path, head, 0o600))
	return path
}

func TestToolMissing(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	withoutSbin(t)
	image := imageFromTestdata(t, "4k-64bit-label")

	tests := []struct {
		tool string
		call func() error
	}{
		{toolMkfs, func() error { return Format(t.Context(), image, FormatOptions{}) }},
		{toolResize, func() error { return Grow(t.Context(), image) }},
		{toolFsck, func() error { return Check(t.Context(), image) }},
	}
	for _, tt := range tests {
		t.Run(tt.tool, func(t *testing.T) {
			err := tt.call()
			require.ErrorIs(t, err, ErrToolMissing)
			var tm *ToolMissingError
			require.ErrorAs(t, err, &tm)
			assert.Equal(t, tt.tool, tm.Tool)
			assert.Contains(t, err.Error(), tt.tool+" not found in PATH")
			assert.Contains(t, err.Error(), "install the e2fsprogs package")
		})
	}
}

func TestToolFoundInSbinDirs(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, toolFsck), []byte("#!/bin/sh\nexit 0\n"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, toolResize), []byte("not executable"), 0o644))
	t.Setenv("PATH", t.TempDir())
	saved := sbinDirs
	sbinDirs = []string{dir}
	t.Cleanup(func() { sbinDirs = saved })

	path, err := lookTool(toolFsck)
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(dir, toolFsck), path)
	_, err = lookTool(toolResize)
	require.ErrorIs(t, err, ErrToolMissing, "a file without execute permission is not a tool")
	assert.Contains(t, err.Error(), dir, "the error lists the directories searched")
}

func TestExecErrorDetails(t *testing.T) {
	fake := fakeTool(t, toolMkfs, `echo "  out: $#  "; echo "  mke2fs: bad thing  " >&2; exit 3`)
	image := filepath.Join(t.TempDir(), "disk.img")
	err := Format(t.Context(), image, FormatOptions{Label: "lbl"})

	var ee *ExecError
	require.ErrorAs(t, err, &ee)
	assert.Equal(t, fake, ee.Args[0])
	assert.Equal(t, []string{"-F", "-q", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0", "-L", "lbl", "--", image}, ee.Args[1:])
	assert.Equal(t, 3, ee.ExitCode)
	assert.Equal(t, "mke2fs: bad thing", ee.Stderr, "trimmed")
	assert.Equal(t, "out: 8", ee.Stdout, "trimmed")
	assert.Contains(t, err.Error(), "exit status 3: mke2fs: bad thing")
	assert.Contains(t, err.Error(), "format "+image)
}

func TestContextCancelledBeforeStart(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "ran")
	fakeTool(t, toolFsck, "echo ran > "+marker) // a shell builtin: $PATH is the fake's directory only
	ctx, cancel := context.WithCancel(t.Context())
	cancel()

	err := Check(ctx, "/dev/null")
	require.ErrorIs(t, err, context.Canceled)
	assert.NoFileExists(t, marker, "the tool must not have been started")
}

func TestContextCancelKillsTool(t *testing.T) {
	sleep := testenv.RequireTool(t, "sleep")
	fakeTool(t, toolMkfs, "exec "+sleep+" 60")
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()

	start := time.Now()
	err := Format(ctx, filepath.Join(t.TempDir(), "disk.img"), FormatOptions{})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), 10*time.Second, "the tool was killed, not waited for")
	var ee *ExecError
	require.ErrorAs(t, err, &ee)
	assert.Equal(t, -1, ee.ExitCode, "killed, no exit status")
}
