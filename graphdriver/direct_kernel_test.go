//go:build dmthin_kernel

package graphdriver

import (
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/docker/go-units"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/dmthin/dmthin/loopback"
	"github.com/dmthin/dmthin/thinpool"
)

// TestDirectLVMDevice: dm.directlvm_device gives a whole disk (a loop
// device over a sparse file) to the driver. Layers written survive
// Cleanup and Init (the disk is recognised by its label), the pool grows
// when the disk grows, and an ext4 disk is refused unless
// dm.directlvm_device_force is set.
func TestDirectLVMDevice(t *testing.T) {
	testenv.RequireDM(t)
	file := filepath.Join(t.TempDir(), "disk-"+testenv.Suffix(t))
	require.NoError(t, loopback.CreateSparse(file, 1*units.GiB))
	disk, err := loopback.Attach(file, loopback.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, disk.Detach()) })
	home := newHome(t)
	opts := []string{"dm.directlvm_device=" + disk.Path(), "dm.basesize=256M"}

	d := initDriver(t, home, opts)
	st := statusMap(d)
	assert.Contains(t, st["Device"], disk.Path())
	assert.Equal(t, "false", st["Discard On Removal"])
	total := st["Data Space Total"]
	require.NoError(t, d.Create("os", "", nil))
	withLayer(t, d, "os", func(root string) { writeFile(t, root, "etc/os-release", "NAME=direct\n") })
	require.NoError(t, d.Create("app", "os", nil))
	poolName := d.store.Pool().Name()
	require.NoError(t, d.Cleanup())
	assertNothingLeft(t, home, poolName)

	// The disk grows while the engine is down.
	require.NoError(t, loopback.CreateSparse(file, 2*units.GiB))
	require.NoError(t, disk.SetCapacity())
	d = initDriver(t, home, opts)
	withLayer(t, d, "app", func(root string) {
		assert.Equal(t, "NAME=direct\n", readFile(t, root, "etc/os-release"))
	})
	ps, err := d.PoolStatus(t.Context())
	require.NoError(t, err)
	assert.Greater(t, ps.DataTotal, int64(1900*units.MiB), "the pool took the grown disk (was %s)", total)
	cleanupAndCheck(t, d)

	// An ext4 disk is refused, then forced.
	fsFile := filepath.Join(t.TempDir(), "fs-"+testenv.Suffix(t))
	require.NoError(t, loopback.CreateSparse(fsFile, 512*units.MiB))
	out, err := exec.Command(testenv.RequireTool(t, "mkfs.ext4"), "-q", "-F", fsFile).CombinedOutput()
	require.NoError(t, err, "%s", out)
	fsDisk, err := loopback.Attach(fsFile, loopback.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, fsDisk.Detach()) })
	_, err = Init(newHome(t), []string{"dm.directlvm_device=" + fsDisk.Path()}, testLogger(t))
	assert.ErrorIs(t, err, thinpool.ErrDeviceInUse)
	assert.ErrorContains(t, err, "ext2/3/4")
	d = initDriver(t, newHome(t), []string{"dm.directlvm_device=" + fsDisk.Path(), "dm.directlvm_device_force=true", "dm.basesize=64M"})
	require.NoError(t, d.Create("x", "", nil))
	cleanupAndCheck(t, d)
}
