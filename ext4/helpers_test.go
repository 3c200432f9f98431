package ext4

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/stretchr/testify/require"
)

// requireE2fsprogs skips the test when the e2fsprogs programs it runs are
// not installed (these tests compare against the real tools), or fails it
// under DMTHIN_REQUIRE_DM=1 (testenv.RequireTool).
func requireE2fsprogs(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range append([]string{toolMkfs, "dumpe2fs", "debugfs"}, tools...) {
		testenv.RequireTool(t, tool)
	}
}

// tool runs an e2fsprogs program for test setup and returns its output; the
// environment is fixed so that dates print in UTC and messages in English.
func tool(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	path, err := lookTool(name)
	require.NoError(t, err)
	cmd := exec.Command(path, args...)
	cmd.Env = append(append(os.Environ(), "LC_ALL=C", "TZ=UTC"), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), "%s %v: %s", name, args, stderr.String())
	return stdout.String()
}

// sparseFile creates a sparse file of size bytes in a test directory.
func sparseFile(t *testing.T, size int64) string {
	t.Helper()
	path := t.TempDir() + "/disk.img"
	f, err := os.Create(path)
	require.NoError(t, err)
	require.NoError(t, f.Truncate(size))
	require.NoError(t, f.Close())
	return path
}

// dumpe2fs returns the "Name: value" lines of dumpe2fs -h.
func dumpe2fs(t *testing.T, path string) string {
	t.Helper()
	return tool(t, nil, "dumpe2fs", "-h", path)
}

// parseDumpe2fs parses "Name: value" lines; lines without a colon and the
// indented blocks (MMP, journal) are ignored, the first value of a name wins.
func parseDumpe2fs(text string) map[string]string {
	out := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == ' ' || line[0] == '\t' {
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		k = strings.TrimSpace(k)
		if _, dup := out[k]; !dup {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}

// assertMatchesDumpe2fs compares every field dumpe2fs prints that the
// Superblock carries.
func assertMatchesDumpe2fs(t *testing.T, sb *Superblock, text string) {
	t.Helper()
	d := parseDumpe2fs(text)
	require.Equal(t, "0xEF53", d["Filesystem magic number"], "not dumpe2fs -h output?")

	num := func(key string) uint64 {
		t.Helper()
		field, _, _ := strings.Cut(d[key], " ")
		v, err := strconv.ParseInt(field, 10, 64)
		require.NoError(t, err, "dumpe2fs field %q", key)
		return uint64(v)
	}
	// dumpe2fs prints times with ctime(3) (here in UTC), "n/a" when unset.
	when := func(tm time.Time) string {
		if tm.IsZero() {
			return "n/a"
		}
		return tm.UTC().Format(time.ANSIC)
	}
	orNone := func(s, none string) string {
		if s == "" {
			return none
		}
		return s
	}

	eq := func(want, got any, field string) {
		t.Helper()
		require.EqualValues(t, want, got, "field %s", field)
	}
	eq(d["Filesystem volume name"], orNone(sb.Label, "<none>"), "Label")
	eq(d["Last mounted on"], orNone(sb.LastMountedOn, "<not available>"), "LastMountedOn")
	eq(d["Filesystem UUID"], sb.UUIDString(), "UUID")
	eq(d["Filesystem features"], orNone(strings.Join(sb.Features(), " "), "(none)"), "features")
	eq(d["Filesystem state"], sb.State.String(), "State")
	eq(d["Errors behavior"], sb.Errors.String(), "Errors")
	eq(num("Filesystem revision #"), sb.RevLevel, "RevLevel")
	eq(num("Block size"), sb.BlockSize, "BlockSize")
	eq(num("Block count"), sb.BlockCount, "BlockCount")
	eq(num("Free blocks"), sb.FreeBlocks, "FreeBlocks")
	eq(num("Reserved block count"), sb.ReservedBlocks, "ReservedBlocks")
	eq(num("First block"), sb.FirstDataBlock, "FirstDataBlock")
	eq(num("Blocks per group"), sb.BlocksPerGroup, "BlocksPerGroup")
	eq(num("Inode count"), sb.InodeCount, "InodeCount")
	eq(num("Free inodes"), sb.FreeInodes, "FreeInodes")
	eq(num("Inodes per group"), sb.InodesPerGroup, "InodesPerGroup")
	eq(num("Inode size"), sb.InodeSize, "InodeSize")
	eq(num("Mount count"), sb.MountCount, "MountCount")
	eq(int64(num("Maximum mount count")), int64(sb.MaxMountCount), "MaxMountCount")
	eq(time.Duration(num("Check interval"))*time.Second, sb.CheckInterval, "CheckInterval")
	eq(d["Filesystem created"], when(sb.Created), "Created")
	eq(d["Last mount time"], when(sb.LastMount), "LastMount")
	eq(d["Last write time"], when(sb.LastWrite), "LastWrite")
	eq(d["Last checked"], when(sb.LastCheck), "LastCheck")
	if v, ok := d["FS Error count"]; ok {
		eq(v, strconv.FormatUint(uint64(sb.ErrorCount), 10), "ErrorCount")
	} else {
		eq(0, sb.ErrorCount, "ErrorCount")
	}
	if n, ok := strings.CutSuffix(d["Lifetime writes"], " kB"); ok {
		eq(n, strconv.FormatUint(sb.KBytesWritten, 10), "KBytesWritten")
	}
	if sb.FeatureROCompat.Has(ROCompatMetadataCsum) {
		eq(d["Checksum"], fmt.Sprintf("0x%08x", sb.Checksum), "Checksum")
	}
}

// withoutSbin makes lookTool search $PATH only, for the rest of the test.
func withoutSbin(t *testing.T) {
	saved := sbinDirs
	sbinDirs = nil
	t.Cleanup(func() { sbinDirs = saved })
}

// fakeTool installs a shell script as the only e2fsprogs program the
// package can find: $PATH holds just its directory.
func fakeTool(t *testing.T, name, script string) string {
	t.Helper()
	dir := t.TempDir()
	path := dir + "/" + name
	require.NoError(t, os.WriteFile(path, []byte("#!/bin/sh\n"+script+"\n"), 0o755))
	t.Setenv("PATH", dir)
	withoutSbin(t)
	return path
}

// runOutput runs a program and returns its standard output; a failure's
// error includes its standard error.
func runOutput(path string, args ...string) (string, error) {
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "TZ=UTC")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %v: %w: %s", path, args, err, stderr.String())
	}
	return stdout.String(), nil
}

func errorsIsAny(err error, targets ...error) bool {
	for _, target := range targets {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}
