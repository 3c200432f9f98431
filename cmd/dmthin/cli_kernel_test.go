package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/docker/go-units"
	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/devmapper"
	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/dmthin/dmthin/layerstore"
	"github.com/dmthin/dmthin/loopback"
	"github.com/dmthin/dmthin/thinpool"
)

// Kernel tests: every command against a real pool (hack/vm.sh test runs
// them in a VM), with the engine running (a layer store open in this
// process, or the command exec'd as its own process) and stopped.

const (
	dataSize = 1 * units.GiB
	metaSize = 16 * units.MiB
)

type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// storeOptions are a small loopback store under root; containerd's
// snapshotter keeps its pool in root/pool, a graph driver in root itself.
func storeOptions(t *testing.T, root string, containerdLayout bool) layerstore.Options {
	l := logrus.New()
	l.SetOutput(logWriter{t})
	zero := 0
	o := layerstore.Options{
		Root:     root,
		Pool:     thinpool.Options{LoopDataSize: dataSize, LoopMetadataSize: metaSize, MinFreeSpacePercent: &zero},
		BaseSize: 64 * units.MiB,
		Logger:   l,
	}
	if containerdLayout {
		o.Pool.Root = filepath.Join(root, "pool")
	}
	return o
}

// newRoot is a fresh root whose pool is shut down at the end, whatever
// state the test left it in.
func newRoot(t *testing.T, containerdLayout bool) string {
	testenv.RequireDM(t)
	root := filepath.Join(t.TempDir(), "root-"+testenv.Suffix(t))
	t.Cleanup(func() {
		o := storeOptions(t, root, containerdLayout)
		if s, err := layerstore.Open(context.Background(), o); err == nil {
			assert.NoError(t, s.Close(), "final close")
		} else {
			t.Errorf("final open: %v", err)
		}
	})
	return root
}

// execCLI runs the command as its own process: the test binary with
// DMTHIN_CLI_MAIN=1 (TestMain).
func execCLI(t *testing.T, args ...string) result {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "DMTHIN_CLI_MAIN=1")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	t.Logf("exec dmthin %s: exit %d\n%s%s", strings.Join(args, " "), code, out.String(), errb.String())
	return result{code, out.String(), errb.String()}
}

func decode[T any](t *testing.T, r result) T {
	t.Helper()
	var v T
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &v), "JSON output:\n%s", r.stdout)
	return v
}

// writeFile writes n bytes to a new file under dir and syncs it, so the
// pool has provisioned its blocks.
func writeFile(t *testing.T, dir, name string, n int) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, name))
	require.NoError(t, err)
	_, err = f.Write(bytes.Repeat([]byte{0xa5}, n))
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())
}

func byName(es []*entry) map[string]*entry {
	m := map[string]*entry{}
	for _, e := range es {
		m[e.Name] = e
	}
	return m
}

// Every read-only command on a store the engine has open (containerd's
// layout), from another process and in-process; the changing ones refuse
// and change nothing. Then the same with the engine stopped, and grow.
func TestCommandsOnLiveAndStoppedStore(t *testing.T) {
	ctx := context.Background()
	root := newRoot(t, true)
	opts := storeOptions(t, root, true)
	minFree := 3
	opts.Pool.MinFreeSpacePercent = &minFree
	s, err := layerstore.Open(ctx, opts)
	require.NoError(t, err)
	closed := false
	defer func() {
		if !closed {
			assert.NoError(t, s.Close())
		}
	}()
	require.NoError(t, s.Create(ctx, "a", "", 0))
	mp, err := s.Get(ctx, "a", layerstore.MountOptions{})
	require.NoError(t, err)
	writeFile(t, mp, "a", 1<<20)
	require.NoError(t, s.Put(ctx, "a"))
	require.NoError(t, s.Create(ctx, "b", "a", 0))
	mpB, err := s.Get(ctx, "b", layerstore.MountOptions{})
	require.NoError(t, err)
	writeFile(t, mpB, "b", 2<<20)

	// status, from another process while the engine runs.
	r := execCLI(t, "status", "--root", root, "--json")
	require.Equal(t, exitOK, r.code)
	rep := decode[thinpool.Report](t, r)
	assert.True(t, rep.Active)
	assert.True(t, rep.InUse, "the engine has the pool open")
	assert.Equal(t, "rw", rep.Mode)
	assert.Equal(t, thinpool.KindLoopback, rep.Kind)
	assert.Equal(t, filepath.Join(root, "pool"), rep.Root)
	assert.Equal(t, 3, rep.Devices, "base, a, b")
	assert.Equal(t, int64(dataSize), rep.DataTotal)
	assert.Equal(t, int64(metaSize), rep.MetadataTotal)
	assert.Greater(t, rep.DataUsed, int64(3<<20))
	assert.Equal(t, int64(thinpool.DefaultBlockSize), rep.BlockSize)
	// The engine's minimum free space, as it recorded it; the default
	// low-water mark is raised to it (from 1% of the data blocks).
	assert.Equal(t, 3, rep.MinFreeSpacePercent)
	blocks := int64(dataSize / thinpool.DefaultBlockSize)
	assert.Equal(t, (blocks*3+99)/100*thinpool.DefaultBlockSize, rep.LowWaterMark)
	assert.Empty(t, rep.Deleting)
	assert.Empty(t, rep.FaultyDevices)
	assert.False(t, rep.MetadataSnapshotHeld)
	assert.Equal(t, filepath.Join(root, "pool", "devicemapper", "data"), rep.DataFile)

	r = runCLI(t, "", "status", "--root", root)
	require.Equal(t, exitOK, r.code)
	assert.Contains(t, r.stdout, "in use by another process")
	assert.Regexp(t, `mode\s+rw\n`, r.stdout)
	assert.Regexp(t, `data\s+\S+ used of 1GiB`, r.stdout)
	assert.Regexp(t, `min free space\s+3% `, r.stdout)

	// ls and tree.
	r = execCLI(t, "ls", "--json", "--root", root)
	require.Equal(t, exitOK, r.code)
	es := byName(decode[[]*entry](t, r))
	require.Len(t, es, 3)
	base, la, lb := es[layerstore.BaseDevice], es["l-a"], es["l-b"]
	require.NotNil(t, base)
	require.NotNil(t, la)
	require.NotNil(t, lb)
	assert.Equal(t, "a", la.Layer)
	assert.Equal(t, layerstore.BaseDevice, la.Parent)
	assert.Equal(t, "b", lb.Layer)
	assert.Equal(t, "l-a", lb.Parent)
	assert.Equal(t, []string{mpB}, lb.Mounts, "b is mounted")
	assert.True(t, lb.Active)
	assert.Greater(t, lb.MappedBytes, int64(2<<20))
	assert.Empty(t, la.Mounts)
	assert.Equal(t, thinpool.StateReady, la.State)
	r = runCLI(t, "", "ls", "--root", root)
	require.Equal(t, exitOK, r.code)
	assert.Regexp(t, `(?m)^DEVICE\s+LAYER\s+ID\s+SIZE\s+MAPPED\s+STATE\s+ACTIVE\s+PARENT\s+MOUNTS$`, r.stdout)
	assert.Regexp(t, `(?m)^l-b\s+b\s+\d+\s+64MiB\s+\S+\s+ready\s+mounted\s+l-a\s+`+mpB+`$`, r.stdout)

	r = execCLI(t, "tree", "--root", root, "--json")
	require.Equal(t, exitOK, r.code)
	roots := decode[[]*entry](t, r)
	require.Len(t, roots, 1)
	assert.Equal(t, layerstore.BaseDevice, roots[0].Name)
	require.Len(t, roots[0].Children, 1)
	assert.Equal(t, "l-a", roots[0].Children[0].Name)
	require.Len(t, roots[0].Children[0].Children, 1)
	assert.Equal(t, "l-b", roots[0].Children[0].Children[0].Name)
	r = runCLI(t, "", "tree", "--root", root)
	require.Equal(t, exitOK, r.code)
	assert.Regexp(t, `(?m)^base \(id \d+, 64MiB, ready\)\n└── l-a \(layer a, .*\)\n    └── l-b \(layer b, id \d+, 64MiB, ready, mounted\)$`, r.stdout)

	// check, from another process: two views, both healthy.
	r = execCLI(t, "check", "--root", root, "--json")
	require.Equal(t, exitOK, r.code)
	cr := decode[thinpool.CheckReport](t, r)
	assert.True(t, cr.Live)
	assert.True(t, cr.Active)
	assert.Equal(t, 3, cr.Records)
	assert.Equal(t, 3, cr.ThinIDs)
	assert.GreaterOrEqual(t, cr.DMDevices, 1, "b is mounted, so active")
	assert.Empty(t, cr.Findings)
	r = runCLI(t, "", "check", "--root", root)
	require.Equal(t, exitOK, r.code)
	assert.Contains(t, r.stdout, "healthy\n")

	// du: b's own 2MiB are exclusive; what it has of a and the base is
	// shared.
	r = execCLI(t, "du", "--root", root, "b", "l-a", "--json")
	require.Equal(t, exitOK, r.code)
	us := decode[[]thinpool.Usage](t, r)
	require.Len(t, us, 2)
	assert.Equal(t, "l-b", us[0].Name)
	assert.True(t, us[0].Known, us[0].UsageError)
	assert.GreaterOrEqual(t, us[0].ExclusiveBytes, int64(2<<20))
	assert.Greater(t, us[0].SharedBytes, int64(1<<20))
	assert.Equal(t, us[0].PoolMappedBytes, us[0].ExclusiveBytes+us[0].SharedBytes)
	assert.Equal(t, "l-a", us[1].Name)
	assert.True(t, us[1].Known)
	r = runCLI(t, "", "du", "--root", root, "b")
	require.Equal(t, exitOK, r.code)
	assert.Regexp(t, `(?m)^l-b\s+b\s+64MiB\s+\S+\s+\S+\s+\S+$`, r.stdout)
	r = runCLI(t, "", "du", "--root", root, "nope")
	assert.Equal(t, exitError, r.code)
	assert.Contains(t, r.stderr, `no layer or device "nope"`)

	// The changing commands refuse while the engine runs, and change
	// nothing.
	before := decode[[]*entry](t, runCLI(t, "", "ls", "--json", "--root", root))
	fi, err := os.Stat(rep.DataFile)
	require.NoError(t, err)
	for _, args := range [][]string{{"gc", "--yes"}, {"grow", "--data", "2G"}} {
		r = execCLI(t, append(args, "--root", root)...)
		assert.Equal(t, exitError, r.code, "%q", args)
		assert.Contains(t, r.stderr, "is in use by another process", "%q", args)
		assert.Contains(t, r.stderr, "stop the engine first", "%q", args)
	}
	after := decode[[]*entry](t, runCLI(t, "", "ls", "--json", "--root", root))
	assert.Equal(t, names(before), names(after))
	fi2, err := os.Stat(rep.DataFile)
	require.NoError(t, err)
	assert.Equal(t, fi.Size(), fi2.Size(), "data file not grown")
	_, err = s.Pool().Status(ctx)
	require.NoError(t, err, "the engine's pool still works")

	// The engine stops: the pool device is gone; the records and the
	// metadata file are read directly.
	require.NoError(t, s.Put(ctx, "b"))
	require.NoError(t, s.Close())
	closed = true
	r = execCLI(t, "status", "--root", root, "--json")
	require.Equal(t, exitOK, r.code)
	rep = decode[thinpool.Report](t, r)
	assert.False(t, rep.Active)
	assert.False(t, rep.InUse)
	assert.Equal(t, "inactive", rep.Mode)
	assert.Equal(t, 3, rep.Devices)
	r = runCLI(t, "", "status", "--root", root)
	assert.Contains(t, r.stdout, "not active (engine stopped)")
	r = runCLI(t, "", "check", "--root", root, "--json")
	require.Equal(t, exitOK, r.code)
	cr = decode[thinpool.CheckReport](t, r)
	assert.False(t, cr.Active)
	assert.False(t, cr.Live)
	assert.Equal(t, 3, cr.ThinIDs, "thin ids from the metadata file")
	r = runCLI(t, "", "du", "--root", root, "b", "--json")
	require.Equal(t, exitOK, r.code)
	us = decode[[]thinpool.Usage](t, r)
	assert.True(t, us[0].Known)
	assert.GreaterOrEqual(t, us[0].ExclusiveBytes, int64(2<<20))

	// grow: bad sizes change nothing; a good one grows both files, and
	// the pool is left as found (not active).
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"grow"}, "give --data SIZE, --metadata SIZE or both"},
		{[]string{"grow", "--data", "512M"}, "shrinking is not supported"},
		{[]string{"grow", "--metadata", "8M"}, "shrinking is not supported"},
	} {
		r = runCLI(t, "", append(tc.args, "--root", root)...)
		assert.Equal(t, exitError, r.code, "%q", tc.args)
		assert.Contains(t, r.stderr, tc.msg, "%q", tc.args)
	}
	fi2, err = os.Stat(rep.DataFile)
	require.NoError(t, err)
	assert.Equal(t, int64(dataSize), fi2.Size())
	r = execCLI(t, "grow", "--root", root, "--data", "2G", "--metadata", "32M", "--json")
	require.Equal(t, exitOK, r.code)
	st := decode[thinpool.Status](t, r)
	assert.Equal(t, int64(2*units.GiB), st.DataTotal)
	assert.Equal(t, int64(32*units.MiB), st.MetadataTotal)
	assert.NotContains(t, r.stderr, "growing", "no progress on a pipe")
	r = runCLI(t, "", "status", "--root", root, "--json")
	rep = decode[thinpool.Report](t, r)
	assert.False(t, rep.Active, "the pool was not active before grow, nor after")
	s, err = layerstore.Open(ctx, storeOptions(t, root, true))
	require.NoError(t, err)
	closed = false
	pst, err := s.PoolStatus(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(2*units.GiB), pst.DataTotal, "the engine finds the grown pool")
	assert.Equal(t, int64(32*units.MiB), pst.MetadataTotal)
	assert.True(t, s.Exists("b"))
}

func names(es []*entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, fmt.Sprintf("%s/%d/%s", e.Name, e.ID, e.State))
	}
	slices.Sort(out)
	return out
}

// findingKinds lists a report's findings as "kind device dm id".
func findingKinds(r thinpool.CheckReport) []string {
	var out []string
	for _, f := range r.Findings {
		id := "-"
		if f.ID != nil {
			id = fmt.Sprint(*f.ID)
		}
		out = append(out, fmt.Sprintf("%s %s %s %s", f.Kind, orDash(f.Device), orDash(f.DM), id))
	}
	slices.Sort(out)
	return out
}

// check and gc against deliberately made orphans (a graph driver's
// layout): a record whose thin id was deleted behind the pool's back, a
// thin id no record names, a dm device with the pool's prefix and no
// record.
func TestCheckAndGCOrphans(t *testing.T) {
	ctx := context.Background()
	root := newRoot(t, false)
	o := storeOptions(t, root, false)
	s, err := layerstore.Open(ctx, o)
	require.NoError(t, err)
	require.NoError(t, s.Create(ctx, "a", "", 0))
	require.NoError(t, s.Create(ctx, "b", "a", 0))
	mp, err := s.Get(ctx, "b", layerstore.MountOptions{})
	require.NoError(t, err)
	writeFile(t, mp, "b", 4<<20)
	require.NoError(t, s.Put(ctx, "b"))
	require.NoError(t, s.Close())

	// The pool alone, as an engine that crashed would have left it.
	popts := o.Pool
	popts.Root = root
	p, err := thinpool.Open(ctx, popts)
	require.NoError(t, err)
	pClosed := false
	defer func() {
		if !pClosed {
			assert.NoError(t, p.Close())
		}
	}()
	dm, err := devmapper.Open(devmapper.Options{})
	require.NoError(t, err)
	defer dm.Close()
	prefix := strings.TrimSuffix(p.Name(), "-pool")
	la, err := p.Lookup("l-a")
	require.NoError(t, err)
	lb, err := p.Lookup("l-b")
	require.NoError(t, err)
	const orphanID = 4242
	// create_snap of b: an orphan that maps blocks, for gc --discard.
	_, err = dm.Message(p.Name(), 0, fmt.Sprintf("create_snap %d %d", orphanID, lb.ID))
	require.NoError(t, err)
	_, err = dm.Message(p.Name(), 0, fmt.Sprintf("delete %d", la.ID))
	require.NoError(t, err)
	stray := prefix + "-stray"
	makeStray := func() {
		_, err := dm.Activate(stray, "", devmapper.Table{{Length: 8, Params: devmapper.RawParams{Type: "error"}}}, false)
		require.NoError(t, err)
	}
	makeStray()
	t.Cleanup(func() { _ = dm.Remove(stray, devmapper.RemoveOptions{}) })
	want := []string{
		fmt.Sprintf("dm-device-without-record - %s -", stray),
		fmt.Sprintf("record-without-thin-id l-a - %d", la.ID),
		fmt.Sprintf("thin-id-without-record - - %d", orphanID),
	}

	// A deletion waiting in the background: a device held open, deleted
	// with Deferred.
	_, err = p.Create(ctx, "busy", 16<<20)
	require.NoError(t, err)
	node, err := p.Activate(ctx, "busy")
	require.NoError(t, err)
	hold, err := os.Open(node)
	require.NoError(t, err)
	held := true
	defer func() {
		if held {
			hold.Close()
		}
	}()
	require.NoError(t, p.Delete(ctx, "busy", thinpool.DeleteOptions{Deferred: true}))
	r := execCLI(t, "status", "--root", root, "--json")
	require.Equal(t, exitOK, r.code)
	rep := decode[thinpool.Report](t, r)
	assert.Equal(t, []string{"busy"}, rep.Deleting)
	assert.Equal(t, 1, rep.DeferredDeletes)
	r = runCLI(t, "", "status", "--root", root)
	assert.Regexp(t, `being deleted\s+busy\n`, r.stdout)

	// check while the pool is open here (the engine runs): exec'd, and
	// in-process.
	r = execCLI(t, "check", "--root", root, "--json")
	require.Equal(t, exitProblems, r.code)
	cr := decode[thinpool.CheckReport](t, r)
	assert.True(t, cr.Live)
	assert.Equal(t, want, findingKinds(cr))
	assert.Equal(t, []string{"busy"}, cr.Pending, "a deferred delete is pending, not an orphan")
	assert.Len(t, cr.Orphans(), 3)
	r = runCLI(t, "", "check", "--root", root)
	require.Equal(t, exitProblems, r.code)
	assert.Contains(t, r.stdout, "NOT HEALTHY: 3 problem(s)")
	assert.Contains(t, r.stdout, fmt.Sprintf("thin id %d is in the pool, no record names it [orphan: gc removes it]", orphanID))

	// The library's own check and gc, on the open pool: the dm device.
	pr, err := p.Check(ctx)
	require.NoError(t, err)
	assert.Equal(t, want, findingKinds(pr))
	// The library's gc on the open pool: the dm device, and the thin id
	// with its blocks discarded first.
	var some []thinpool.Finding
	for _, f := range pr.Findings {
		if f.Kind != thinpool.FindingRecordWithoutThin {
			some = append(some, f)
		}
	}
	var progress []string
	removed, err := p.RemoveOrphans(ctx, some, thinpool.GCOptions{Discard: true, Progress: func(what string, done, total int64) {
		progress = append(progress, fmt.Sprintf("%s %d/%d", what, done, total))
	}})
	require.NoError(t, err)
	assert.Len(t, removed, 2)
	require.NotEmpty(t, progress)
	// b had 4MiB written: the snapshot maps at least that far.
	assert.Regexp(t, fmt.Sprintf(`^discard thin id %d 0/\d+$`, orphanID), progress[0])
	var id, done, total int64
	_, err = fmt.Sscanf(progress[len(progress)-1], "discard thin id %d %d/%d", &id, &done, &total)
	require.NoError(t, err)
	assert.Equal(t, total, done, "the last report is the whole extent")
	assert.GreaterOrEqual(t, total, int64(4<<20))
	ok, err := dm.Exists(stray)
	require.NoError(t, err)
	assert.False(t, ok, "RemoveOrphans removed the dm device")
	pr, err = p.Check(ctx)
	require.NoError(t, err)
	assert.Equal(t, want[1:2], findingKinds(pr), "only the record is left")
	// Make them again for the command's gc.
	makeStray()
	_, err = dm.Message(p.Name(), 0, fmt.Sprintf("create_snap %d %d", orphanID, lb.ID))
	require.NoError(t, err)

	// Closed: the pool's next Open (gc's) finishes the deletion.
	require.NoError(t, hold.Close())
	held = false

	// gc refuses while the pool is open, and without --yes off a
	// terminal; neither changes anything.
	r = runCLI(t, "", "gc", "--root", root, "--yes")
	assert.Equal(t, exitError, r.code)
	assert.Contains(t, r.stderr, "in use by another process")
	require.NoError(t, p.Close())
	pClosed = true
	r = runCLI(t, "y\n", "gc", "--root", root)
	assert.Equal(t, exitError, r.code)
	assert.Contains(t, r.stderr, "3 orphan(s) found; not asking on a non-terminal: pass --yes")
	r = runCLI(t, "", "check", "--root", root, "--json")
	assert.Equal(t, want, findingKinds(decode[thinpool.CheckReport](t, r)), "nothing changed")

	r = execCLI(t, "gc", "--root", root, "--yes", "--discard", "--json")
	require.Equal(t, exitOK, r.code)
	res := decode[gcResult](t, r)
	assert.Len(t, res.Found, 3)
	assert.Empty(t, res.Errors)
	var kinds []thinpool.FindingKind
	for _, f := range res.Removed {
		kinds = append(kinds, f.Kind)
	}
	// Opening the pool removes stray dm devices itself (recovery); gc
	// does the rest.
	assert.Subset(t, kinds, []thinpool.FindingKind{thinpool.FindingRecordWithoutThin, thinpool.FindingThinWithoutRecord})
	assert.NotContains(t, r.stderr, "discard thin id", "no progress on a pipe")
	ok, err = dm.Exists(stray)
	require.NoError(t, err)
	assert.False(t, ok)

	r = execCLI(t, "check", "--root", root, "--json")
	require.Equal(t, exitOK, r.code)
	cr = decode[thinpool.CheckReport](t, r)
	assert.Empty(t, cr.Findings)
	assert.Equal(t, 2, cr.Records, "base and b")
	assert.Equal(t, 2, cr.ThinIDs)
	r = runCLI(t, "", "gc", "--root", root)
	assert.Equal(t, exitOK, r.code)
	assert.Contains(t, r.stdout, "nothing to remove")

	// thin_dump of the live pool agrees: the thin ids are the records'.
	ls := decode[[]*entry](t, runCLI(t, "", "ls", "--json", "--root", root))
	var recIDs []uint32
	for _, e := range ls {
		recIDs = append(recIDs, e.ID)
	}
	slices.Sort(recIDs)
	_, err = dm.Message(p.Name(), 0, "reserve_metadata_snap")
	require.NoError(t, err)
	ids := testenv.ThinIDs(t, "--metadata-snap", filepath.Join(root, "devicemapper", "metadata"))
	_, err = dm.Message(p.Name(), 0, "release_metadata_snap")
	require.NoError(t, err)
	assert.Equal(t, recIDs, ids)

	// A snapshot held while a check runs (it holds the snapshot's lock):
	// check says so, status shows it.
	_, err = dm.Message(p.Name(), 0, "reserve_metadata_snap")
	require.NoError(t, err)
	lock, err := os.OpenFile(filepath.Join(root, "metasnap.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	require.NoError(t, err)
	require.NoError(t, unix.Flock(int(lock.Fd()), unix.LOCK_EX))
	r = runCLI(t, "", "check", "--root", root)
	assert.Equal(t, exitIncomplete, r.code)
	assert.Contains(t, r.stdout, "holds a metadata snapshot already")
	assert.Contains(t, r.stdout, "another check is running")
	assert.Contains(t, r.stdout, "INCOMPLETE")
	rep = decode[thinpool.Report](t, runCLI(t, "", "status", "--root", root, "--json"))
	assert.True(t, rep.MetadataSnapshotHeld)
	// The check dies: its lock goes, the snapshot stays. The next check
	// releases it and is complete.
	require.NoError(t, lock.Close())
	r = runCLI(t, "", "check", "--root", root)
	assert.Equal(t, exitOK, r.code, "a snapshot a killed check left is released")
	rep = decode[thinpool.Report](t, runCLI(t, "", "status", "--root", root, "--json"))
	assert.False(t, rep.MetadataSnapshotHeld)

	// grow of a pool that is active but held by nobody (an engine that
	// died): the pool is reloaded online, its low-water mark kept (not
	// recomputed as 1% of the new size), and it stays active.
	require.Equal(t, int64(dataSize/thinpool.DefaultBlockSize/100*thinpool.DefaultBlockSize), rep.LowWaterMark)
	r = execCLI(t, "grow", "--root", root, "--data", "3G")
	require.Equal(t, exitOK, r.code)
	assert.Contains(t, r.stdout, "data 3GiB, metadata 16MiB")
	rep2 := decode[thinpool.Report](t, runCLI(t, "", "status", "--root", root, "--json"))
	assert.True(t, rep2.Active, "left active, as found")
	assert.Equal(t, int64(3*units.GiB), rep2.DataTotal)
	assert.Equal(t, rep.LowWaterMark, rep2.LowWaterMark)
}

// A pool on a whole device (Options.Device): status calls it "direct", the
// read-only commands work, check calls the linear devices the pool is built
// on (<prefix>-pool-meta and -pool-data) the pool's own, not orphans, with
// the engine running and after it left the pool active, and gc removes real
// orphans, of an active pool and of one shut down (whose disk it finds by
// its label). grow says how such a pool grows instead of treating it as a
// pool over separate devices.
func TestDirectDevicePool(t *testing.T) {
	testenv.RequireDM(t)
	ctx := context.Background()
	img := filepath.Join(t.TempDir(), "disk.img")
	require.NoError(t, loopback.CreateSparse(img, 512*units.MiB))
	disk, err := loopback.Attach(img, loopback.Options{})
	require.NoError(t, err)
	root := filepath.Join(t.TempDir(), "root-"+testenv.Suffix(t))
	o := storeOptions(t, root, false)
	o.Pool.LoopDataSize, o.Pool.LoopMetadataSize = 0, 0
	o.Pool.Device = disk.Path()
	s, err := layerstore.Open(ctx, o)
	require.NoError(t, err)
	sOpen := true
	t.Cleanup(func() {
		if sOpen {
			assert.NoError(t, s.Close())
		}
		if s, err := layerstore.Open(ctx, o); assert.NoError(t, err) {
			assert.NoError(t, s.Pool().Shutdown(ctx))
		}
		assert.NoError(t, disk.Detach())
	})
	require.NoError(t, s.Create(ctx, "a", "", 0))
	dm, err := devmapper.Open(devmapper.Options{})
	require.NoError(t, err)
	defer dm.Close()
	prefix := strings.TrimSuffix(s.Pool().Name(), "-pool")
	ownDMs := []string{prefix + "-pool", prefix + "-pool-data", prefix + "-pool-meta"}
	exist := func(names ...string) []bool {
		t.Helper()
		var out []bool
		for _, n := range names {
			ok, err := dm.Exists(n)
			require.NoError(t, err)
			out = append(out, ok)
		}
		return out
	}
	require.Equal(t, []bool{true, true, true}, exist(ownDMs...), "the pool and its two linear devices")
	healthy := func(live bool) {
		t.Helper()
		r := execCLI(t, "check", "--root", root, "--json")
		assert.Equal(t, exitOK, r.code)
		cr := decode[thinpool.CheckReport](t, r)
		assert.Equal(t, live, cr.Live)
		assert.Empty(t, findingKinds(cr))
		assert.True(t, cr.Healthy())
		assert.Equal(t, 2, cr.Records, "base and a")
		assert.Equal(t, 2, cr.ThinIDs)
		r = runCLI(t, "", "check", "--root", root)
		assert.Equal(t, exitOK, r.code)
		assert.Regexp(t, `(?m)^healthy$`, r.stdout)
		assert.NotContains(t, r.stdout, "-pool-")
	}

	// The engine runs.
	healthy(true)
	require.NoError(t, s.Close())
	sOpen = false
	// The pool alone, closed and left active, as a killed engine leaves
	// it.
	popts := o.Pool
	popts.Root = root
	p, err := thinpool.Open(ctx, popts)
	require.NoError(t, err)
	require.NoError(t, p.Close())
	require.Equal(t, []bool{true, true, true}, exist(ownDMs...), "left active")
	healthy(false)

	r := execCLI(t, "status", "--root", root, "--json")
	require.Equal(t, exitOK, r.code)
	rep := decode[thinpool.Report](t, r)
	assert.Equal(t, thinpool.KindDirect, rep.Kind)
	assert.True(t, rep.Active)
	assert.Empty(t, rep.FaultyDevices)
	r = execCLI(t, "ls", "--root", root)
	require.Equal(t, exitOK, r.code)
	assert.Regexp(t, `(?m)^l-a\s+a\s`, r.stdout)
	r = execCLI(t, "grow", "--root", root, "--data", "1G")
	assert.Equal(t, exitError, r.code)
	assert.Contains(t, r.stderr, "whole device")

	// Real orphans: a dm device with the prefix, a thin id no record
	// names. gc removes those and nothing of the pool's.
	stray := prefix + "-stray"
	makeStray := func() {
		t.Helper()
		_, err := dm.Activate(stray, "", devmapper.Table{{Length: 8, Params: devmapper.RawParams{Type: "error"}}}, false)
		require.NoError(t, err)
	}
	makeStray()
	t.Cleanup(func() { _ = dm.Remove(stray, devmapper.RemoveOptions{}) })
	la := byName(decode[[]*entry](t, runCLI(t, "", "ls", "--json", "--root", root)))["l-a"]
	require.NotNil(t, la)
	const orphanID = 4242
	_, err = dm.Message(prefix+"-pool", 0, fmt.Sprintf("create_snap %d %d", orphanID, la.ID))
	require.NoError(t, err)
	want := []string{
		fmt.Sprintf("dm-device-without-record - %s -", stray),
		fmt.Sprintf("thin-id-without-record - - %d", orphanID),
	}
	r = execCLI(t, "check", "--root", root, "--json")
	assert.Equal(t, exitProblems, r.code)
	assert.Equal(t, want, findingKinds(decode[thinpool.CheckReport](t, r)))

	r = execCLI(t, "gc", "--root", root, "--yes", "--json")
	require.Equal(t, exitOK, r.code)
	res := decode[gcResult](t, r)
	assert.Empty(t, res.Errors)
	var found, removed []string
	for _, f := range res.Found {
		found = append(found, string(f.Kind)+" "+f.DM)
	}
	for _, f := range res.Removed {
		removed = append(removed, string(f.Kind)+" "+f.DM)
	}
	assert.ElementsMatch(t, []string{"dm-device-without-record " + stray, "thin-id-without-record "}, found)
	// Opening the pool removes the stray dm device itself (recovery).
	assert.Subset(t, found, removed)
	assert.Contains(t, removed, "thin-id-without-record ")
	assert.Equal(t, []bool{false, true, true, true}, exist(append([]string{stray}, ownDMs...)...), "the stray removed, the pool left active as found")
	healthy(false)

	// A pool shut down: gc finds its disk by the label and leaves the
	// pool shut down again.
	p, err = thinpool.Open(ctx, popts)
	require.NoError(t, err)
	require.NoError(t, p.Shutdown(ctx))
	require.Equal(t, []bool{false, false, false}, exist(ownDMs...))
	makeStray()
	r = execCLI(t, "check", "--root", root, "--json")
	assert.Equal(t, exitProblems, r.code)
	assert.Equal(t, want[:1], findingKinds(decode[thinpool.CheckReport](t, r)))
	r = execCLI(t, "gc", "--root", root, "--yes")
	assert.Equal(t, exitOK, r.code)
	assert.Equal(t, []bool{false, false, false, false}, exist(append([]string{stray}, ownDMs...)...))
}
