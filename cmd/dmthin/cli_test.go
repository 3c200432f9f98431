package main

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmthin/dmthin/thinpool"
)

// TestMain lets the test binary be the dmthin command: with
// DMTHIN_CLI_MAIN=1 it runs main with its arguments, so tests exec the
// real command (its own process, exit status, terminal detection) in the
// test VM, which has no Go toolchain to build it.
func TestMain(m *testing.M) {
	if os.Getenv("DMTHIN_CLI_MAIN") == "1" {
		os.Args = append([]string{"dmthin"}, os.Args[1:]...)
		main()
	}
	os.Exit(m.Run())
}

// result is one in-process run of the command.
type result struct {
	code           int
	stdout, stderr string
}

func runCLI(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, env{
		stdin: strings.NewReader(stdin), stdout: &out, stderr: &errb,
		tty: func(any) bool { return false },
	})
	t.Logf("dmthin %s: exit %d\n%s%s", strings.Join(args, " "), code, out.String(), errb.String())
	return result{code, out.String(), errb.String()}
}

// Bad input that needs no pool: a clear message and exit status 2.
func TestBadInput(t *testing.T) {
	empty := t.TempDir()
	file := filepath.Join(empty, "file")
	require.NoError(t, os.WriteFile(file, nil, 0o600))
	t.Setenv("DMTHIN_ROOT", "")
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{nil, "usage: dmthin COMMAND"},
		{[]string{"frob"}, `unknown command "frob"`},
		{[]string{"status"}, "--root is required"},
		{[]string{"ls", "--root", filepath.Join(empty, "missing")}, "no such file or directory"},
		{[]string{"tree", "--root", file}, "is not a directory"},
		{[]string{"check", "--root", empty}, "holds no dmthin pool"},
		{[]string{"status", "--root", empty, "extra"}, `unexpected argument "extra"`},
		{[]string{"du", "--root", empty}, "name at least one layer or device"},
		{[]string{"grow", "--root", empty, "--data", "lots"}, `--data "lots": want a size`},
		{[]string{"grow", "--root", empty, "--metadata", "1000"}, "not a multiple of 512"},
		{[]string{"grow", "--root", empty, "--metadata", "32G"}, "at most 16GiB"},
		{[]string{"gc", "--root", empty, "--bogus"}, "flag provided but not defined: -bogus"},
	} {
		r := runCLI(t, "", tc.args...)
		assert.Equal(t, exitError, r.code, "%q", tc.args)
		assert.Contains(t, r.stderr, tc.msg, "%q", tc.args)
		assert.Empty(t, r.stdout, "%q", tc.args)
	}
	r := runCLI(t, "", "status", "-h")
	assert.Equal(t, exitOK, r.code)
	assert.Contains(t, r.stderr, "usage: dmthin status")
}

func TestInterleave(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.Bool("json", false, "")
	fs.String("root", "", "")
	assert.Equal(t, []string{"--json", "--root", "/r", "--", "a", "b"}, interleave([]string{"a", "--json", "b", "--root", "/r"}, fs))
	assert.Equal(t, []string{"--root=/r", "--", "a", "-x"}, interleave([]string{"--root=/r", "a", "--", "-x"}, fs))
}

func TestPoolRootLayouts(t *testing.T) {
	graph := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(graph, "metadata.db"), nil, 0o600))
	got, err := poolRoot(graph)
	require.NoError(t, err)
	assert.Equal(t, graph, got, "a graph driver's home is the pool's root")
	ctrd := t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(ctrd, "pool"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(ctrd, "pool", "metadata.db"), nil, 0o600))
	got, err = poolRoot(ctrd)
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(ctrd, "pool"), got, "a snapshotter's root_path has the pool under pool/")
}

func TestTree(t *testing.T) {
	mk := func(name, parent string) *entry {
		return &entry{Device: thinpool.Device{Name: name, Parent: parent}}
	}
	es := []*entry{mk("base", ""), mk("l-b", "l-a"), mk("l-a", "base"), mk("l-c", "base"), mk("l-orphan", "l-gone")}
	roots := tree(es)
	require.Len(t, roots, 2)
	assert.Equal(t, "base", roots[0].Name)
	assert.Equal(t, "l-orphan", roots[1].Name, "a snapshot whose origin is gone is a root")
	require.Len(t, roots[0].Children, 2)
	assert.Equal(t, "l-a", roots[0].Children[0].Name)
	assert.Equal(t, "l-b", roots[0].Children[0].Children[0].Name)
}

func TestProgressQuietWhenNotATerminal(t *testing.T) {
	var errb bytes.Buffer
	c := &cmdCtx{env: env{stderr: &errb, tty: func(any) bool { return false }}}
	p := c.progress()
	p.step("growing")
	p.update("discard", 1, 2)
	p.done()
	assert.Empty(t, errb.String())

	c.tty = func(any) bool { return true }
	p = c.progress()
	p.update("discard thin id 7", 512<<20, 1<<30)
	p.done()
	assert.Contains(t, errb.String(), "discard thin id 7: 512MiB of 1GiB (50%)")
}
