package containerd

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dmthin/dmthin/thinpool"
)

func TestParseConfig(t *testing.T) {
	c, err := ParseConfig([]byte(`
root_path = "/var/lib/dmthin-snapshotter"
base_image_size = "8GB"
async_remove = true
discard_blocks = true
fs_type = "ext4"
fs_options = "-E lazy_itable_init=1"
loopback_data_size = "200GB"
`))
	require.NoError(t, err)
	require.Equal(t, Config{RootPath: "/var/lib/dmthin-snapshotter", BaseImageSize: "8GB", AsyncRemove: true,
		DiscardBlocks: true, FsType: "ext4", FsOptions: "-E lazy_itable_init=1", LoopbackDataSize: "200GB"}, c)
	sz, errs := c.sizes()
	require.Empty(t, errs)
	require.Equal(t, int64(8<<30), sz.base)
	require.Equal(t, int64(200<<30), sz.data)
	require.Equal(t, int64(2<<30), sz.meta, "default loopback_metadata_size")

	// The keys of containerd's own devmapper snapshotter are accepted as is.
	_, err = ParseConfig([]byte(`root_path = "/r"
pool_name = "containerd-pool"
base_image_size = "10GB"`))
	require.NoError(t, err)

	c, err = ParseConfig([]byte("root_path = \"/r\"\nfs_type = \"xfs\"\nbase_image_size = \"300MB\""))
	require.NoError(t, err)
	require.Equal(t, "xfs", c.FsType)
}

func TestParseConfigAutoextend(t *testing.T) {
	c, err := ParseConfig([]byte(`
root_path = "/r"
loopback_data_size = "10GB"
loopback_autoextend_threshold = 70
loopback_autoextend_percent = 25
loopback_data_size_max = "100GB"
loopback_metadata_size_max = "4GB"
`))
	require.NoError(t, err)
	sz, errs := c.sizes()
	require.Empty(t, errs)
	require.Equal(t, &thinpool.AutoGrow{ThresholdPercent: 70, StepPercent: 25, MaxDataSize: 100 << 30, MaxMetadataSize: 4 << 30}, c.autoGrow(sz))

	c, err = ParseConfig([]byte("root_path = \"/r\"\nloopback_data_size_max = \"200GB\""))
	require.NoError(t, err)
	sz, _ = c.sizes()
	require.Equal(t, &thinpool.AutoGrow{MaxDataSize: 200 << 30}, c.autoGrow(sz), "any key turns it on; thinpool fills the defaults")

	c, err = ParseConfig([]byte(`root_path = "/r"`))
	require.NoError(t, err)
	sz, _ = c.sizes()
	require.Nil(t, c.autoGrow(sz), "off by default")
}

func TestParseConfigErrors(t *testing.T) {
	cases := []struct {
		name, toml string
		says       []string
	}{
		{"unknown key", "root_path = \"/r\"\npoolname = \"x\"", []string{"unknown key", "poolname"}},
		{"no root", `base_image_size = "1GB"`, []string{"root_path is required"}},
		{"relative root", `root_path = "r"`, []string{"root_path", "absolute"}},
		{"bad size", "root_path = \"/r\"\nbase_image_size = \"ten\"", []string{"base_image_size", `"ten"`}},
		{"negative size", "root_path = \"/r\"\nloopback_data_size = \"-1G\"", []string{"loopback_data_size"}},
		{"bad fs", "root_path = \"/r\"\nfs_type = \"zfs\"", []string{"fs_type", `"zfs"`}},
		{"pool and loop sizes", "root_path = \"/r\"\npool_name = \"p\"\nloopback_data_size = \"1G\"", []string{"pool_name"}},
		{"pool path", "root_path = \"/r\"\npool_name = \"/dev/mapper/p\"", []string{"pool_name", "without /dev/mapper/"}},
		{"wrong type", "root_path = 7", []string{"root_path"}},
		{"not toml", "root_path = ", []string{"line 1"}},
		{"autoextend with pool", "root_path = \"/r\"\npool_name = \"p\"\nloopback_autoextend_threshold = 80", []string{"pool_name", "loopback_autoextend"}},
		{"threshold", "root_path = \"/r\"\nloopback_autoextend_threshold = 100", []string{"loopback_autoextend_threshold = 100"}},
		{"step", "root_path = \"/r\"\nloopback_autoextend_percent = -5", []string{"loopback_autoextend_percent = -5"}},
		{"max below size", "root_path = \"/r\"\nloopback_data_size = \"10G\"\nloopback_data_size_max = \"5G\"", []string{"loopback_data_size_max", "below"}},
		{"bad max", "root_path = \"/r\"\nloopback_metadata_size_max = \"lots\"", []string{"loopback_metadata_size_max"}},
		{"metadata max too big", "root_path = \"/r\"\nloopback_metadata_size_max = \"17G\"", []string{"loopback_metadata_size_max", "16320MiB"}},
		{"xfs base too small", "root_path = \"/r\"\nfs_type = \"xfs\"\nbase_image_size = \"256MB\"", []string{"base_image_size", "xfs needs at least 300MiB"}},
		{"every problem at once", "fs_type = \"zfs\"\nbase_image_size = \"x\"", []string{"root_path is required", "fs_type", "base_image_size"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(c.toml))
			require.Error(t, err)
			require.True(t, errors.Is(err, ErrInvalidConfig), "%v", err)
			for _, s := range c.says {
				require.Contains(t, err.Error(), s)
			}
		})
	}
}

func TestLoadConfigMissingFile(t *testing.T) {
	_, err := LoadConfig(filepath.Join(t.TempDir(), "none.toml"))
	require.ErrorIs(t, err, ErrInvalidConfig)
	require.ErrorIs(t, err, os.ErrNotExist)
}
