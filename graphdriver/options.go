package graphdriver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/docker/go-units"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/ext4"
	"github.com/dmthin/dmthin/thinpool"
)

// Defaults and limits of the options.
const (
	// DefaultBaseSize is the size of a new base device, as in Docker.
	DefaultBaseSize = 10 * units.GiB
	// MinBaseSize is the smallest base device accepted: ext4 with its
	// journal needs a few megabytes, and a layer needs room for files.
	MinBaseSize = 16 * units.MiB
	// FilesystemExt4 is the one filesystem the driver formats.
	FilesystemExt4 = "ext4"

	// The range of dm.loopmetadatasize: a thin pool's metadata needs 2MiB
	// and uses at most 16GiB (thinpool checks the same).
	minLoopMetadataSize = 2 * units.MiB
	maxLoopMetadataSize = 16 * units.GiB
	// maxDMNameLen is DM_NAME_LEN, counting the terminating NUL.
	maxDMNameLen = 128
)

// Config is the driver's configuration. ParseOptions fills it from Docker's
// dm.* strings; DefaultConfig is the starting point for building one in Go.
// A zero number means "the default" (see each field).
type Config struct {
	// BaseSize (dm.basesize) is the base device's size in bytes, a
	// multiple of 512. 0 means DefaultBaseSize for a new base and the
	// existing size otherwise. Bigger than the existing base grows it; new
	// layers get the new size. Smaller is an error.
	BaseSize int64
	// LoopDataSize and LoopMetadataSize (dm.loopdatasize,
	// dm.loopmetadatasize) size the loopback pool's sparse files; 0 means
	// thinpool's defaults (100G, 2G).
	LoopDataSize, LoopMetadataSize int64
	// DataDevice and MetadataDevice (dm.datadev, dm.metadatadev): build the
	// pool over these block devices instead of loopback files.
	DataDevice, MetadataDevice string
	// Device (dm.directlvm_device, or its clearer alias dm.directdev): give
	// this block device to dmthin whole. dmthin writes its own label at
	// the start, lays out a metadata area (1%) and a data area (the rest),
	// recognises the device by the label at the next start, and grows the
	// pool when the device grows. No LVM is involved: Docker's name is
	// kept so that an existing daemon configuration works unchanged.
	Device string
	// ForceDevices (dm.force_devices, or dm.directlvm_device_force): build
	// a new pool over DataDevice and MetadataDevice (or Device) even when
	// they hold a filesystem, a partition table or another pool's
	// signature, whose contents are then lost. Without it such a device is
	// refused before a byte of it is written.
	ForceDevices bool
	// ThinPoolDevice (dm.thinpooldev): use this existing thin-pool
	// device-mapper device (a name, or /dev/mapper/NAME). Cleanup leaves it
	// as it was.
	ThinPoolDevice string
	// Filesystem (dm.fs) of the base device: "ext4" (the default).
	Filesystem string
	// MkfsArgs (dm.mkfsarg, repeatable) are extra mkfs.ext4 arguments.
	MkfsArgs []string
	// MountOptions (dm.mountopt, repeatable, comma-separated) are applied
	// to every layer mount: flags such as noatime, nodev or ro, and
	// filesystem options such as discard or data=writeback.
	MountOptions []string
	// BlockSize (dm.blocksize) is the pool's data block size in bytes; 0
	// means 64K.
	BlockSize int64
	// BlkDiscard (dm.blkdiscard): discard a layer's blocks before deleting
	// it, so a loopback file gives the space back. nil means on for a
	// loopback pool and off otherwise, as in Docker.
	BlkDiscard *bool
	// MinFreeSpacePercent (dm.min_free_space, e.g. "10%") of data and
	// metadata space that must stay free for a layer to be created. nil
	// means 10; 0 turns the check off.
	MinFreeSpacePercent *int
	// DeferredRemoval (dm.use_deferred_removal): when a layer's device is
	// still open after its last Put or at Remove, let the kernel remove it
	// at its last close instead of failing.
	DeferredRemoval bool
	// deviceKey is the option Device was set with, for messages.
	deviceKey string
	// DeferredDeletion (dm.use_deferred_deletion, needs DeferredRemoval):
	// when Remove finds the device busy, mark it and delete it once closed
	// (retried in the background and at the next Init) instead of failing.
	DeferredDeletion bool
}

// DefaultConfig returns the configuration Init uses when given no options.
func DefaultConfig() Config {
	return Config{Filesystem: FilesystemExt4}
}

// unsupported are Docker options that dmthin knows but does not implement,
// with the reason given to whoever sets one.
var unsupported = map[string]string{
	"dm.thinp_percent":                "dmthin does not manage LVM",
	"dm.thinp_metapercent":            "dmthin does not manage LVM",
	"dm.thinp_autoextend_percent":     "dmthin does not manage LVM",
	"dm.thinp_autoextend_threshold":   "dmthin does not manage LVM",
	"dm.libdm_log_level":              "dmthin does not use libdevmapper",
	"dm.xfs_nospace_max_retries":      "dmthin formats ext4 only",
	"dm.override_udev_sync_check":     "dmthin does not use udev: it makes its own device nodes",
	"dm.use_deferred_device_removal":  "did you mean dm.use_deferred_removal?",
	"dm.use_deferred_device_deletion": "did you mean dm.use_deferred_deletion?",
}

// ParseOptions parses Docker-style "dm.key=value" strings into a Config,
// starting from DefaultConfig. Keys are case-insensitive; a repeated key
// overrides the earlier one, except dm.mkfsarg and dm.mountopt, which add
// up. Every unknown option and bad value is reported, each error naming its
// option and wrapping ErrInvalidOptions; the result is then validated.
func ParseOptions(options []string) (Config, error) {
	c := DefaultConfig()
	var errs []error
	for _, opt := range options {
		if err := c.set(opt); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return c, errors.Join(errs...)
	}
	return c, c.Validate()
}

func (c *Config) set(opt string) error {
	key, val, ok := strings.Cut(opt, "=")
	key = strings.ToLower(strings.TrimSpace(key))
	if !ok {
		return fmt.Errorf("%w: %q: want key=value", ErrInvalidOptions, opt)
	}
	bad := func(err error) error { return fmt.Errorf("%w: %s=%s: %w", ErrInvalidOptions, key, val, err) }
	size := func(dst *int64) error {
		n, err := units.RAMInBytes(val)
		if err != nil {
			return bad(err)
		}
		if n <= 0 {
			return bad(errors.New("size must be positive"))
		}
		*dst = n
		return nil
	}
	boolean := func(dst *bool) error {
		b, err := strconv.ParseBool(val)
		if err != nil {
			return bad(errors.New("want true or false"))
		}
		*dst = b
		return nil
	}
	path := func(dst *string) error {
		if val == "" {
			return bad(errors.New("empty"))
		}
		*dst = val
		return nil
	}
	switch key {
	case "dm.basesize":
		return size(&c.BaseSize)
	case "dm.loopdatasize":
		return size(&c.LoopDataSize)
	case "dm.loopmetadatasize":
		return size(&c.LoopMetadataSize)
	case "dm.blocksize":
		return size(&c.BlockSize)
	case "dm.datadev":
		return path(&c.DataDevice)
	case "dm.metadatadev":
		return path(&c.MetadataDevice)
	case "dm.force_devices", "dm.directlvm_device_force":
		return boolean(&c.ForceDevices)
	case "dm.directlvm_device", "dm.directdev":
		c.deviceKey = key
		return path(&c.Device)
	case "dm.thinpooldev":
		if err := path(&c.ThinPoolDevice); err != nil {
			return err
		}
		c.ThinPoolDevice = strings.TrimPrefix(c.ThinPoolDevice, "/dev/mapper/")
		return nil
	case "dm.fs":
		c.Filesystem = strings.ToLower(val)
		return nil
	case "dm.mkfsarg":
		if val == "" {
			return bad(errors.New("empty"))
		}
		c.MkfsArgs = append(c.MkfsArgs, val)
		return nil
	case "dm.mountopt":
		for _, o := range strings.Split(val, ",") {
			if o = strings.TrimSpace(o); o == "" {
				return bad(errors.New("empty mount option"))
			}
			c.MountOptions = append(c.MountOptions, o)
		}
		return nil
	case "dm.blkdiscard":
		var b bool
		if err := boolean(&b); err != nil {
			return err
		}
		c.BlkDiscard = &b
		return nil
	case "dm.min_free_space":
		s := strings.TrimSpace(val)
		s, pct := strings.CutSuffix(s, "%")
		n, err := strconv.Atoi(s)
		if err != nil || !pct {
			return bad(errors.New("want a percentage such as 10%"))
		}
		c.MinFreeSpacePercent = &n
		return nil
	case "dm.use_deferred_removal":
		return boolean(&c.DeferredRemoval)
	case "dm.use_deferred_deletion":
		return boolean(&c.DeferredDeletion)
	}
	if why, ok := unsupported[key]; ok {
		return fmt.Errorf("%w: %s is not supported: %s", ErrInvalidOptions, key, why)
	}
	return fmt.Errorf("%w: unknown option %q", ErrInvalidOptions, key)
}

// Validate reports every problem with the configuration at once, each
// wrapping ErrInvalidOptions and naming the dm.* option concerned.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidOptions}, a...)...))
	}
	human := func(n int64) string { return units.BytesSize(float64(n)) }
	if c.BaseSize < 0 || (c.BaseSize > 0 && c.BaseSize < MinBaseSize) {
		bad("dm.basesize %s is below the minimum %s", human(c.BaseSize), human(MinBaseSize))
	} else if c.BaseSize%512 != 0 {
		bad("dm.basesize %d is not a multiple of 512 bytes", c.BaseSize)
	}
	if c.LoopDataSize < 0 {
		bad("dm.loopdatasize %d: must be positive", c.LoopDataSize)
	}
	if c.LoopMetadataSize < 0 {
		bad("dm.loopmetadatasize %d: must be positive", c.LoopMetadataSize)
	} else if c.LoopMetadataSize != 0 && (c.LoopMetadataSize < minLoopMetadataSize || c.LoopMetadataSize > maxLoopMetadataSize) {
		bad("dm.loopmetadatasize %s: want %s to %s (what a thin pool's metadata can use)",
			human(c.LoopMetadataSize), human(minLoopMetadataSize), human(maxLoopMetadataSize))
	}
	for _, d := range c.devicePaths() {
		if d.path != "" && !filepath.IsAbs(d.path) {
			bad("%s=%s: want the absolute path of a block device", d.opt, d.path)
		}
	}
	if n := c.ThinPoolDevice; n != "" && (len(n) >= maxDMNameLen || strings.Contains(n, "/") || n == "." || n == "..") {
		bad("dm.thinpooldev=%s: want the name of a device-mapper device (or /dev/mapper/NAME)", n)
	}
	devices := c.DataDevice != "" || c.MetadataDevice != ""
	if devices && (c.DataDevice == "" || c.MetadataDevice == "") {
		bad("dm.datadev and dm.metadatadev go together (got %q and %q)", c.DataDevice, c.MetadataDevice)
	}
	if c.ThinPoolDevice != "" && devices {
		bad("dm.thinpooldev excludes dm.datadev and dm.metadatadev")
	}
	if c.Device != "" && (c.ThinPoolDevice != "" || devices) {
		bad("%s excludes dm.thinpooldev, dm.datadev and dm.metadatadev", c.deviceOption())
	}
	if !c.loopback() && (c.LoopDataSize != 0 || c.LoopMetadataSize != 0) {
		bad("dm.loopdatasize and dm.loopmetadatasize only apply to the loopback pool, not with dm.thinpooldev, dm.datadev or %s", c.deviceOption())
	}
	if c.ThinPoolDevice != "" && c.BlockSize != 0 {
		bad("dm.blocksize cannot be set for an existing pool (dm.thinpooldev)")
	}
	if c.BlockSize != 0 && (c.BlockSize < thinpool.MinBlockSize || c.BlockSize > thinpool.MaxBlockSize || c.BlockSize%thinpool.MinBlockSize != 0) {
		bad("dm.blocksize %s: want a multiple of 64K between 64K and 1G", human(c.BlockSize))
	}
	switch c.Filesystem {
	case "", FilesystemExt4:
	case "xfs":
		bad("dm.fs=xfs is not supported; dmthin formats ext4")
	default:
		bad("dm.fs=%s: unknown filesystem, want ext4", c.Filesystem)
	}
	if err := (ext4.FormatOptions{ExtraArgs: c.MkfsArgs}).Validate(); err != nil {
		bad("dm.mkfsarg: %w", err)
	}
	for _, o := range c.MountOptions {
		if err := checkMountOption(o); err != nil {
			bad("dm.mountopt %q: %w", o, err)
		}
	}
	if p := c.MinFreeSpacePercent; p != nil && (*p < 0 || *p > 99) {
		bad("dm.min_free_space %d%%: want 0%% to 99%%", *p)
	}
	if c.DeferredDeletion && !c.DeferredRemoval {
		bad("dm.use_deferred_deletion=true needs dm.use_deferred_removal=true")
	}
	return errors.Join(errs...)
}

// devicePaths are the block device options with their names.
func (c *Config) devicePaths() []struct{ opt, path string } {
	return []struct{ opt, path string }{{"dm.datadev", c.DataDevice}, {"dm.metadatadev", c.MetadataDevice}, {c.deviceOption(), c.Device}}
}

// deviceOption is the name Device was given with (Docker's by default).
func (c *Config) deviceOption() string {
	if c.deviceKey != "" {
		return c.deviceKey
	}
	return "dm.directlvm_device"
}

// checkDevices checks, at Init, that dm.datadev, dm.metadatadev and
// dm.directlvm_device are block devices. Validate cannot: it looks at the
// configuration only.
func (c *Config) checkDevices() error {
	var errs []error
	for _, d := range c.devicePaths() {
		if d.path == "" {
			continue
		}
		fi, err := os.Stat(d.path)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%w: %s=%s: %w", ErrInvalidOptions, d.opt, d.path, err))
		case fi.Mode()&os.ModeDevice == 0 || fi.Mode()&os.ModeCharDevice != 0:
			errs = append(errs, fmt.Errorf("%w: %s=%s: not a block device", ErrInvalidOptions, d.opt, d.path))
		}
	}
	return errors.Join(errs...)
}

// thinPoolDevError names dm.thinpooldev in the error of opening a pool
// device that does not exist.
func (c *Config) thinPoolDevError(err error) error {
	if c.external() && errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("%w: dm.thinpooldev=%s: no such device-mapper device: %w", ErrInvalidOptions, c.ThinPoolDevice, err)
	}
	return err
}

// external reports whether the pool is someone else's device.
func (c *Config) external() bool { return c.ThinPoolDevice != "" }

// loopback reports whether the pool lives in sparse files under home.
func (c *Config) loopback() bool {
	return c.ThinPoolDevice == "" && c.DataDevice == "" && c.MetadataDevice == "" && c.Device == ""
}

// blkDiscard resolves BlkDiscard's default.
func (c *Config) blkDiscard() bool {
	if c.BlkDiscard != nil {
		return *c.BlkDiscard
	}
	return c.loopback()
}

// poolOptions is the thin pool the configuration asks for.
func (c *Config) poolOptions(home string) thinpool.Options {
	return thinpool.Options{
		Root:                home,
		DataDevice:          c.DataDevice,
		MetadataDevice:      c.MetadataDevice,
		Device:              c.Device,
		ForceDevices:        c.ForceDevices,
		PoolDevice:          c.ThinPoolDevice,
		LoopDataSize:        c.LoopDataSize,
		LoopMetadataSize:    c.LoopMetadataSize,
		BlockSize:           c.BlockSize,
		MinFreeSpacePercent: c.MinFreeSpacePercent,
	}
}
