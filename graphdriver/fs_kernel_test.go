package graphdriver

import (
	"strings"
	"testing"

	"github.com/docker/go-units"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/dmthin/dmthin/layerstore"
	"github.com/dmthin/dmthin/xfs"
)

// driverFS is a filesystem the kernel tests run over: its options on top of
// smallPool and the base size they give.
type driverFS struct {
	name string
	opts []string
	base int64
}

// xfsOpts make an xfs driver with the smallest base a test can afford (xfs
// needs 300 MiB) and the ENOSPC retries set (the tests check it).
var xfsOpts = []string{"dm.fs=xfs", "dm.basesize=320M", "dm.xfs_nospace_max_retries=0"}

var driverFilesystems = []driverFS{
	{FilesystemExt4, nil, 256 * units.MiB},
	{FilesystemXFS, xfsOpts, 320 * units.MiB},
}

// withOpts is smallPool plus opts.
func withOpts(opts ...string) []string {
	return append(append([]string(nil), smallPool...), opts...)
}

// forEachFS runs f as a subtest per filesystem.
func forEachFS(t *testing.T, f func(t *testing.T, fc driverFS)) {
	for _, fc := range driverFilesystems {
		t.Run(fc.name, func(t *testing.T) { f(t, fc) })
	}
}

// An xfs layer is mounted with nouuid and the driver's dm.mountopt, and
// dm.xfs_nospace_max_retries is set on its mounted filesystem.
func TestXFSMountOptions(t *testing.T) {
	d := openDriver(t, newHome(t), append(xfsOpts, "dm.mountopt=noatime,inode64,allocsize=64k")...)
	require.NoError(t, d.Create("l", "", nil))
	require.NoError(t, d.Create("m", "l", nil))
	mustGet(t, d, "l")
	mustGet(t, d, "m")
	m, err := mountsUnder(d.mntDir())
	require.NoError(t, err)
	for _, id := range []string{"l", "m"} {
		e := m[id]
		assert.Equal(t, "xfs", e.FSType, id)
		assert.Contains(t, e.Options, "noatime", id)
		super := strings.Split(e.SuperOptions, ",")
		for _, o := range []string{"nouuid", "inode64", "allocsize=64k"} {
			assert.Contains(t, super, o, id)
		}
		meta, err := d.GetMetadata(id)
		require.NoError(t, err)
		n, err := xfs.NoSpaceMaxRetries(meta["DevicePath"])
		require.NoError(t, err)
		assert.Equal(t, 0, n, "dm.xfs_nospace_max_retries=0 on %s", id)
		require.NoError(t, d.Put(id))
	}
}

// The crash cases that touch the filesystem, on xfs: formatting the base,
// growing it (xfs_growfs, mounted), and a layer grown at its creation.
var xfsCrashCases = []driverCrashCase{
	{
		name:  "format-base-xfs",
		op:    "init",
		steps: []string{layerstore.StepBaseCreated, layerstore.StepBaseFormatted, layerstore.StepBaseMounted, layerstore.StepBaseRecorded},
		opts:  xfsOpts,
		after: func(t *testing.T, d *Driver, _ string) {
			assert.Equal(t, FilesystemXFS, statusMap(d)["Backing Filesystem"])
			require.NoError(t, d.Create("l", "", nil))
			withLayer(t, d, "l", func(root string) {
				assert.Empty(t, dirNames(t, root), "the layer's root is the base's empty rootfs")
			})
		},
	},
	{
		name:  "grow-base-xfs",
		op:    "init",
		steps: []string{layerstore.StepBaseResized, layerstore.StepBaseMounted},
		opts:  append(append([]string(nil), xfsOpts...), "dm.basesize=640M"),
		setup: func(t *testing.T, home string) {
			d := initDriver(t, home, withOpts(xfsOpts...)) // a 320M base
			require.NoError(t, d.Create("old", "", nil))
			require.NoError(t, d.Cleanup())
		},
		after: func(t *testing.T, d *Driver, _ string) {
			assert.Equal(t, "640MiB", statusMap(d)["Base Device Size"])
			require.NoError(t, d.Create("new", "", nil))
			withLayer(t, d, "new", func(root string) {
				assert.Greater(t, fsSize(t, root), int64(500*units.MiB), "the base filesystem was grown")
			})
		},
	},
	{
		name:   "create-with-size-xfs",
		op:     "create",
		steps:  []string{layerstore.StepCreateSnapshot, layerstore.StepCreateMounted, layerstore.StepCreateGrown, layerstore.StepCreateDone},
		opts:   xfsOpts,
		exists: map[string]bool{layerstore.StepCreateDone: true},
		after: func(t *testing.T, d *Driver, step string) {
			if !d.Exists(crashTarget) {
				require.NoError(t, d.Create(crashTarget, "", &CreateOpts{StorageOpt: map[string]string{"size": "512M"}}), "a retry makes the layer")
			}
			withLayer(t, d, crashTarget, func(root string) {
				// 448M: statfs leaves out the 64M log; the base shows 256M.
				assert.Greater(t, fsSize(t, root), int64(400*units.MiB), "the layer's filesystem has its size")
			})
		},
	},
}

func TestDriverCrashXFS(t *testing.T) {
	testenv.RequireDM(t)
	for _, cc := range xfsCrashCases {
		for _, step := range cc.steps {
			t.Run(cc.name+"/"+step, func(t *testing.T) { runDriverCrash(t, cc, step) })
		}
	}
}
