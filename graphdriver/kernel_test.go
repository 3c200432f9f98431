package graphdriver

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/docker/go-units"
	archive "github.com/moby/go-archive"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/layerstore"
)

func statusMap(d *Driver) map[string]string {
	m := map[string]string{}
	for _, kv := range d.Status() {
		m[kv[0]] = kv[1]
	}
	return m
}

func isMounted(t *testing.T, d *Driver, id string) bool {
	t.Helper()
	m, err := mountsUnder(d.mntDir())
	require.NoError(t, err)
	_, ok := m[id]
	return ok
}

// The chain an engine builds: base -> os -> app -> container, on each
// filesystem.
func TestLayerLifecycle(t *testing.T) { forEachFS(t, testLayerLifecycle) }

func testLayerLifecycle(t *testing.T, fc driverFS) {
	home := newHome(t)
	d := openDriver(t, home, fc.opts...)

	st := statusMap(d)
	assert.Equal(t, units.BytesSize(float64(fc.base)), st["Base Device Size"])
	assert.Equal(t, fc.name, st["Backing Filesystem"])
	assert.Equal(t, filepath.Join(home, "devicemapper", "data"), st["Data loop file"])
	assert.Equal(t, "0", st["Layers"])
	assert.NotEmpty(t, st["Pool Name"])
	assert.Equal(t, "2GiB", st["Data Space Total"])

	require.NoError(t, d.Create("os", "", nil))
	assert.True(t, d.Exists("os"))
	assert.False(t, d.Exists("app"))

	root := mustGet(t, d, "os")
	assert.Equal(t, filepath.Join(home, "mnt", "os", "rootfs"), root)
	assert.Empty(t, dirNames(t, root), "a fresh layer's root holds nothing (no lost+found)")
	fi, err := os.Stat(root)
	require.NoError(t, err)
	assert.Equal(t, os.ModeDir|0o755, fi.Mode())
	sys := fi.Sys().(*syscall.Stat_t)
	assert.Equal(t, uint32(0), sys.Uid)
	assert.Equal(t, uint32(0), sys.Gid)
	writeFile(t, root, "etc/os-release", "NAME=demo\n")
	writeFile(t, root, "usr/lib/libfoo.so", "libfoo v1\n")
	writeFile(t, root, "bin/tool", "tool\n")
	require.NoError(t, d.Put("os"))
	assert.False(t, isMounted(t, d, "os"))

	require.NoError(t, d.Create("app", "os", nil))
	withLayer(t, d, "app", func(root string) {
		assert.Equal(t, "NAME=demo\n", readFile(t, root, "etc/os-release"), "a layer sees its parent's files")
		writeFile(t, root, "app/main", "app\n")
		writeFile(t, root, "usr/lib/libfoo.so", "libfoo v2\n")
		require.NoError(t, os.Remove(filepath.Join(root, "bin/tool")))
	})
	withLayer(t, d, "os", func(root string) {
		assert.Equal(t, "libfoo v1\n", readFile(t, root, "usr/lib/libfoo.so"), "the parent is unchanged")
		assert.FileExists(t, filepath.Join(root, "bin/tool"))
		// Parent and child side by side (xfs: two mounts of one UUID).
		withLayer(t, d, "app", func(root string) {
			assert.Equal(t, "libfoo v2\n", readFile(t, root, "usr/lib/libfoo.so"))
		})
	})

	changes, err := d.Changes("app", "os")
	require.NoError(t, err)
	assert.Equal(t, map[string]string{
		"/app": "A", "/app/main": "A",
		"/usr": "C", "/usr/lib": "C", "/usr/lib/libfoo.so": "C",
		"/bin": "C", "/bin/tool": "D",
	}, changeSet(changes))

	rc, err := d.Diff("app", "os")
	require.NoError(t, err)
	names := tarNames(t, rc)
	require.NoError(t, rc.Close())
	assert.Contains(t, names, "bin/.wh.tool")
	assert.Contains(t, names, "app/main")
	assert.NotContains(t, names, "etc/os-release")
	assert.False(t, isMounted(t, d, "app") || isMounted(t, d, "os"), "Diff's close puts both layers")

	rc, err = d.Diff("os", "")
	require.NoError(t, err)
	names = tarNames(t, rc)
	require.NoError(t, rc.Close())
	assert.Contains(t, names, "etc/os-release")
	for n := range names {
		assert.NotContains(t, n, "lost+found")
		assert.NotContains(t, n, "rootfs")
	}

	// References: two Gets need two Puts.
	require.NoError(t, d.Create("ctr", "app", nil))
	r1 := mustGet(t, d, "ctr")
	r2 := mustGet(t, d, "ctr")
	assert.Equal(t, r1, r2)
	writeFile(t, r1, "tmp/scratch", "x")
	require.NoError(t, d.Put("ctr"))
	assert.True(t, isMounted(t, d, "ctr"), "still mounted after one of two Puts")
	require.NoError(t, d.Put("ctr"))
	assert.False(t, isMounted(t, d, "ctr"))
	assert.ErrorIs(t, d.Put("ctr"), ErrNotMounted)

	// Put leaves the deactivation to the background worker.
	require.NoError(t, d.Drain(context.Background()))
	meta, err := d.GetMetadata("app")
	require.NoError(t, err)
	assert.Equal(t, strconv.FormatInt(fc.base, 10), meta["DeviceSize"])
	assert.Equal(t, "l-app", meta["DeviceName"])
	_, err = strconv.ParseUint(meta["DeviceId"], 10, 32)
	assert.NoError(t, err)
	assert.NotContains(t, meta, "DevicePath", "an unmounted layer's device is inactive")
	assert.Equal(t, "3", statusMap(d)["Layers"])

	// Remove refuses a layer still in use; after its Put it goes.
	mustGet(t, d, "ctr")
	assert.ErrorIs(t, d.Remove("ctr"), ErrBusy)
	assert.True(t, d.Exists("ctr"))
	require.NoError(t, d.Put("ctr"))
	require.NoError(t, d.Remove("ctr"))
	assert.False(t, d.Exists("ctr"))
	assert.False(t, isMounted(t, d, "ctr"))
	assert.NoDirExists(t, filepath.Join(home, "mnt", "ctr"))
	require.NoError(t, d.Remove("app"))
	require.NoError(t, d.Remove("os"))
	assert.Equal(t, "0", statusMap(d)["Layers"])
	// Remove leaves the devices' deletion to the background worker.
	require.NoError(t, d.Drain(context.Background()))
	assert.Equal(t, "0", statusMap(d)["Deferred Deleted Device Count"])
	assert.Empty(t, activeDMWithPrefix(t, d.store.Pool().Name()), "no layer device left active")
}

func TestLayerChain128(t *testing.T) {
	d := openDriver(t, newHome(t))
	const depth = 128
	parent := ""
	for i := 0; i < depth; i++ {
		id := fmt.Sprintf("layer-%03d", i)
		require.NoError(t, d.Create(id, parent, nil), id)
		withLayer(t, d, id, func(root string) {
			writeFile(t, root, fmt.Sprintf("layers/%03d", i), strconv.Itoa(i))
			writeFile(t, root, "top", strconv.Itoa(i))
			if i%10 == 9 { // every tenth layer deletes the file of the layer before
				require.NoError(t, os.Remove(filepath.Join(root, fmt.Sprintf("layers/%03d", i-1))))
			}
		})
		parent = id
	}
	withLayer(t, d, parent, func(root string) {
		assert.Equal(t, strconv.Itoa(depth-1), readFile(t, root, "top"))
		for i := 0; i < depth; i++ {
			p := filepath.Join(root, fmt.Sprintf("layers/%03d", i))
			if i%10 == 8 {
				assert.NoFileExists(t, p)
				continue
			}
			b, err := os.ReadFile(p)
			if assert.NoError(t, err) {
				assert.Equal(t, strconv.Itoa(i), string(b))
			}
		}
	})
	s, err := d.store.Pool().Status(t.Context())
	require.NoError(t, err)
	t.Logf("128 layers use %s of pool data", units.BytesSize(float64(s.DataUsed)))
}

// A diff applied onto a fresh layer reproduces the original's files and
// deletions, and ApplyDiff returns DiffSize.
func TestApplyDiffOntoFreshLayer(t *testing.T) {
	d := openDriver(t, newHome(t))
	require.NoError(t, d.Create("os", "", nil))
	withLayer(t, d, "os", func(root string) {
		writeTree(t, root, map[string]string{
			"etc/hostname": "os\n", "etc/passwd": "root\n", "usr/share/doc/a": "a\n", "usr/share/doc/b": "b\n",
			"bin/sh": "sh\n", "bin/link": "->sh", "keep": "keep\n", "mode": "mode\n",
		})
	})
	require.NoError(t, d.Create("app", "os", nil))
	withLayer(t, d, "app", func(root string) {
		in := func(p string) string { return filepath.Join(root, p) }
		require.NoError(t, os.WriteFile(in("etc/hostname"), []byte("app\n"), 0o644))
		require.NoError(t, os.Remove(in("etc/passwd")))
		require.NoError(t, os.RemoveAll(in("usr/share/doc")))
		require.NoError(t, os.Chmod(in("mode"), 0o700))
		require.NoError(t, os.Lchown(in("keep"), 1000, 1000))
		writeTree(t, root, map[string]string{"srv/app/big": string(bytes.Repeat([]byte("x"), 3*units.MiB)), "srv/app/link": "->big"})
		require.NoError(t, os.Link(in("srv/app/big"), in("srv/app/big.hardlink")))
		require.NoError(t, unix.Mkfifo(in("srv/fifo"), 0o600))
	})

	rc, err := d.Diff("app", "os")
	require.NoError(t, err)
	require.NoError(t, d.Create("copy", "os", nil))
	n, err := d.ApplyDiff("copy", "os", rc)
	require.NoError(t, err)
	require.NoError(t, rc.Close())
	size, err := d.DiffSize("app", "os")
	require.NoError(t, err)
	assert.Equal(t, size, n, "ApplyDiff returns DiffSize")
	assert.Equal(t, int64(3*units.MiB+4+5+5), size) // big (once), hostname, mode, keep (chowned)

	app := mustGet(t, d, "app")
	cp := mustGet(t, d, "copy")
	assert.Equal(t, treeState(t, app), treeState(t, cp))
	assert.NoFileExists(t, filepath.Join(cp, "etc/passwd"))
	assert.NoDirExists(t, filepath.Join(cp, "usr/share/doc"))
	require.NoError(t, d.Put("app"))
	require.NoError(t, d.Put("copy"))

	changes, err := d.Changes("copy", "app")
	require.NoError(t, err)
	assert.Empty(t, changes, "the copy differs from the original")
}

// A layer bigger than the base has a filesystem of its size: on ext4 a 50M
// layer of a 32M base accepts 25M of writes and 40M of allocation and
// refuses a 50M file; on xfs a 400M layer of a 300M base (grown with
// xfs_growfs) accepts 280M of allocation and refuses 400M. (statfs leaves
// out xfs's internal log, 64M here: the 300M base shows 236M.)
func TestLayerSize(t *testing.T) {
	cases := []struct {
		fs               driverFS
		size             int64
		fits, overflows  int64
		grownAbove, tiny string
	}{
		{driverFS{FilesystemExt4, []string{"dm.basesize=32M"}, 32 * units.MiB}, 50 * units.MiB, 40 * units.MiB, 50 * units.MiB, "40M", "20M"},
		{driverFS{FilesystemXFS, []string{"dm.fs=xfs", "dm.basesize=300M"}, 300 * units.MiB}, 400 * units.MiB, 280 * units.MiB, 400 * units.MiB, "300M", "200M"},
	}
	for _, tc := range cases {
		t.Run(tc.fs.name, func(t *testing.T) {
			d := openDriver(t, newHome(t), tc.fs.opts...)
			size := strconv.FormatInt(tc.size, 10)
			require.NoError(t, d.Create("sized", "", &CreateOpts{StorageOpt: map[string]string{"size": size}}))
			meta, err := d.GetMetadata("sized")
			require.NoError(t, err)
			assert.Equal(t, size, meta["DeviceSize"])

			withLayer(t, d, "sized", func(root string) {
				var fs unix.Statfs_t
				require.NoError(t, unix.Statfs(root, &fs))
				total := int64(fs.Blocks) * fs.Bsize
				grownAbove, err := units.RAMInBytes(tc.grownAbove)
				require.NoError(t, err)
				assert.Greater(t, total, grownAbove, "the filesystem was grown to the layer's size")
				assert.LessOrEqual(t, total, tc.size)

				require.NoError(t, writeBig(filepath.Join(root, "25M"), 25*units.MiB))
				require.NoError(t, os.Remove(filepath.Join(root, "25M")))
				require.NoError(t, allocate(filepath.Join(root, "fits"), tc.fits), "more than the base holds")
				require.NoError(t, os.Remove(filepath.Join(root, "fits")))
				assert.ErrorIs(t, allocate(filepath.Join(root, "overflows"), tc.overflows), unix.ENOSPC)
				require.NoError(t, os.Remove(filepath.Join(root, "overflows")))
			})

			before := layerDevices(t, d)
			err = d.Create("tiny", "", &CreateOpts{StorageOpt: map[string]string{"size": tc.tiny}})
			assert.ErrorIs(t, err, ErrInvalidOptions)
			assert.Contains(t, err.Error(), "below the base device size")
			assert.Equal(t, before, layerDevices(t, d))
		})
	}
}

// allocate makes a file of n bytes with fallocate: the filesystem reserves
// the blocks (ENOSPC if it has too few) without writing them.
func allocate(path string, n int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	err = unix.Fallocate(int(f.Fd()), 0, 0, n)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// writeBig writes n bytes to a new file and syncs it.
func writeBig(path string, n int) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	buf := bytes.Repeat([]byte{0xa5}, units.MiB)
	for written := 0; written < n && err == nil; written += len(buf) {
		_, err = f.Write(buf)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Restarting the driver keeps every layer and its contents; a layer left
// mounted by a process that died is adopted.
func TestRestartKeepsLayers(t *testing.T) {
	home := newHome(t)
	opts := smallPool
	d1 := initDriver(t, home, opts)
	poolName := d1.store.Pool().Name()
	require.NoError(t, d1.Create("os", "", nil))
	withLayer(t, d1, "os", func(root string) { writeFile(t, root, "etc/os", "os\n") })
	require.NoError(t, d1.Create("app", "os", nil))
	withLayer(t, d1, "app", func(root string) { writeFile(t, root, "app", "app\n") })
	require.NoError(t, d1.Create("ctr", "app", nil))
	root := mustGet(t, d1, "ctr") // left mounted
	writeFile(t, root, "ctr", "ctr\n")
	require.NoError(t, d1.Cleanup())
	assertNothingLeft(t, home, poolName)

	// A second run: everything is there. Then it dies with ctr mounted.
	d2 := initDriver(t, home, opts)
	for _, id := range []string{"os", "app", "ctr"} {
		assert.True(t, d2.Exists(id), id)
	}
	withLayer(t, d2, "app", func(root string) {
		assert.Equal(t, "os\n", readFile(t, root, "etc/os"))
		assert.Equal(t, "app\n", readFile(t, root, "app"))
	})
	root = mustGet(t, d2, "ctr")
	assert.Equal(t, "ctr\n", readFile(t, root, "ctr"))
	require.NoError(t, d2.store.Pool().Close()) // the process dies: no Put, no Cleanup

	d3 := openDriver(t, home)
	assert.True(t, isMounted(t, d3, "ctr"), "the mount outlived its process")
	root = mustGet(t, d3, "ctr")
	assert.Equal(t, "ctr\n", readFile(t, root, "ctr"), "the adopted mount is used, not mounted again")
	require.NoError(t, d3.Put("ctr"))
	assert.False(t, isMounted(t, d3, "ctr"), "Put unmounts an adopted layer")
	assert.Equal(t, "3", statusMap(d3)["Layers"])
}

// Cleanup with layers still mounted leaves nothing mounted or active, and
// the layers come back at the next Init.
func TestCleanupWithLayersMounted(t *testing.T) {
	home := newHome(t)
	d := initDriver(t, home, smallPool)
	poolName := d.store.Pool().Name()
	for _, id := range []string{"a", "b", "c"} {
		require.NoError(t, d.Create(id, "", nil))
	}
	mustGet(t, d, "a")
	mustGet(t, d, "a")
	root := mustGet(t, d, "b")
	writeFile(t, root, "f", "b\n")
	require.NoError(t, d.Cleanup())
	assertNothingLeft(t, home, poolName)
	_, err := d.Get("c", "")
	assert.ErrorIs(t, err, ErrClosed)
	assert.NoError(t, d.Cleanup(), "a second Cleanup does nothing")

	d = openDriver(t, home)
	for _, id := range []string{"a", "b", "c"} {
		assert.True(t, d.Exists(id), id)
	}
	withLayer(t, d, "b", func(root string) { assert.Equal(t, "b\n", readFile(t, root, "f")) })
}

// Bad input gives clear errors and changes nothing.
func TestBadInputChangesNothing(t *testing.T) {
	home := newHome(t)
	d := openDriver(t, home)
	require.NoError(t, d.Create("os", "", nil))
	require.NoError(t, d.Create("ctr", "os", nil))
	mustGet(t, d, "ctr")
	defer func() { assert.NoError(t, d.Put("ctr")) }()

	type state struct {
		Devices map[string]int64
		MntDirs []string
		Mounted []string
	}
	snapshot := func() state {
		m, err := mountsUnder(d.mntDir())
		require.NoError(t, err)
		var mounted []string
		for id := range m {
			mounted = append(mounted, id)
		}
		return state{layerDevices(t, d), dirNames(t, d.mntDir()), mounted}
	}
	before := snapshot()
	emptyTar := func() io.Reader {
		var b bytes.Buffer
		require.NoError(t, tar.NewWriter(&b).Close())
		return &b
	}
	size := func(s string) *CreateOpts { return &CreateOpts{StorageOpt: map[string]string{"size": s}} }
	cases := []struct {
		name string
		err  error
		want error
	}{
		{"Get unknown", second(d.Get("nope", "")), ErrNotFound},
		{"Put unknown", d.Put("nope"), ErrNotMounted},
		{"Put not mounted", d.Put("os"), ErrNotMounted},
		{"Remove unknown", d.Remove("nope"), ErrNotFound},
		{"GetMetadata unknown", second(d.GetMetadata("nope")), ErrNotFound},
		{"Diff unknown", second(d.Diff("nope", "os")), ErrNotFound},
		{"Diff unknown parent", second(d.Diff("os", "nope")), ErrNotFound},
		{"Changes unknown", second(d.Changes("nope", "")), ErrNotFound},
		{"DiffSize unknown", second(d.DiffSize("nope", "os")), ErrNotFound},
		{"ApplyDiff unknown", second(d.ApplyDiff("nope", "", emptyTar())), ErrNotFound},
		{"Create existing", d.Create("os", "", nil), ErrExists},
		{"Create existing, mounted", d.Create("ctr", "os", nil), ErrExists},
		{"Create missing parent", d.Create("new", "missing", nil), ErrParentNotFound},
		{"Create ../x", d.Create("../x", "", nil), ErrInvalidID},
		{"Create a/b", d.Create("a/b", "", nil), ErrInvalidID},
		{"Create empty id", d.Create("", "", nil), ErrInvalidID},
		{"Create parent ../os", d.Create("x", "../os", nil), ErrInvalidID},
		{"Get ../x", second(d.Get("../x", "")), ErrInvalidID},
		{"Remove ../x", d.Remove("../x"), ErrInvalidID},
		{"size below base", d.Create("x", "", size("16M")), ErrInvalidOptions},
		{"size not a size", d.Create("x", "", size("lots")), ErrInvalidOptions},
		{"unknown storage option", d.Create("x", "", &CreateOpts{StorageOpt: map[string]string{"quota": "1G"}}), ErrInvalidOptions},
	}
	for _, tc := range cases {
		assert.ErrorIs(t, tc.err, tc.want, tc.name)
		if tc.err != nil {
			t.Logf("%s: %v", tc.name, tc.err)
		}
	}
	assert.False(t, d.Exists("../x"))
	assert.Equal(t, before, snapshot())

	// An unknown option is refused before anything is made.
	home2 := newHome(t) + "-2"
	_, err := Init(home2, []string{"dm.loopdatasize=1G", "dm.bogus=1"}, nil)
	assert.ErrorIs(t, err, ErrInvalidOptions)
	assert.Contains(t, err.Error(), "dm.bogus")
	assert.NoDirExists(t, home2)
}

func second[T any](_ T, err error) error { return err }

// The base device is verified at every start: a different filesystem is
// refused, a smaller dm.basesize is refused, a bigger one grows the base.
func TestBaseDeviceVerifiedAndGrown(t *testing.T) {
	forEachFS(t, func(t *testing.T, fc driverFS) {
		smaller, bigger, grownAbove := "128M", "512M", int64(400*units.MiB)
		if fc.name == FilesystemXFS {
			smaller, bigger, grownAbove = "300M", "640M", 500*units.MiB
		}
		testBaseDeviceVerifiedAndGrown(t, fc, smaller, bigger, grownAbove)
	})
}

func testBaseDeviceVerifiedAndGrown(t *testing.T, fc driverFS, smaller, bigger string, grownAbove int64) {
	home := newHome(t)
	smallPool := withOpts(fc.opts...) // this filesystem's pool, in the rest of the test
	d := initDriver(t, home, smallPool)
	poolName := d.store.Pool().Name()
	require.NoError(t, d.Create("old", "", nil))
	withLayer(t, d, "old", func(root string) { writeFile(t, root, "old", "old\n") })
	require.NoError(t, d.Cleanup())

	_, err := Init(home, withOpts(append(fc.opts, "dm.basesize="+smaller)...), testLogger(t))
	assert.ErrorIs(t, err, ErrInvalidOptions)
	// One prefix each, and the option's name.
	assert.Regexp(t, `^graphdriver: invalid options: dm.basesize=\S+: smaller than the existing base device \(\S+\): the base can grow, not shrink$`, err.Error())
	assert.Equal(t, 1, strings.Count(err.Error(), "invalid options"), err.Error())
	assert.Equal(t, 1, strings.Count(err.Error(), "graphdriver:"), err.Error())
	var fe *layerstore.FieldError
	require.ErrorAs(t, err, &fe, "the store's field error is kept")
	assert.Equal(t, "BaseSize", fe.Field)
	assertNothingLeft(t, home, poolName)

	// The other filesystem asked for.
	otherFS := "dm.fs=xfs"
	if fc.name == FilesystemXFS {
		otherFS = "dm.fs=ext4"
	}
	_, err = Init(home, withOpts(otherFS, "dm.basesize=320M"), testLogger(t))
	assert.ErrorIs(t, err, ErrInvalidOptions)
	assert.Contains(t, err.Error(), "graphdriver: invalid options: "+otherFS+": the base device was formatted "+fc.name)
	assert.Equal(t, 1, strings.Count(err.Error(), "invalid options"), err.Error())
	assertNothingLeft(t, home, poolName)

	// A different pool behind this home: its base has another UUID.
	recPath := filepath.Join(home, "base.json")
	orig, err := os.ReadFile(recPath)
	require.NoError(t, err)
	var rec struct {
		Filesystem string `json:"filesystem"`
		UUID       string `json:"uuid"`
	}
	require.NoError(t, json.Unmarshal(orig, &rec))
	other := rec
	other.UUID = "01234567-89ab-cdef-0123-456789abcdef"
	b, _ := json.Marshal(other)
	require.NoError(t, os.WriteFile(recPath, b, 0o600))
	_, err = Init(home, smallPool, testLogger(t))
	assert.ErrorIs(t, err, ErrBaseMismatch)
	assert.Contains(t, err.Error(), rec.UUID)
	assertNothingLeft(t, home, poolName)

	// base.json lost while layers exist: refused too.
	require.NoError(t, os.Remove(recPath))
	_, err = Init(home, smallPool, testLogger(t))
	assert.ErrorIs(t, err, ErrBaseMismatch)
	assertNothingLeft(t, home, poolName)
	require.NoError(t, os.WriteFile(recPath, orig, 0o600))

	d = openDriver(t, home, append(fc.opts, "dm.basesize="+bigger)...)
	biggerBytes, err := units.RAMInBytes(bigger)
	require.NoError(t, err)
	assert.Equal(t, units.BytesSize(float64(biggerBytes)), statusMap(d)["Base Device Size"])
	require.NoError(t, d.Create("new", "", nil))
	require.NoError(t, d.Create("child", "old", nil))
	for _, id := range []string{"new", "child"} {
		meta, err := d.GetMetadata(id)
		require.NoError(t, err)
		assert.Equal(t, strconv.FormatInt(biggerBytes, 10), meta["DeviceSize"], id)
		withLayer(t, d, id, func(root string) {
			var fs unix.Statfs_t
			require.NoError(t, unix.Statfs(root, &fs))
			assert.Greater(t, int64(fs.Blocks)*fs.Bsize, grownAbove, "%s's filesystem has the new size", id)
		})
	}
	withLayer(t, d, "child", func(root string) { assert.Equal(t, "old\n", readFile(t, root, "old")) })
	meta, err := d.GetMetadata("old")
	require.NoError(t, err)
	assert.Equal(t, strconv.FormatInt(fc.base, 10), meta["DeviceSize"], "existing layers keep their size")
}

// Status and option plumbing for mount options.
func TestMountOptionsApplied(t *testing.T) {
	d := openDriver(t, newHome(t), "dm.mountopt=noatime,nodev", "dm.mountopt=commit=17")
	require.NoError(t, d.Create("l", "", nil))
	// Without SELinux the label is dropped, as Docker does.
	_, err := d.Get("l", "system_u:object_r:container_file_t:s0:c1,c2")
	require.NoError(t, err)
	m, err := mountsUnder(d.mntDir())
	require.NoError(t, err)
	e := m["l"]
	assert.Contains(t, e.Options, "noatime")
	assert.Contains(t, e.Options, "nodev")
	assert.Contains(t, e.SuperOptions, "commit=17")
	assert.Equal(t, "ext4", e.FSType)
	require.NoError(t, d.Put("l"))
}

var _ = archive.ChangeAdd
