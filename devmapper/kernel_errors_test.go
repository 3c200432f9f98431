package devmapper_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/devmapper"
	"github.com/dmthin/dmthin/internal/testenv"
)

// Kernel tests of the error paths a caller acts on: missing devices, names
// in use, tables the kernel refuses, undo when a step fails half-way, node
// upkeep without udev. Every error is checked for the errno it must keep.

// clientIn opens a client that makes its block nodes in dir.
func clientIn(t *testing.T, dir string) *devmapper.Client {
	t.Helper()
	testenv.RequireDM(t)
	c, err := devmapper.Open(devmapper.Options{NodeDir: dir})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// assertGone checks that the device and its node no longer exist.
func assertGone(t *testing.T, c *devmapper.Client, name string) {
	t.Helper()
	_, err := c.Info(name)
	assert.ErrorIs(t, err, unix.ENXIO, "device %s must be gone", name)
	_, err = os.Lstat(c.NodePath(name))
	assert.ErrorIs(t, err, os.ErrNotExist, "node of %s must be gone", name)
}

func zeroTable(n devmapper.Sectors) devmapper.Table {
	return devmapper.Table{{Length: n, Params: devmapper.RawParams{Type: "zero"}}}
}

func TestOpenMakesControlNode(t *testing.T) {
	testenv.RequireDM(t)
	// No control node at this path yet: Open makes it from /proc/misc, as
	// on a system without udev, then talks to the kernel through it.
	path := filepath.Join(t.TempDir(), "mapper", "control")
	c, err := devmapper.Open(devmapper.Options{ControlPath: path})
	require.NoError(t, err)
	defer c.Close()
	var st unix.Stat_t
	require.NoError(t, unix.Stat(path, &st))
	assert.Equal(t, uint32(unix.S_IFCHR), st.Mode&unix.S_IFMT, "a character device")
	assert.Equal(t, uint32(10), unix.Major(st.Rdev), "a misc device")
	v, err := c.Version()
	require.NoError(t, err)
	assert.Equal(t, uint32(4), v.Major)
	assert.Equal(t, devmapper.DefaultNodeDir, c.NodeDir())
}

func TestOpenNotAControlNode(t *testing.T) {
	testenv.RequireDM(t)
	// A regular file answers the version ioctl with ENOTTY: the error
	// names the ioctl and keeps the errno.
	path := filepath.Join(t.TempDir(), "control")
	require.NoError(t, os.WriteFile(path, nil, 0o600))
	_, err := devmapper.Open(devmapper.Options{ControlPath: path})
	assert.ErrorIs(t, err, unix.ENOTTY)
	var de *devmapper.Error
	require.ErrorAs(t, err, &de)
	assert.Equal(t, "DM_VERSION", de.Op)

	// A path under a regular file: not ENOENT, so no node is made, and
	// the open error is kept.
	_, err = devmapper.Open(devmapper.Options{ControlPath: filepath.Join(path, "control")})
	assert.ErrorIs(t, err, unix.ENOTDIR)
}

func TestNodeUpkeep(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nodes")
	c := clientIn(t, dir)
	assert.Equal(t, dir, c.NodeDir())
	name := zeroDevice(t, c, "nodes")
	info, err := c.Info(name)
	require.NoError(t, err)
	node := filepath.Join(dir, name)
	assert.Equal(t, node, c.NodePath(name))
	requireNode := func(what string) {
		t.Helper()
		var st unix.Stat_t
		require.NoError(t, unix.Stat(node, &st), what)
		require.Equal(t, uint32(unix.S_IFBLK), st.Mode&unix.S_IFMT, "%s: a block node", what)
		require.Equal(t, info.Dev, devmapper.DecodeDev(st.Rdev), "%s: the device's number", what)
	}
	requireNode("made in NodeDir by Activate")

	// Lost node (a restart with a fresh /dev): EnsureNode makes it again.
	require.NoError(t, os.Remove(node))
	p, err := c.EnsureNode(name)
	require.NoError(t, err)
	assert.Equal(t, node, p)
	requireNode("remade by EnsureNode")

	// A stale file in the node's place is replaced.
	require.NoError(t, os.Remove(node))
	require.NoError(t, os.WriteFile(node, []byte("stale"), 0o600))
	_, err = c.EnsureNode(name)
	require.NoError(t, err)
	requireNode("stale file replaced")

	// A block node of another device in its place is replaced too.
	require.NoError(t, os.Remove(node))
	require.NoError(t, unix.Mknod(node, unix.S_IFBLK|0o600, int(unix.Mkdev(7, 0))))
	_, err = c.EnsureNode(name)
	require.NoError(t, err)
	requireNode("wrong device number replaced")

	// A node that is right is left alone (same inode).
	var before, after unix.Stat_t
	require.NoError(t, unix.Stat(node, &before))
	_, err = c.EnsureNode(name)
	require.NoError(t, err)
	require.NoError(t, unix.Stat(node, &after))
	assert.Equal(t, before.Ino, after.Ino, "a correct node is not remade")

	_, err = c.EnsureNode(devName(t, "absent"))
	assert.ErrorIs(t, err, unix.ENXIO)
}

func TestCreateUndoWhenNodeFails(t *testing.T) {
	// NodeDir under a regular file: the node cannot be made. Create must
	// not leave a device the caller cannot reach: it removes it again and
	// returns the node error (errno kept).
	file := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(file, nil, 0o600))
	c := clientIn(t, filepath.Join(file, "nodes"))
	name := devName(t, "nonode")
	removeOnCleanup(t, c, name)

	_, err := c.Create(name, "")
	require.Error(t, err)
	assert.ErrorIs(t, err, unix.ENOTDIR)
	_, err = c.Info(name)
	assert.ErrorIs(t, err, unix.ENXIO, "Create removed the device it could not make a node for")

	_, err = c.Activate(name, "", zeroTable(8), false)
	assert.ErrorIs(t, err, unix.ENOTDIR)
	_, err = c.Info(name)
	assert.ErrorIs(t, err, unix.ENXIO, "Activate left nothing behind")
}

func TestActivateRollsBackRefusedTable(t *testing.T) {
	c := client(t)
	name := devName(t, "refused")
	removeOnCleanup(t, c, name)
	// The kernel refuses a thin-pool table whose metadata device ("not")
	// does not exist: the table load fails with ENODEV.
	bad := devmapper.Table{{Length: 2048, Params: devmapper.RawParams{Type: "thin-pool", Params: "not a pool table"}}}
	_, err := c.Activate(name, "", bad, false)
	require.Error(t, err)
	assert.ErrorIs(t, err, unix.ENODEV, "the kernel's errno is kept")
	var de *devmapper.Error
	require.ErrorAs(t, err, &de)
	assert.Equal(t, "DM_TABLE_LOAD", de.Op)
	assert.Equal(t, name, de.Name)
	assertGone(t, c, name)

	// An empty table never reaches the kernel; the device is removed too.
	_, err = c.Activate(name, "", nil, false)
	assert.ErrorIs(t, err, devmapper.ErrBadTable)
	assertGone(t, c, name)
}

func TestActivateNameInUse(t *testing.T) {
	c := client(t)
	name := zeroDevice(t, c, "inuse")
	// A second Activate under the same name fails with EBUSY and must not
	// undo anything: the first device keeps its table and node.
	_, err := c.Activate(name, "", zeroTable(16), false)
	assert.ErrorIs(t, err, unix.EBUSY)
	got, err := c.Table(name)
	require.NoError(t, err)
	assert.Equal(t, zeroTable(8), got, "the existing device is untouched")
	_, err = os.Stat(c.NodePath(name))
	assert.NoError(t, err, "the existing device keeps its node")
	ok, err := c.Exists(name)
	require.NoError(t, err)
	assert.True(t, ok)
}

func TestExists(t *testing.T) {
	c := client(t)
	name := zeroDevice(t, c, "exists")
	ok, err := c.Exists(name)
	require.NoError(t, err)
	assert.True(t, ok)
	ok, err = c.Exists(devName(t, "absent"))
	require.NoError(t, err, "a missing device is not an error for Exists")
	assert.False(t, ok)
}

func TestMissingDeviceErrors(t *testing.T) {
	c := client(t)
	absent := devName(t, "absent")
	// Every operation on a device that does not exist unwraps to ENXIO
	// (IsNotFound), and the error names the operation and the device.
	cases := map[string]func() error{
		"DM_TABLE_LOAD":                          func() error { return c.Load(absent, zeroTable(8), false) },
		"DM_DEV_SUSPEND":                         func() error { return c.Suspend(absent, devmapper.SuspendOptions{}) },
		"DM_DEV_RESUME":                          func() error { _, err := c.Resume(absent); return err },
		"DM_TABLE_CLEAR":                         func() error { return c.ClearInactive(absent) },
		"DM_TABLE_STATUS":                        func() error { _, err := c.Status(absent, devmapper.StatusOptions{}); return err },
		"DM_TABLE_STATUS(table)":                 func() error { _, err := c.Table(absent); return err },
		"DM_DEV_RENAME":                          func() error { return c.Rename(absent, absent+"-new") },
		"DM_DEV_REMOVE":                          func() error { return c.Remove(absent, devmapper.RemoveOptions{Deferred: true}) },
		"DM_TARGET_MSG(@cancel_deferred_remove)": func() error { return c.CancelDeferredRemove(absent) },
	}
	for op, f := range cases {
		err := f()
		assert.True(t, devmapper.IsNotFound(err), "%s: want ENXIO, got %v", op, err)
		var de *devmapper.Error
		if assert.ErrorAs(t, err, &de, op) {
			assert.Equal(t, op, de.Op)
			assert.Equal(t, absent, de.Name)
		}
	}
	err := c.Reload(absent, zeroTable(8), devmapper.SuspendOptions{})
	assert.ErrorIs(t, err, unix.ENXIO, "Reload")
	err = c.Load(absent, nil, false)
	assert.ErrorIs(t, err, devmapper.ErrBadTable, "an empty table is refused before any ioctl")
}

func TestReload(t *testing.T) {
	c := client(t)
	name := zeroDevice(t, c, "reload")
	// Grow the device: the new table is live, the device is not left
	// suspended, and its node still reads zeros at the new end.
	require.NoError(t, c.Reload(name, zeroTable(64), devmapper.SuspendOptions{}))
	got, err := c.Table(name)
	require.NoError(t, err)
	assert.Equal(t, devmapper.Sectors(64), got.Length())
	info, err := c.Info(name)
	require.NoError(t, err)
	assert.False(t, info.Suspended)
	assert.False(t, info.InactiveTable)
	assert.Equal(t, make([]byte, 512), readAt(t, c.NodePath(name), 512, 63*512))

	// A table the kernel refuses (a thin-pool needs at least 4 arguments:
	// EINVAL): the errno comes back and the live table stays as it was,
	// not suspended.
	bad := devmapper.Table{{Length: 128, Params: devmapper.RawParams{Type: "thin-pool", Params: "nonsense"}}}
	err = c.Reload(name, bad, devmapper.SuspendOptions{})
	assert.ErrorIs(t, err, unix.EINVAL)
	got, err = c.Table(name)
	require.NoError(t, err)
	assert.Equal(t, zeroTable(64), got)
	info, err = c.Info(name)
	require.NoError(t, err)
	assert.False(t, info.Suspended)
}

func TestInactiveTableStatus(t *testing.T) {
	c := client(t)
	name := zeroDevice(t, c, "inactive")
	// Load without resume: the inactive slot holds the new table, the
	// live one is unchanged; StatusOptions.Inactive reads the former.
	next := devmapper.Table{{Length: 32, Params: devmapper.RawParams{Type: "error"}}}
	require.NoError(t, c.Load(name, next, false))
	live, err := c.Status(name, devmapper.StatusOptions{})
	require.NoError(t, err)
	require.Len(t, live, 1)
	assert.Equal(t, "zero", live[0].Type)
	inactive, err := c.Status(name, devmapper.StatusOptions{Inactive: true})
	require.NoError(t, err)
	require.Len(t, inactive, 1)
	assert.Equal(t, "error", inactive[0].Type)
	assert.Equal(t, devmapper.Sectors(32), inactive[0].Length)
	// Resume swaps it in. (No clear before a rename here: see TestRename.)
	_, err = c.Resume(name)
	require.NoError(t, err)
	got, err := c.Table(name)
	require.NoError(t, err)
	assert.Equal(t, next, got)
}

func TestRenameErrors(t *testing.T) {
	c := client(t)
	a := zeroDevice(t, c, "rena")
	b := zeroDevice(t, c, "renb")
	// Renaming onto a name in use is EBUSY; both devices keep their names
	// and nodes.
	err := c.Rename(a, b)
	assert.ErrorIs(t, err, unix.EBUSY)
	for _, n := range []string{a, b} {
		_, err := c.Info(n)
		assert.NoError(t, err, "%s still there", n)
		_, err = os.Stat(c.NodePath(n))
		assert.NoError(t, err, "%s keeps its node", n)
	}
	// A name the kernel would refuse never reaches it.
	err = c.Rename(a, "bad/name")
	assert.ErrorIs(t, err, devmapper.ErrBadName)
	_, err = c.Info(a)
	assert.NoError(t, err)
}

func TestDeferredRemoveOfClosedDevice(t *testing.T) {
	c := client(t)
	name := zeroDevice(t, c, "defclosed")
	// Nobody has it open: a deferred remove removes it at once, node too.
	require.NoError(t, c.Remove(name, devmapper.RemoveOptions{Deferred: true}))
	assertGone(t, c, name)
}

func TestDeferredRemoveKeepsNodeUntilClosed(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nodes")
	c := clientIn(t, dir)
	name := zeroDevice(t, c, "defopen")
	f, err := os.Open(c.NodePath(name))
	require.NoError(t, err)
	defer f.Close()
	require.NoError(t, c.Remove(name, devmapper.RemoveOptions{Deferred: true}))
	// Still open: the device and its node stay, reads still work.
	_, err = os.Stat(c.NodePath(name))
	require.NoError(t, err, "node kept while the remove is pending")
	buf := make([]byte, 512)
	_, err = f.ReadAt(buf, 0)
	require.NoError(t, err)
	// Cancelling makes sure the node is there (even if it was lost).
	require.NoError(t, os.Remove(c.NodePath(name)))
	require.NoError(t, c.CancelDeferredRemove(name))
	info, err := c.Info(name)
	require.NoError(t, err)
	assert.False(t, info.DeferredRemove)
	_, err = os.Stat(c.NodePath(name))
	assert.NoError(t, err, "CancelDeferredRemove remade the node")
}

func TestPruneNodesTouchesOnlyStaleDMNodes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nodes")
	c := clientIn(t, dir)
	live := zeroDevice(t, c, "prunelive")
	info, err := c.Info(live)
	require.NoError(t, err)
	// A dm node of no device (what a completed deferred remove leaves),
	// next to things PruneNodes must leave alone: another driver's block
	// node, a symlink (udev's kind), a regular file, a directory.
	stale := filepath.Join(dir, devName(t, "stale"))
	require.NoError(t, unix.Mknod(stale, unix.S_IFBLK|0o600, int(unix.Mkdev(info.Dev.Major, 1<<19))))
	loopNode := filepath.Join(dir, "loopish")
	require.NoError(t, unix.Mknod(loopNode, unix.S_IFBLK|0o600, int(unix.Mkdev(7, 0))))
	link := filepath.Join(dir, "link")
	require.NoError(t, os.Symlink("/dev/null", link))
	file := filepath.Join(dir, "file")
	require.NoError(t, os.WriteFile(file, nil, 0o600))
	sub := filepath.Join(dir, "sub")
	require.NoError(t, os.Mkdir(sub, 0o755))

	require.NoError(t, c.PruneNodes())
	_, err = os.Lstat(stale)
	assert.ErrorIs(t, err, os.ErrNotExist, "the stale dm node is removed")
	for _, p := range []string{c.NodePath(live), loopNode, link, file, sub} {
		_, err := os.Lstat(p)
		assert.NoError(t, err, "%s must be left alone", p)
	}

	// A node directory that does not exist is an error that says so.
	c2 := clientIn(t, filepath.Join(t.TempDir(), "none"))
	assert.ErrorIs(t, c2.PruneNodes(), os.ErrNotExist)
}

func TestStatusAndTableOfManyTargets(t *testing.T) {
	c := client(t)
	// 1000 targets: the table (48 bytes a target) is larger than the first
	// ioctl buffer both ways, so Load sizes its buffer to the table and
	// Status and Table retry on DM_BUFFER_FULL until everything fits.
	const n = 1000
	tab := make(devmapper.Table, n)
	for i := range tab {
		tab[i] = devmapper.Target{Start: devmapper.Sectors(i * 8), Length: 8, Params: devmapper.RawParams{Type: "zero"}}
	}
	name := devName(t, "many")
	removeOnCleanup(t, c, name)
	_, err := c.Activate(name, "", tab, false)
	require.NoError(t, err)
	got, err := c.Table(name)
	require.NoError(t, err)
	assert.Equal(t, tab, got)
	st, err := c.Status(name, devmapper.StatusOptions{})
	require.NoError(t, err)
	require.Len(t, st, n)
	assert.Equal(t, devmapper.Sectors((n-1)*8), st[n-1].Start)
	assert.Equal(t, "zero", st[n-1].Type)
	info, err := c.Info(name)
	require.NoError(t, err)
	assert.Equal(t, uint32(n), info.TargetCount)
}

func TestWaitEventEnds(t *testing.T) {
	c := client(t)
	name := zeroDevice(t, c, "wait")
	info, err := c.Info(name)
	require.NoError(t, err)

	// An event counter already past `after` returns at once.
	got, err := c.WaitEvent(t.Context(), name, info.EventNr+1)
	require.NoError(t, err)
	assert.Equal(t, info.EventNr, got.EventNr)

	// Cancelled (no deadline): the wait ends with context.Canceled.
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		_, err := c.WaitEvent(ctx, name, info.EventNr)
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		assert.ErrorIs(t, err, context.Canceled)
	case <-time.After(10 * time.Second):
		t.Fatal("WaitEvent did not end after its context was cancelled")
	}

	// The device goes away while waited on: ENXIO, not a hang.
	go func() {
		_, err := c.WaitEvent(t.Context(), name, info.EventNr)
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	require.NoError(t, c.Remove(name, devmapper.RemoveOptions{}))
	select {
	case err := <-done:
		assert.True(t, devmapper.IsNotFound(err), "want ENXIO, got %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("WaitEvent did not end after its device was removed")
	}

	_, err = c.WaitEvent(t.Context(), devName(t, "absent"), 0)
	assert.True(t, errors.Is(err, unix.ENXIO), "missing device: %v", err)
}
