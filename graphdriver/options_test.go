package graphdriver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/docker/go-units"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/dmthin/dmthin/thinpool"
)

func TestParseOptionsDockerNames(t *testing.T) {
	c, err := ParseOptions([]string{
		"dm.basesize=20G",
		"dm.loopdatasize=200GB",
		"dm.loopmetadatasize=4G",
		"dm.fs=ext4",
		"dm.mkfsarg=-O ^has_journal",
		"dm.mkfsarg=-m0",
		"dm.mountopt=nodiscard,noatime",
		"dm.mountopt=nodev",
		"dm.blocksize=512K",
		"dm.blkdiscard=false",
		"dm.min_free_space=5%",
		"DM.Use_Deferred_Removal=true",
		"dm.use_deferred_deletion=1",
		"dm.sync_remove=true",
	})
	require.NoError(t, err)
	assert.Equal(t, int64(20*units.GiB), c.BaseSize)
	assert.Equal(t, int64(200*units.GiB), c.LoopDataSize)
	assert.Equal(t, int64(4*units.GiB), c.LoopMetadataSize)
	assert.Equal(t, "ext4", c.Filesystem)
	assert.Equal(t, []string{"-O ^has_journal", "-m0"}, c.MkfsArgs)
	assert.Equal(t, []string{"nodiscard", "noatime", "nodev"}, c.MountOptions)
	assert.Equal(t, int64(512*units.KiB), c.BlockSize)
	require.NotNil(t, c.BlkDiscard)
	assert.False(t, *c.BlkDiscard)
	assert.False(t, c.blkDiscard())
	require.NotNil(t, c.MinFreeSpacePercent)
	assert.Equal(t, 5, *c.MinFreeSpacePercent)
	assert.True(t, c.DeferredRemoval)
	assert.True(t, c.DeferredDeletion)
	assert.True(t, c.SyncRemove)

	po := c.poolOptions("/var/lib/x")
	assert.Equal(t, "/var/lib/x", po.Root)
	assert.Equal(t, int64(200*units.GiB), po.LoopDataSize)
	assert.Equal(t, int64(512*units.KiB), po.BlockSize)
	assert.Equal(t, 5, *po.MinFreeSpacePercent)
}

func TestParseOptionsDefaults(t *testing.T) {
	c, err := ParseOptions(nil)
	require.NoError(t, err)
	assert.Equal(t, DefaultConfig(), c)
	assert.True(t, c.loopback())
	assert.True(t, c.blkDiscard(), "blkdiscard defaults to on for a loopback pool, as in Docker")
	assert.Nil(t, c.MinFreeSpacePercent)
	assert.False(t, c.SyncRemove, "removal is asynchronous by default")

	c, err = ParseOptions([]string{"dm.thinpooldev=/dev/mapper/mypool"})
	require.NoError(t, err)
	assert.Equal(t, "mypool", c.ThinPoolDevice)
	assert.True(t, c.external())
	assert.False(t, c.blkDiscard(), "blkdiscard defaults to off for a pool over devices")
	assert.Equal(t, "mypool", c.poolOptions("/h").PoolDevice)

	c, err = ParseOptions([]string{"dm.datadev=/dev/vdb", "dm.metadatadev=/dev/vdc"})
	require.NoError(t, err)
	assert.Equal(t, "/dev/vdb", c.poolOptions("/h").DataDevice)
	assert.Equal(t, "/dev/vdc", c.poolOptions("/h").MetadataDevice)
}

func TestParseOptionsLastWins(t *testing.T) {
	c, err := ParseOptions([]string{"dm.basesize=1G", "dm.basesize=2G"})
	require.NoError(t, err)
	assert.Equal(t, int64(2*units.GiB), c.BaseSize)
}

// Every bad option is reported, and each message names its option.
// dm.force_devices reaches the pool, whose kernel tests show what it
// allows (thinpool's signature refusal); without it nothing is forced.
func TestParseOptionsForceDevices(t *testing.T) {
	c, err := ParseOptions([]string{"dm.datadev=/dev/vdb", "dm.metadatadev=/dev/vdc"})
	require.NoError(t, err)
	assert.False(t, c.poolOptions("/h").ForceDevices)
	c, err = ParseOptions([]string{"dm.datadev=/dev/vdb", "dm.metadatadev=/dev/vdc", "dm.force_devices=true"})
	require.NoError(t, err)
	assert.True(t, c.poolOptions("/h").ForceDevices)
	_, err = ParseOptions([]string{"dm.force_devices=please"})
	require.ErrorIs(t, err, ErrInvalidOptions)
	assert.Contains(t, err.Error(), "dm.force_devices=please")
}

// dm.directlvm_device (Docker's name) and dm.directdev give the pool one
// whole device; dm.directlvm_device_force forces it like dm.force_devices.
// A pool over a device defaults to no discard on removal, as over
// dm.datadev.
func TestParseOptionsDirectDevice(t *testing.T) {
	for _, key := range []string{"dm.directlvm_device", "dm.directdev", "DM.DirectLVM_Device"} {
		c, err := ParseOptions([]string{key + "=/dev/vdb"})
		require.NoError(t, err, key)
		o := c.poolOptions("/h")
		assert.Equal(t, "/dev/vdb", o.Device, key)
		assert.Empty(t, o.DataDevice+o.MetadataDevice+o.PoolDevice, key)
		assert.False(t, o.ForceDevices, key)
		assert.False(t, c.loopback(), key)
		assert.False(t, c.blkDiscard(), key)
		assert.NoError(t, o.Validate(), key)
	}
	c, err := ParseOptions([]string{"dm.directlvm_device=/dev/vdb", "dm.directlvm_device_force=true"})
	require.NoError(t, err)
	assert.True(t, c.poolOptions("/h").ForceDevices)
}

// dm.directlvm_device that is not a block device fails Init before any
// pool is made, naming the option as the user wrote it.
func TestInitDirectDeviceNotBlock(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "disk")
	require.NoError(t, os.WriteFile(file, nil, 0o600))
	_, err := Init(filepath.Join(dir, "home"), []string{"dm.directdev=" + file}, nil)
	require.ErrorIs(t, err, ErrInvalidOptions)
	assert.Contains(t, err.Error(), "dm.directdev="+file+": not a block device")
}

func TestParseOptionsErrorsNameTheOption(t *testing.T) {
	cases := []struct {
		opt  string
		want string
	}{
		{"dm.nosuchthing=1", `unknown option "dm.nosuchthing"`},
		{"dm.basesize", "want key=value"},
		{"dm.basesize=ten", "dm.basesize=ten"},
		{"dm.basesize=-5G", "dm.basesize=-5G"},
		{"dm.loopdatasize=0", "dm.loopdatasize=0"},
		{"dm.blkdiscard=maybe", "dm.blkdiscard=maybe"},
		{"dm.use_deferred_removal=yes", "dm.use_deferred_removal=yes"},
		{"dm.sync_remove=sometimes", "dm.sync_remove=sometimes"},
		{"dm.async_remove=false", "dm.sync_remove=true makes Remove wait"},
		{"dm.min_free_space=10", "dm.min_free_space=10"},
		{"dm.min_free_space=x%", "dm.min_free_space=x%"},
		{"dm.mountopt=a,,b", "dm.mountopt=a,,b"},
		{"dm.datadev=", "dm.datadev="},
		{"dm.directlvm_device=", "dm.directlvm_device="},
		{"dm.thinp_percent=95", "dm.thinp_percent is not supported"},
		{"dm.override_udev_sync_check=true", "dm.override_udev_sync_check is not supported"},
	}
	for _, tc := range cases {
		t.Run(tc.opt, func(t *testing.T) {
			_, err := ParseOptions([]string{tc.opt})
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrInvalidOptions)
			assert.Contains(t, err.Error(), tc.want)
		})
	}

	// All at once: one error per bad option.
	var all []string
	for _, tc := range cases {
		all = append(all, tc.opt)
	}
	_, err := ParseOptions(all)
	require.Error(t, err)
	var joined interface{ Unwrap() []error }
	require.True(t, errors.As(err, &joined))
	assert.Len(t, joined.Unwrap(), len(cases))
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name string
		opts []string
		want []string
	}{
		{"base too small", []string{"dm.basesize=1M"}, []string{"dm.basesize 1MiB is below the minimum 16MiB"}},
		{"base not sector multiple", []string{"dm.basesize=100000001"}, []string{"not a multiple of 512"}},
		{"datadev alone", []string{"dm.datadev=/dev/vdb"}, []string{"dm.datadev and dm.metadatadev go together"}},
		{"thinpooldev with devices", []string{"dm.thinpooldev=p", "dm.datadev=/a", "dm.metadatadev=/b"}, []string{"dm.thinpooldev excludes"}},
		{"loop sizes with pool", []string{"dm.thinpooldev=p", "dm.loopdatasize=1G"}, []string{"only apply to the loopback pool"}},
		{"directlvm with datadev", []string{"dm.directlvm_device=/dev/vdb", "dm.datadev=/a", "dm.metadatadev=/b"}, []string{"dm.directlvm_device excludes"}},
		{"directdev with thinpooldev", []string{"dm.directdev=/dev/vdb", "dm.thinpooldev=p"}, []string{"dm.directdev excludes"}},
		{"loop sizes with directlvm", []string{"dm.directlvm_device=/dev/vdb", "dm.loopmetadatasize=1G"}, []string{"only apply to the loopback pool"}},
		{"directlvm relative", []string{"dm.directlvm_device=sdb"}, []string{"dm.directlvm_device=sdb: want the absolute path"}},
		{"blocksize", []string{"dm.blocksize=100K"}, []string{"dm.blocksize 100KiB"}},
		{"blocksize huge", []string{"dm.blocksize=2G"}, []string{"dm.blocksize 2GiB"}},
		{"xfs base too small", []string{"dm.fs=xfs", "dm.basesize=256M"}, []string{"dm.basesize 256MiB is below the 300MiB that dm.fs=xfs needs"}},
		{"xfs mkfsarg", []string{"dm.fs=xfs", "dm.mkfsarg=-N"}, []string{`dm.mkfsarg: invalid filesystem options: xfs: invalid format options: extra mkfs argument "-N": -N only prints`}},
		{"xfs mountopt of ext4", []string{"dm.fs=XFS", "dm.mountopt=data=writeback"}, []string{`dm.mountopt "data=writeback": unknown mount option: neither a mount flag nor an xfs option`}},
		{"xfs retries without xfs", []string{"dm.xfs_nospace_max_retries=0"}, []string{"dm.xfs_nospace_max_retries applies to dm.fs=xfs only"}},
		{"xfs retries below -1", []string{"dm.fs=xfs", "dm.xfs_nospace_max_retries=-2"}, []string{"dm.xfs_nospace_max_retries=-2"}},
		{"btrfs", []string{"dm.fs=btrfs"}, []string{`dm.fs=btrfs: unsupported filesystem: "btrfs" (want ext4 or xfs)`}},
		{"mkfsarg positional", []string{"dm.mkfsarg=/dev/sda"}, []string{"dm.mkfsarg"}},
		{"mountopt bind", []string{"dm.mountopt=bind"}, []string{`dm.mountopt "bind"`}},
		{"mountopt unknown", []string{"dm.mountopt=noatime,bogus"}, []string{`dm.mountopt "bogus": unknown mount option`}},
		{"min free", []string{"dm.min_free_space=100%"}, []string{"dm.min_free_space 100%"}},
		{"deletion without removal", []string{"dm.use_deferred_deletion=true"}, []string{"needs dm.use_deferred_removal=true"}},
		{"several at once", []string{"dm.basesize=1M", "dm.fs=btrfs", "dm.blocksize=100K"},
			[]string{"dm.basesize", "dm.fs=btrfs", "dm.blocksize"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseOptions(tc.opts)
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrInvalidOptions)
			for _, w := range tc.want {
				assert.Contains(t, err.Error(), w)
			}
			assert.Equal(t, len(tc.want), strings.Count(err.Error(), "graphdriver: invalid options"), err.Error())
		})
	}
}

func TestValidateID(t *testing.T) {
	good := []string{
		"a", "base", "pool", "probe-1", ".hidden", "x.y", "os", "-init",
		"2f4a5d9cbb0a1e5a6c3f3c0b8d3a7f1e2c4b6a8d0e1f2a3b4c5d6e7f8a9b0c1d-init",
		strings.Repeat("a", MaxIDLen),
	}
	for _, id := range good {
		assert.NoError(t, ValidateID(id), id)
	}
	bad := []string{"", ".", "..", "../x", "a/b", "/", "a..b", "x\x00y", "tab\there", "del\x7f", strings.Repeat("a", MaxIDLen+1)}
	for _, id := range bad {
		err := ValidateID(id)
		assert.ErrorIs(t, err, ErrInvalidID, "%q", id)
	}
}

func TestMountOptions(t *testing.T) {
	flags, data := mountOptions([]string{"noatime", "nodev", "ro", "rw", "discard", "data=writeback"}, "")
	assert.Equal(t, uintptr(0x400|0x4), flags) // MS_NOATIME|MS_NODEV, ro then rw cancels
	assert.Equal(t, "discard,data=writeback", data)

	flags, data = mountOptions(nil, "system_u:object_r:container_file_t:s0:c1,c2")
	assert.Zero(t, flags)
	assert.Equal(t, `context="system_u:object_r:container_file_t:s0:c1,c2"`, data)
}

// Every error an option can cause, from ParseOptions, Validate and the
// checks Init adds: each part wraps ErrInvalidOptions and names its dm.*
// option (never a Go field).
func TestOptionErrorsNameTheDMOption(t *testing.T) {
	dir := t.TempDir()
	regular := filepath.Join(dir, "file")
	require.NoError(t, os.WriteFile(regular, nil, 0o600))
	missing := filepath.Join(dir, "missing")

	cases := []struct {
		opts []string
		opt  string // the option each error must name
	}{
		{[]string{"dm.nosuchthing=1"}, "dm.nosuchthing"},
		{[]string{"dm.basesize=ten"}, "dm.basesize"},
		{[]string{"dm.basesize=1M"}, "dm.basesize"},
		{[]string{"dm.basesize=100000001"}, "dm.basesize"},
		{[]string{"dm.loopdatasize=-1"}, "dm.loopdatasize"},
		{[]string{"dm.loopmetadatasize=1M"}, "dm.loopmetadatasize"},
		{[]string{"dm.loopmetadatasize=17G"}, "dm.loopmetadatasize"},
		{[]string{"dm.loopmetadatasize=x"}, "dm.loopmetadatasize"},
		{[]string{"dm.datadev=vdb", "dm.metadatadev=/dev/vdc"}, "dm.datadev"},
		{[]string{"dm.datadev=/dev/vdb", "dm.metadatadev=vdc"}, "dm.metadatadev"},
		{[]string{"dm.datadev=/dev/vdb"}, "dm.datadev"},
		{[]string{"dm.thinpooldev=/dev/sdb"}, "dm.thinpooldev"},
		{[]string{"dm.thinpooldev=" + strings.Repeat("p", 128)}, "dm.thinpooldev"},
		{[]string{"dm.thinpooldev=p", "dm.blocksize=64K"}, "dm.blocksize"},
		{[]string{"dm.blocksize=100K"}, "dm.blocksize"},
		{[]string{"dm.fs=btrfs"}, "dm.fs"},
		{[]string{"dm.mkfsarg=/dev/sda"}, "dm.mkfsarg"},
		{[]string{"dm.mountopt=bogus"}, "dm.mountopt"},
		{[]string{"dm.mountopt=noatime,data=bogus"}, "dm.mountopt"},
		{[]string{"dm.mountopt=commit=soon"}, "dm.mountopt"},
		{[]string{"dm.mountopt=commit"}, "dm.mountopt"},
		{[]string{"dm.mountopt=discard=1"}, "dm.mountopt"},
		{[]string{"dm.mountopt=context=system_u:object_r:foo_t:s0"}, "dm.mountopt"},
		{[]string{"dm.mountopt=shared"}, "dm.mountopt"},
		{[]string{"dm.mountopt=nobh"}, "dm.mountopt"},
		{[]string{"dm.mountopt=a,,b"}, "dm.mountopt"},
		{[]string{"dm.blkdiscard=maybe"}, "dm.blkdiscard"},
		{[]string{"dm.min_free_space=100%"}, "dm.min_free_space"},
		{[]string{"dm.use_deferred_removal=yes"}, "dm.use_deferred_removal"},
		{[]string{"dm.use_deferred_deletion=true"}, "dm.use_deferred_deletion"},
		{[]string{"dm.xfs_nospace_max_retries=1"}, "dm.xfs_nospace_max_retries"},
		{[]string{"dm.low_water_mark=lots"}, "dm.low_water_mark"},
		{[]string{"dm.block_zeroing=maybe"}, "dm.block_zeroing"},
		{[]string{"dm.discards=some"}, "dm.discards"},
		{[]string{"dm.no_space=wait"}, "dm.no_space"},
		{[]string{"dm.thinp_autoextend_threshold=100"}, "dm.thinp_autoextend_threshold"},
		{[]string{"dm.thinp_autoextend_threshold=x%"}, "dm.thinp_autoextend_threshold"},
		{[]string{"dm.thinp_autoextend_percent=0"}, "dm.thinp_autoextend_percent"},
		{[]string{"dm.thinp_autoextend_percent=5000"}, "dm.thinp_autoextend_percent"},
		{[]string{"dm.loopdatasize=10G", "dm.loopdatasize_max=5G"}, "dm.loopdatasize_max"},
		{[]string{"dm.loopmetadatasize_max=17G"}, "dm.loopmetadatasize_max"},
		{[]string{"dm.loopmetadatasize_max=1M"}, "dm.loopmetadatasize_max"},
		{[]string{"dm.thinpooldev=p", "dm.block_zeroing=false"}, "dm.block_zeroing"},
		{[]string{"dm.thinpooldev=p", "dm.no_space=queue"}, "dm.no_space"},
		{[]string{"dm.thinpooldev=p", "dm.discards=ignore"}, "dm.discards"},
		{[]string{"dm.thinpooldev=p", "dm.low_water_mark=1G"}, "dm.low_water_mark"},
		{[]string{"dm.thinpooldev=p", "dm.thinp_autoextend_threshold=80"}, "dm.thinp_autoextend"},
		{[]string{"dm.datadev=/dev/vdb", "dm.metadatadev=/dev/vdc", "dm.loopdatasize_max=1T"}, "dm.loop"},
		{[]string{"dm.thinp_autoextend_percent=10", "dm.low_water_mark=1G"}, "dm.low_water_mark"},
		{[]string{"dm.fs=xfs", "dm.xfs_nospace_max_retries=many"}, "dm.xfs_nospace_max_retries"},
		{[]string{"dm.fs=xfs", "dm.basesize=200M"}, "dm.basesize"},
		{[]string{"dm.fs=xfs", "dm.mountopt=barrier"}, "dm.mountopt"},
		{[]string{"dm.fs=xfs", "dm.mountopt=logdev=/dev/sdb"}, "dm.mountopt"},
		// Checked by Init (checkDevices), on the devices themselves.
		{[]string{"dm.datadev=" + regular, "dm.metadatadev=/dev/null"}, "dm."},
		{[]string{"dm.datadev=" + missing, "dm.metadatadev=" + missing}, "dm."},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.opts, " "), func(t *testing.T) {
			c, err := ParseOptions(tc.opts)
			if err == nil {
				err = c.checkDevices()
			}
			require.Error(t, err)
			for _, e := range leaves(err) {
				assert.ErrorIs(t, e, ErrInvalidOptions)
				assert.Contains(t, e.Error(), tc.opt)
				for _, field := range []string{"LoopMetadataSize", "LoopDataSize", "DataDevice", "MetadataDevice", "PoolDevice", "BlockSize", "MinFreeSpacePercent"} {
					assert.NotContains(t, e.Error(), field, "names the Go field, not the option")
				}
			}
		})
	}

	// The devices: each names its own option, and a missing one keeps errno.
	c, err := ParseOptions([]string{"dm.datadev=" + regular, "dm.metadatadev=" + missing})
	require.NoError(t, err)
	err = c.checkDevices()
	require.Len(t, leaves(err), 2)
	assert.Contains(t, leaves(err)[0].Error(), "dm.datadev="+regular+": not a block device")
	assert.Contains(t, leaves(err)[1].Error(), "dm.metadatadev="+missing)
	assert.ErrorIs(t, leaves(err)[1], os.ErrNotExist)

	// A dm.thinpooldev the kernel does not know (ENXIO from thinpool.Open).
	c, err = ParseOptions([]string{"dm.thinpooldev=nosuchpool"})
	require.NoError(t, err)
	err = c.thinPoolDevError(fmt.Errorf("graphdriver: open pool: %w", unix.ENXIO))
	assert.ErrorIs(t, err, ErrInvalidOptions)
	assert.ErrorIs(t, err, unix.ENXIO)
	assert.Contains(t, err.Error(), "dm.thinpooldev=nosuchpool")
	other := errors.New("other")
	assert.Equal(t, other, c.thinPoolDevError(other))
}

// leaves flattens errors.Join trees (not fmt.Errorf's multiple %w: an
// errors.Join's text is its parts' texts, one a line).
func leaves(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		var texts []string
		for _, e := range j.Unwrap() {
			out = append(out, leaves(e)...)
			texts = append(texts, e.Error())
		}
		if strings.Join(texts, "\n") == err.Error() {
			return out
		}
	}
	if err == nil {
		return nil
	}
	return []error{err}
}

// Every mount option dm.mountopt accepts: mount flags and ext4's options
// with the values they take.
func TestCheckMountOptionAccepts(t *testing.T) {
	for _, o := range []string{
		"noatime", "nodev", "ro", "rw", "lazytime", "defaults", "discard", "nodiscard",
		"data=writeback", "data=ordered", "commit=17", "errors=remount-ro", "barrier", "barrier=0",
		"dax", "dax=never", "usrjquota=", "usrjquota=aquota.user", "init_itable=10", "user_xattr", "acl",
		"journal_checksum", "max_dir_size_kb=1024", "inode_readahead_blks=64", "auto_da_alloc=0",
	} {
		assert.NoError(t, checkMountOption(FilesystemExt4, o), o)
	}
	for _, o := range []string{
		"noatime", "ro", "discard", "nodiscard", "nouuid", "inode64", "allocsize=64k", "logbsize=256k",
		"logbufs=8", "sunit=128", "swidth=256", "prjquota", "dax=inode", "norecovery", "largeio",
	} {
		assert.NoError(t, checkMountOption(FilesystemXFS, o), o)
	}
	assert.ErrorContains(t, checkMountOption(FilesystemXFS, "nobarrier"), "removed from xfs")
	assert.ErrorContains(t, checkMountOption(FilesystemXFS, "logbufs=many"), "want a number")
}

// dm.fs=xfs and dm.xfs_nospace_max_retries parse into the Config.
func TestParseOptionsXFS(t *testing.T) {
	c, err := ParseOptions([]string{"dm.fs=xfs", "dm.basesize=300M", "dm.xfs_nospace_max_retries=0",
		"dm.mkfsarg=-imaxpct=10", "dm.mountopt=nouuid,inode64"})
	require.NoError(t, err)
	assert.Equal(t, FilesystemXFS, c.Filesystem)
	require.NotNil(t, c.XFSNoSpaceMaxRetries)
	assert.Equal(t, 0, *c.XFSNoSpaceMaxRetries)
	c, err = ParseOptions([]string{"dm.fs=xfs", "dm.xfs_nospace_max_retries=-1"})
	require.NoError(t, err)
	assert.Equal(t, -1, *c.XFSNoSpaceMaxRetries)
}

// Init refuses a bad dm.mountopt before it makes anything, so a bogus option
// cannot make every later Get fail; a valid set of options mounts every
// layer with them.
func TestInitChecksMountOptions(t *testing.T) {
	testenv.RequireDM(t)
	home := newHome(t)
	for _, bad := range []string{"dm.mountopt=bogus", "dm.mountopt=noatime,data=bogus", "dm.mountopt=commit=soon"} {
		d, err := Init(home, append(append([]string(nil), smallPool...), bad), testLogger(t))
		if err == nil {
			cleanupAndCheck(t, d)
		}
		require.ErrorIs(t, err, ErrInvalidOptions, bad)
		assert.Contains(t, err.Error(), "dm.mountopt")
		_, err = os.Stat(home)
		assert.ErrorIs(t, err, os.ErrNotExist, "Init made nothing")
	}

	d := openDriver(t, home, "dm.mountopt=noatime,data=writeback,errors=remount-ro", "dm.mountopt=commit=9")
	require.NoError(t, d.Create("l", "", nil))
	root, err := d.Get("l", "")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(root, "f"), []byte("x"), 0o644))
	m, err := mountsUnder(d.mntDir())
	require.NoError(t, err)
	e := m["l"]
	assert.Contains(t, strings.Split(e.Options, ","), "noatime")
	for _, o := range []string{"data=writeback", "errors=remount-ro", "commit=9"} {
		assert.Contains(t, strings.Split(e.SuperOptions, ","), o)
	}
	require.NoError(t, d.Put("l"))
}

// A dm.thinpooldev the kernel does not have fails Init with
// ErrInvalidOptions naming it.
func TestInitThinPoolDevMissing(t *testing.T) {
	testenv.RequireDM(t)
	name := "nosuchpool-" + testenv.Suffix(t)
	_, err := Init(newHome(t), []string{"dm.thinpooldev=" + name}, testLogger(t))
	require.ErrorIs(t, err, ErrInvalidOptions)
	assert.ErrorIs(t, err, unix.ENXIO)
	assert.Contains(t, err.Error(), "dm.thinpooldev="+name)
}

// dm.datadev that is not a block device fails Init before any pool is made
// (no device-mapper needed).
func TestInitDataDevNotBlock(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "data")
	require.NoError(t, os.WriteFile(file, nil, 0o600))
	_, err := Init(filepath.Join(dir, "home"), []string{"dm.datadev=" + file, "dm.metadatadev=" + file}, nil)
	require.ErrorIs(t, err, ErrInvalidOptions)
	assert.Contains(t, err.Error(), "dm.datadev="+file+": not a block device")
	assert.Contains(t, err.Error(), "dm.metadatadev="+file+": not a block device")
	_, err = os.Stat(filepath.Join(dir, "home"))
	assert.ErrorIs(t, err, os.ErrNotExist)
}

// The pool table and auto-extend options reach thinpool.Options; an
// external pool gets none of them (its table is not ours).
func TestPoolTableOptions(t *testing.T) {
	c, err := ParseOptions([]string{
		"dm.loopdatasize=1G",
		"dm.low_water_mark=100M",
		"dm.block_zeroing=false",
		"dm.discards=NoPassdown",
		"dm.no_space=queue",
	})
	require.NoError(t, err)
	po := c.poolOptions("/h")
	assert.Equal(t, int64(100*units.MiB), po.LowWaterMark)
	assert.True(t, po.SkipBlockZeroing)
	assert.False(t, po.IgnoreDiscard)
	assert.True(t, po.NoDiscardPassdown)
	assert.True(t, po.QueueIfNoSpace)
	assert.Nil(t, po.AutoGrow)
	assert.Equal(t, "off", c.autoExtendText())
	require.NoError(t, po.Validate())

	c, err = ParseOptions([]string{"dm.discards=ignore"})
	require.NoError(t, err)
	po = c.poolOptions("/h")
	assert.True(t, po.IgnoreDiscard)
	assert.True(t, po.SkipBlockZeroing, "zeroing is off by default for the pools the driver makes")
	assert.False(t, po.QueueIfNoSpace, "error is the default")
	c, err = ParseOptions([]string{"dm.block_zeroing=true"})
	require.NoError(t, err)
	assert.False(t, c.poolOptions("/h").SkipBlockZeroing, "dm.block_zeroing=true turns zeroing on")

	// Docker's autoextend names, "80" or "80%"; any of them turns it on.
	c, err = ParseOptions([]string{"dm.loopdatasize=10G", "dm.thinp_autoextend_threshold=70%", "dm.thinp_autoextend_percent=25",
		"dm.loopdatasize_max=100G", "dm.loopmetadatasize_max=4G"})
	require.NoError(t, err)
	po = c.poolOptions("/h")
	require.NotNil(t, po.AutoGrow)
	assert.Equal(t, thinpool.AutoGrow{ThresholdPercent: 70, StepPercent: 25, MaxDataSize: 100 * units.GiB, MaxMetadataSize: 4 * units.GiB}, *po.AutoGrow)
	assert.Equal(t, "at 70% used, by 25%, data up to 100GiB", c.autoExtendText())
	require.NoError(t, po.Validate())
	c, err = ParseOptions([]string{"dm.loopdatasize=1G", "dm.loopdatasize_max=8G"})
	require.NoError(t, err)
	require.NotNil(t, c.poolOptions("/h").AutoGrow)
	assert.Equal(t, "at 80% used, by 20%, data up to 8GiB", c.autoExtendText())
	c, err = ParseOptions([]string{"dm.thinp_autoextend_threshold=90"})
	require.NoError(t, err)
	assert.Equal(t, "at 90% used, by 20%, data up to the filesystem's free space", c.autoExtendText())

	// dm.thinpooldev: the free-space check applies, the table options are
	// never passed (even their defaults).
	c, err = ParseOptions([]string{"dm.thinpooldev=vg-pool", "dm.min_free_space=5%"})
	require.NoError(t, err)
	po = c.poolOptions("/h")
	assert.False(t, po.SkipBlockZeroing || po.IgnoreDiscard || po.NoDiscardPassdown || po.QueueIfNoSpace || po.LowWaterMark != 0 || po.AutoGrow != nil)
	require.NoError(t, po.Validate())
}
