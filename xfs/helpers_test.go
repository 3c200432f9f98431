package xfs

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dmthin/dmthin/internal/testenv"
)

// requireXfsprogs skips the test when the xfsprogs programs it compares
// against are not installed, or fails it under DMTHIN_REQUIRE_DM=1.
func requireXfsprogs(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range append([]string{toolMkfs, "xfs_db"}, tools...) {
		testenv.RequireTool(t, tool)
	}
}

// sparseFile creates a sparse file of size bytes in a test directory.
func sparseFile(t *testing.T, size int64) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(path)
	require.NoError(t, err)
	require.NoError(t, f.Truncate(size))
	require.NoError(t, f.Close())
	return path
}

// xfsDB returns the superblock as xfs_db prints it ("name = value" lines).
func xfsDB(t *testing.T, path string) string {
	t.Helper()
	db, err := lookTool("xfs_db")
	require.NoError(t, err)
	cmd := exec.Command(db, "-r", "-c", "sb", "-c", "p", path)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	out, err := cmd.Output()
	require.NoError(t, err, "xfs_db %s", path)
	return string(out)
}

func parseXfsDB(text string) map[string]string {
	out := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " = ")
		if ok {
			out[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return out
}

// assertMatchesXfsDB compares every field xfs_db prints that the Superblock
// carries.
func assertMatchesXfsDB(t *testing.T, sb *Superblock, text string) {
	t.Helper()
	d := parseXfsDB(text)
	require.Equal(t, "0x58465342", d["magicnum"], "not xfs_db sb output?")
	num := func(key string) uint64 {
		t.Helper()
		v, err := strconv.ParseUint(d[key], 0, 64)
		require.NoError(t, err, "xfs_db field %q", key)
		return v
	}
	eq := func(want, got any, field string) {
		t.Helper()
		require.EqualValues(t, want, got, "field %s", field)
	}
	eq(d["uuid"], sb.UUIDString(), "UUID")
	eq(num("versionnum")&0xf, sb.Version, "Version")
	eq(num("blocksize"), sb.BlockSize, "BlockSize")
	eq(num("sectsize"), sb.SectorSize, "SectorSize")
	eq(num("inodesize"), sb.InodeSize, "InodeSize")
	eq(num("dblocks"), sb.DataBlocks, "DataBlocks")
	eq(num("agblocks"), sb.AGBlocks, "AGBlocks")
	eq(num("agcount"), sb.AGCount, "AGCount")
	eq(num("logblocks"), sb.LogBlocks, "LogBlocks")
	eq(num("icount"), sb.InodeCount, "InodeCount")
	eq(num("ifree"), sb.FreeInodes, "FreeInodes")
	eq(num("fdblocks"), sb.FreeBlocks, "FreeBlocks")
	label := strings.ReplaceAll(strings.Trim(d["fname"], `"`), `\000`, "")
	eq(label, sb.Label, "Label")
	if sb.Version == 5 {
		require.Contains(t, d["crc"], "(correct)")
	}
	if sb.MetaUUID != ([16]byte{}) {
		eq(d["meta_uuid"], formatUUID(sb.MetaUUID), "MetaUUID")
	}
}

func readTestdata(t *testing.T, name string) (sb []byte, xfsdb string) {
	t.Helper()
	sb, err := os.ReadFile(filepath.Join("testdata", name+".sb"))
	require.NoError(t, err)
	db, err := os.ReadFile(filepath.Join("testdata", name+".xfs_db"))
	require.NoError(t, err)
	return sb, string(db)
}

// withoutSbin makes lookTool search $PATH only, for the rest of the test.
func withoutSbin(t *testing.T) {
	saved := sbinDirs
	sbinDirs = nil
	t.Cleanup(func() { sbinDirs = saved })
}

// fakeTool installs a shell script as the only xfsprogs program the package
// can find: $PATH holds just its directory.
func fakeTool(t *testing.T, name, script string) string {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(path, []byte("#!/bin/sh\n"+script+"\n"), 0o755))
	t.Setenv("PATH", dir)
	withoutSbin(t)
	return path
}
