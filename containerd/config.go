package containerd

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/docker/go-units"
	"github.com/pelletier/go-toml/v2"
)

// Config is the snapshotter's configuration. The keys that containerd's own
// devmapper snapshotter also has keep its names and meanings; the loopback
// sizes are dmthin's own.
type Config struct {
	// RootPath holds the snapshotter's state: the pool's records and, with
	// no PoolName, the loopback pool's sparse files. Required.
	RootPath string `toml:"root_path"`
	// PoolName is an existing thin-pool device (its device-mapper name) to
	// use. Empty: the snapshotter makes and keeps its own loopback pool
	// under RootPath, so it runs with no set-up at all.
	PoolName string `toml:"pool_name"`
	// BaseImageSize is the size of every snapshot's filesystem, e.g. "10GB".
	BaseImageSize string `toml:"base_image_size"`
	// AsyncRemove: Remove makes the removal durable, frees the key and
	// returns; the thin device is deleted in the background (the layer
	// store's worker), and Cleanup (containerd's garbage collector calls
	// it) waits for that. false: Remove deletes the device before it
	// returns.
	AsyncRemove bool `toml:"async_remove"`
	// DiscardBlocks: discard a device's blocks before deleting it, so a
	// loopback file gives the space back to its filesystem.
	DiscardBlocks bool `toml:"discard_blocks"`
	// FsType is the snapshots' filesystem: "ext4" (the default).
	FsType string `toml:"fs_type"`
	// FsOptions are extra mkfs arguments for the base filesystem, split on
	// white space.
	FsOptions string `toml:"fs_options"`
	// LoopbackDataSize and LoopbackMetadataSize size the sparse files of the
	// loopback pool (no PoolName): "100GB" and "2GB" by default.
	LoopbackDataSize     string `toml:"loopback_data_size"`
	LoopbackMetadataSize string `toml:"loopback_metadata_size"`
}

// Defaults for the sizes a Config leaves empty.
const (
	DefaultBaseImageSize        = "10GB"
	DefaultLoopbackDataSize     = "100GB"
	DefaultLoopbackMetadataSize = "2GB"
)

// ErrInvalidConfig wraps every configuration error.
var ErrInvalidConfig = errors.New("dmthin snapshotter: invalid configuration")

// LoadConfig reads a TOML file. An unknown key is an error naming it, as is
// every bad value (all of them at once).
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return ParseConfig(data)
}

// ParseConfig is LoadConfig on the file's contents.
func ParseConfig(data []byte) (Config, error) {
	var c Config
	dec := toml.NewDecoder(bytes.NewReader(data)).DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		var strict *toml.StrictMissingError
		if errors.As(err, &strict) {
			var keys []string
			for _, e := range strict.Errors {
				keys = append(keys, strings.Join(e.Key(), "."))
			}
			return Config{}, fmt.Errorf("%w: unknown key(s) %s", ErrInvalidConfig, strings.Join(keys, ", "))
		}
		var derr *toml.DecodeError
		if errors.As(err, &derr) {
			row, col := derr.Position()
			key := strings.Join(derr.Key(), ".")
			return Config{}, fmt.Errorf("%w: line %d column %d (key %q): %w", ErrInvalidConfig, row, col, key, err)
		}
		return Config{}, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return c, c.Validate()
}

// sizes are the Config's sizes in bytes, defaults applied.
type sizes struct {
	base, data, meta int64
}

func parseSize(key, v, def string) (int64, error) {
	if v == "" {
		v = def
	}
	n, err := units.RAMInBytes(v)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%s = %q: want a size such as %q", key, v, def)
	}
	return n, nil
}

func (c Config) sizes() (sizes, []error) {
	var s sizes
	var errs []error
	var err error
	if s.base, err = parseSize("base_image_size", c.BaseImageSize, DefaultBaseImageSize); err != nil {
		errs = append(errs, err)
	}
	if s.data, err = parseSize("loopback_data_size", c.LoopbackDataSize, DefaultLoopbackDataSize); err != nil {
		errs = append(errs, err)
	}
	if s.meta, err = parseSize("loopback_metadata_size", c.LoopbackMetadataSize, DefaultLoopbackMetadataSize); err != nil {
		errs = append(errs, err)
	}
	return s, errs
}

// Validate reports every problem at once, each naming its key.
func (c Config) Validate() error {
	_, errs := c.sizes()
	if c.RootPath == "" {
		errs = append(errs, errors.New("root_path is required"))
	} else if !filepath.IsAbs(c.RootPath) {
		errs = append(errs, fmt.Errorf("root_path = %q: want an absolute path", c.RootPath))
	}
	switch c.FsType {
	case "", "ext4":
	default:
		errs = append(errs, fmt.Errorf("fs_type = %q: this snapshotter supports \"ext4\"", c.FsType))
	}
	if c.PoolName != "" && (c.LoopbackDataSize != "" || c.LoopbackMetadataSize != "") {
		errs = append(errs, errors.New("loopback_data_size and loopback_metadata_size size the snapshotter's own pool; they cannot go with pool_name"))
	}
	if strings.ContainsAny(c.PoolName, "/\x00") {
		errs = append(errs, fmt.Errorf("pool_name = %q: a device-mapper name, without /dev/mapper/", c.PoolName))
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrInvalidConfig, errors.Join(errs...))
}
