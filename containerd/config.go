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

	"github.com/dmthin/dmthin/fsys"
	"github.com/dmthin/dmthin/layerstore"
	"github.com/dmthin/dmthin/thinpool"
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
	// FsType is the snapshots' filesystem: "ext4" (the default) or "xfs"
	// (a base_image_size of at least 300MiB; mounts carry "nouuid").
	FsType string `toml:"fs_type"`
	// FsOptions are extra mkfs arguments for the base filesystem, split on
	// white space.
	FsOptions string `toml:"fs_options"`
	// LoopbackDataSize and LoopbackMetadataSize size the sparse files of the
	// loopback pool (no PoolName): "100GB" and "2GB" by default.
	LoopbackDataSize     string `toml:"loopback_data_size"`
	LoopbackMetadataSize string `toml:"loopback_metadata_size"`

	// Auto-extend of the loopback pool (no PoolName); setting any of these
	// turns it on (see thinpool.AutoGrow). The pool grows its files by
	// LoopbackAutoextendPercent of their size (default 20) when
	// LoopbackAutoextendThreshold percent is in use (default 80), up to
	// LoopbackDataSizeMax and LoopbackMetadataSizeMax and never past the
	// free space of their filesystem; past that, writes fail with ENOSPC.
	LoopbackAutoextendThreshold int    `toml:"loopback_autoextend_threshold"`
	LoopbackAutoextendPercent   int    `toml:"loopback_autoextend_percent"`
	LoopbackDataSizeMax         string `toml:"loopback_data_size_max"`
	LoopbackMetadataSizeMax     string `toml:"loopback_metadata_size_max"`
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

// sizes are the Config's sizes in bytes, defaults applied; the maxima are
// 0 when not set.
type sizes struct {
	base, data, meta int64
	dataMax, metaMax int64
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
	if c.LoopbackDataSizeMax != "" {
		if s.dataMax, err = parseSize("loopback_data_size_max", c.LoopbackDataSizeMax, ""); err != nil {
			errs = append(errs, err)
		} else if s.data > 0 && s.dataMax < s.data {
			errs = append(errs, fmt.Errorf("loopback_data_size_max = %q is below loopback_data_size", c.LoopbackDataSizeMax))
		}
	}
	if c.LoopbackMetadataSizeMax != "" {
		if s.metaMax, err = parseSize("loopback_metadata_size_max", c.LoopbackMetadataSizeMax, ""); err != nil {
			errs = append(errs, err)
		} else if s.meta > 0 && s.metaMax < s.meta {
			errs = append(errs, fmt.Errorf("loopback_metadata_size_max = %q is below loopback_metadata_size", c.LoopbackMetadataSizeMax))
		} else if s.metaMax > thinpool.MaxMetadataSize {
			errs = append(errs, fmt.Errorf("loopback_metadata_size_max = %q: a thin pool uses at most 16320MiB", c.LoopbackMetadataSizeMax))
		}
	}
	return s, errs
}

// autoextend reports whether an auto-extend key is set.
func (c Config) autoextend() bool {
	return c.LoopbackAutoextendThreshold != 0 || c.LoopbackAutoextendPercent != 0 ||
		c.LoopbackDataSizeMax != "" || c.LoopbackMetadataSizeMax != ""
}

// autoGrow is the pool's AutoGrow, nil when auto-extend is off.
func (c Config) autoGrow(s sizes) *thinpool.AutoGrow {
	if !c.autoextend() {
		return nil
	}
	return &thinpool.AutoGrow{ThresholdPercent: c.LoopbackAutoextendThreshold, StepPercent: c.LoopbackAutoextendPercent,
		MaxDataSize: s.dataMax, MaxMetadataSize: s.metaMax}
}

// Validate reports every problem at once, each naming its key.
func (c Config) Validate() error {
	sz, errs := c.sizes()
	if c.RootPath == "" {
		errs = append(errs, errors.New("root_path is required"))
	} else if !filepath.IsAbs(c.RootPath) {
		errs = append(errs, fmt.Errorf("root_path = %q: want an absolute path", c.RootPath))
	}
	if fs, err := fsys.New(c.FsType, fsys.Options{}); err != nil {
		errs = append(errs, fmt.Errorf("fs_type = %q: %w", c.FsType, err))
	} else if sz.base > 0 && sz.base < fs.MinSize() {
		errs = append(errs, fmt.Errorf("base_image_size = %q: %s needs at least %s", c.BaseImageSize, fs.Type(), units.BytesSize(float64(fs.MinSize()))))
	}
	if c.PoolName != "" && (c.LoopbackDataSize != "" || c.LoopbackMetadataSize != "") {
		errs = append(errs, errors.New("loopback_data_size and loopback_metadata_size size the snapshotter's own pool; they cannot go with pool_name"))
	}
	if c.PoolName != "" && c.autoextend() {
		errs = append(errs, errors.New("loopback_autoextend_* and loopback_*_size_max grow the snapshotter's own pool; they cannot go with pool_name"))
	}
	if t := c.LoopbackAutoextendThreshold; t < 0 || t > 99 {
		errs = append(errs, fmt.Errorf("loopback_autoextend_threshold = %d: want a percentage from 1 to 99", t))
	}
	if p := c.LoopbackAutoextendPercent; p < 0 || p > thinpool.MaxAutoGrowStep {
		errs = append(errs, fmt.Errorf("loopback_autoextend_percent = %d: want a percentage from 1 to %d", p, thinpool.MaxAutoGrowStep))
	}
	if strings.ContainsAny(c.PoolName, "/\x00") {
		errs = append(errs, fmt.Errorf("pool_name = %q: a device-mapper name, without /dev/mapper/", c.PoolName))
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrInvalidConfig, errors.Join(errs...))
}

// configKeys are the config's names for the layer store's fields.
var configKeys = map[string]string{
	"BaseSize":   "base_image_size",
	"Filesystem": "fs_type",
	"MkfsArgs":   "fs_options",
}

// configError is a layer store's FieldError told with the config key.
type configError struct {
	key string
	fe  *layerstore.FieldError
}

func (e *configError) Error() string {
	return fmt.Sprintf("invalid config: %s = %q: %v", e.key, e.fe.Value, e.fe.Err)
}

func (e *configError) Unwrap() error { return e.fe }

// configErr names the config key of a field the layer store refused.
func configErr(err error) error {
	var fe *layerstore.FieldError
	if errors.As(err, &fe) {
		if key, ok := configKeys[fe.Field]; ok {
			return &configError{key: key, fe: fe}
		}
	}
	return err
}
