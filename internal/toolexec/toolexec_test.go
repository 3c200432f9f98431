package toolexec

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var errMissing = errors.New("tool missing")

func TestCapOutput(t *testing.T) {
	assert.Equal(t, "x", CapOutput([]byte("\n  x \n")))
	long := strings.Repeat("a", MaxOutput+100)
	got := CapOutput([]byte(long))
	assert.True(t, strings.HasPrefix(got, long[:MaxOutput]))
	assert.True(t, strings.HasSuffix(got, "... (100 more bytes)"), got[len(got)-40:])
}

func TestMissingNamesPackageAndSentinel(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	dir := t.TempDir()
	f := Finder{Dirs: []string{dir}, Package: "xfsprogs", Sentinel: errMissing}
	err := f.Run(context.Background(), "mkfs.xfs", nil)
	require.ErrorIs(t, err, errMissing)
	assert.EqualError(t, err, "mkfs.xfs not found in PATH, "+dir+": install the xfsprogs package")
	assert.NotErrorIs(t, (&ToolMissingError{Tool: "x"}), errMissing, "no sentinel matches nothing")
}

func TestOutputAndOkCodes(t *testing.T) {
	dir := t.TempDir()
	script := "#!/bin/sh\necho \"out $1\"\necho \"err $1\" >&2\nexit $1\n"
	require.NoError(t, os.WriteFile(filepath.Join(dir, "tool"), []byte(script), 0o755))
	t.Setenv("PATH", dir)
	f := Finder{Package: "p", Sentinel: errMissing}

	out, err := f.Output(context.Background(), "tool", nil, "0")
	require.NoError(t, err)
	assert.Equal(t, "out 0\n", out)
	out, err = f.Output(context.Background(), "tool", []int{1}, "1")
	require.NoError(t, err, "exit 1 listed as success")
	assert.Equal(t, "out 1\n", out)

	err = f.Run(context.Background(), "tool", []int{1}, "2")
	var ee *ExecError
	require.ErrorAs(t, err, &ee)
	assert.Equal(t, 2, ee.ExitCode)
	assert.Equal(t, "err 2", ee.Stderr)
	assert.Equal(t, "out 2", ee.Stdout)
	assert.Equal(t, filepath.Join(dir, "tool")+" 2: exit status 2: err 2: output: out 2", err.Error())
}
