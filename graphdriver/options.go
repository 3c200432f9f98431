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

	"github.com/dmthin/dmthin/fsys"
	"github.com/dmthin/dmthin/thinpool"
)

// Defaults and limits of the options.
const (
	// DefaultBaseSize is the size of a new base device, as in Docker.
	DefaultBaseSize = 10 * units.GiB
	// MinBaseSize is the smallest base device accepted: ext4 with its
	// journal needs a few megabytes, and a layer needs room for files.
	MinBaseSize = 16 * units.MiB
	// FilesystemExt4 and FilesystemXFS are the filesystems the driver
	// formats (dm.fs); ext4 is the default. XFS needs a base of at least
	// 300 MiB.
	FilesystemExt4 = "ext4"
	FilesystemXFS  = "xfs"

	// The range of dm.loopmetadatasize: a thin pool's metadata needs 2MiB
	// and uses at most 16GiB (thinpool checks the same).
	minLoopMetadataSize = 2 * units.MiB
	maxLoopMetadataSize = 16 * units.GiB
	// maxDMNameLen is DM_NAME_LEN, counting the terminating NUL.
	maxDMNameLen = 128
)

// The values of dm.discards (LVM's words for the same thin-pool features).
const (
	DiscardsPassdown   = "passdown"   // the pool frees blocks and passes discards down (the default)
	DiscardsNoPassdown = "nopassdown" // the pool frees blocks; the data device is not told
	DiscardsIgnore     = "ignore"     // the pool ignores discards
)

// The values of dm.no_space.
const (
	NoSpaceError = "error" // writes to a full pool fail with ENOSPC at once (the default)
	NoSpaceQueue = "queue" // writes wait for space, up to the kernel's no_space_timeout (60 s)
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
	// Filesystem (dm.fs) of the base device: "ext4" (the default) or
	// "xfs".
	Filesystem string
	// MkfsArgs (dm.mkfsarg, repeatable) are extra mkfs.ext4 or mkfs.xfs
	// arguments.
	MkfsArgs []string
	// XFSNoSpaceMaxRetries (dm.xfs_nospace_max_retries, dm.fs=xfs only) is
	// how many times a mounted layer retries a metadata write that failed
	// because the pool is full before its filesystem shuts down: 0 fails
	// at once, -1 retries forever. nil leaves the kernel's default
	// (forever).
	XFSNoSpaceMaxRetries *int
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

	// The pool table's options. They apply to a pool the driver makes
	// (loopback or dm.datadev); when its pool device exists already, Init
	// reloads the table with them, except dm.discards=ignore, which the
	// kernel cannot turn on or off on a live pool (Cleanup removes the
	// pool; the next Init can). With dm.thinpooldev they are refused: that
	// pool's table is its maker's (LVM: lvchange --zero, --discards,
	// --errorwhenfull).

	// LowWaterMark (dm.low_water_mark, a size): the pool raises an event
	// when its free data space drops below it. 0 means 1% of the data
	// space; with auto-extend it is derived from the threshold.
	LowWaterMark int64
	// BlockZeroing (dm.block_zeroing=true|false): zero each data block
	// when first provisioned, so a new layer never reads what a deleted
	// one left. nil means the default: off for the pools the driver makes (see blockZeroing).
	BlockZeroing *bool
	// Discards (dm.discards): DiscardsPassdown, DiscardsNoPassdown or
	// DiscardsIgnore; "" means passdown.
	Discards string
	// NoSpace (dm.no_space): what writes do when the pool is full,
	// NoSpaceError or NoSpaceQueue; "" means error.
	NoSpace string

	// Auto-extend of the loopback pool, with Docker's names where they
	// mean the same (Docker passed them to LVM): setting any of these four
	// turns it on. The pool grows its data file (and its metadata file)
	// by AutoExtendPercent of its size when AutoExtendThreshold percent of
	// it is in use, up to LoopDataSizeMax (LoopMetadataSizeMax), and never
	// past the free space of the filesystem holding it; each growth is
	// logged. While it can grow, writes that find it full wait for the
	// growth; at its maximum they fail with ENOSPC (see thinpool.AutoGrow).

	// AutoExtendThreshold (dm.thinp_autoextend_threshold, e.g. "80" or
	// "80%"): percent of space in use that triggers growth, 1 to 99;
	// 0 means 80.
	AutoExtendThreshold int
	// AutoExtendPercent (dm.thinp_autoextend_percent): growth step in
	// percent of the current size, 1 to 1000; 0 means 20.
	AutoExtendPercent int
	// LoopDataSizeMax (dm.loopdatasize_max): the data file never grows
	// past it; 0 means only the filesystem's free space limits it.
	LoopDataSizeMax int64
	// LoopMetadataSizeMax (dm.loopmetadatasize_max): the metadata file
	// never grows past it; 0 means the most a pool can use (16320MiB).
	LoopMetadataSizeMax int64
	// SyncRemove (dm.sync_remove): Remove deletes the layer's device
	// (discard included) before it returns, for callers that need the
	// space back at once. By default (false) Remove returns as soon as the
	// removal is durable and the id free for a new Create; the device is
	// discarded and deleted in the background, and a crash leaves it for
	// the next Init to delete. The option is named for the non-default
	// behaviour so that the zero Config is the default one.
	SyncRemove bool
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
	"dm.libdm_log_level":              "dmthin does not use libdevmapper",
	"dm.override_udev_sync_check":     "dmthin does not use udev: it makes its own device nodes",
	"dm.use_deferred_device_removal":  "did you mean dm.use_deferred_removal?",
	"dm.use_deferred_device_deletion": "did you mean dm.use_deferred_deletion?",
	"dm.async_remove":                 "removal is asynchronous by default; dm.sync_remove=true makes Remove wait for the device's deletion",
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
	// percent takes "80" or "80%", as Docker did.
	percent := func(dst *int) error {
		n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(val), "%"))
		if err != nil {
			return bad(errors.New("want a percentage such as 80 or 80%"))
		}
		if n <= 0 {
			return bad(errors.New("must be positive"))
		}
		*dst = n
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
	case "dm.xfs_nospace_max_retries":
		n, err := strconv.Atoi(strings.TrimSpace(val))
		if err != nil {
			return bad(errors.New("want a number of retries, 0 for none or -1 for no limit"))
		}
		c.XFSNoSpaceMaxRetries = &n
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
	case "dm.low_water_mark":
		return size(&c.LowWaterMark)
	case "dm.block_zeroing":
		var b bool
		if err := boolean(&b); err != nil {
			return err
		}
		c.BlockZeroing = &b
		return nil
	case "dm.discards":
		switch v := strings.ToLower(strings.TrimSpace(val)); v {
		case DiscardsPassdown, DiscardsNoPassdown, DiscardsIgnore:
			c.Discards = v
			return nil
		}
		return bad(fmt.Errorf("want %s, %s or %s", DiscardsPassdown, DiscardsNoPassdown, DiscardsIgnore))
	case "dm.no_space":
		switch v := strings.ToLower(strings.TrimSpace(val)); v {
		case NoSpaceError, NoSpaceQueue:
			c.NoSpace = v
			return nil
		}
		return bad(fmt.Errorf("want %s or %s", NoSpaceError, NoSpaceQueue))
	case "dm.thinp_autoextend_threshold":
		return percent(&c.AutoExtendThreshold)
	case "dm.thinp_autoextend_percent":
		return percent(&c.AutoExtendPercent)
	case "dm.loopdatasize_max":
		return size(&c.LoopDataSizeMax)
	case "dm.loopmetadatasize_max":
		return size(&c.LoopMetadataSizeMax)
	case "dm.sync_remove":
		return boolean(&c.SyncRemove)
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
	fs, err := fsys.New(c.Filesystem, fsys.Options{})
	if err != nil {
		bad("dm.fs=%s: %w", c.Filesystem, err)
	} else {
		if err := fs.ValidateMkfsArgs(c.MkfsArgs); err != nil {
			bad("dm.mkfsarg: %w", err)
		}
		if c.BaseSize >= MinBaseSize && c.BaseSize < fs.MinSize() { // below MinBaseSize: reported above
			bad("dm.basesize %s is below the %s that dm.fs=%s needs", human(c.BaseSize), human(fs.MinSize()), fs.Type())
		}
		for _, o := range c.MountOptions {
			if err := checkMountOption(fs.Type(), o); err != nil {
				bad("dm.mountopt %q: %w", o, err)
			}
		}
	}
	if r := c.XFSNoSpaceMaxRetries; r != nil {
		if err == nil && fs.Type() != FilesystemXFS {
			bad("dm.xfs_nospace_max_retries applies to dm.fs=xfs only")
		} else if *r < -1 {
			bad("dm.xfs_nospace_max_retries=%d: want 0 or more, or -1 for no limit", *r)
		}
	}
	if p := c.MinFreeSpacePercent; p != nil && (*p < 0 || *p > 99) {
		bad("dm.min_free_space %d%%: want 0%% to 99%%", *p)
	}
	if c.DeferredDeletion && !c.DeferredRemoval {
		bad("dm.use_deferred_deletion=true needs dm.use_deferred_removal=true")
	}
	errs = append(errs, c.validatePool()...)
	return errors.Join(errs...)
}

// validatePool checks the pool table and auto-extend options.
func (c *Config) validatePool() []error {
	var errs []error
	bad := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidOptions}, a...)...))
	}
	human := func(n int64) string { return units.BytesSize(float64(n)) }
	if c.LowWaterMark < 0 {
		bad("dm.low_water_mark %d: must be positive", c.LowWaterMark)
	}
	switch c.Discards {
	case "", DiscardsPassdown, DiscardsNoPassdown, DiscardsIgnore:
	default:
		bad("dm.discards=%s: want %s, %s or %s", c.Discards, DiscardsPassdown, DiscardsNoPassdown, DiscardsIgnore)
	}
	switch c.NoSpace {
	case "", NoSpaceError, NoSpaceQueue:
	default:
		bad("dm.no_space=%s: want %s or %s", c.NoSpace, NoSpaceError, NoSpaceQueue)
	}
	if c.external() {
		for _, o := range []struct {
			name, lvm string
			set       bool
		}{
			{"dm.low_water_mark", "", c.LowWaterMark != 0},
			{"dm.block_zeroing", " (LVM: lvchange --zero)", c.BlockZeroing != nil},
			{"dm.discards", " (LVM: lvchange --discards)", c.Discards != ""},
			{"dm.no_space", " (LVM: lvchange --errorwhenfull)", c.NoSpace != ""},
		} {
			if o.set {
				bad("%s cannot be set with dm.thinpooldev: the pool's table is its maker's to change%s", o.name, o.lvm)
			}
		}
	}
	if !c.autoExtend() {
		return errs
	}
	switch {
	case c.external():
		bad("dm.thinp_autoextend_* and dm.loop*size_max grow the loopback pool; with dm.thinpooldev grow the pool where it was made (LVM: thin_pool_autoextend_threshold)")
	case !c.loopback():
		bad("dm.thinp_autoextend_* and dm.loop*size_max grow the loopback pool; with dm.datadev grow the devices, then restart")
	}
	if t := c.AutoExtendThreshold; t < 0 || t > 99 {
		bad("dm.thinp_autoextend_threshold %d%%: want 1%% to 99%%", t)
	}
	if p := c.AutoExtendPercent; p < 0 || p > thinpool.MaxAutoGrowStep {
		bad("dm.thinp_autoextend_percent %d%%: want 1%% to %d%%", p, thinpool.MaxAutoGrowStep)
	}
	data := c.LoopDataSize
	if data == 0 {
		data = thinpool.DefaultLoopDataSize
	}
	if m := c.LoopDataSizeMax; m < 0 {
		bad("dm.loopdatasize_max %d: must be positive", m)
	} else if m != 0 && m < data {
		bad("dm.loopdatasize_max %s is below dm.loopdatasize %s", human(m), human(data))
	}
	meta := c.LoopMetadataSize
	if meta == 0 {
		meta = thinpool.DefaultLoopMetadataSize
	}
	if m := c.LoopMetadataSizeMax; m < 0 || m > thinpool.MaxMetadataSize {
		bad("dm.loopmetadatasize_max %s: want at most %s (what a thin pool can use)", human(m), human(thinpool.MaxMetadataSize))
	} else if m != 0 && m < meta {
		bad("dm.loopmetadatasize_max %s is below dm.loopmetadatasize %s", human(m), human(meta))
	}
	if c.LowWaterMark != 0 {
		bad("dm.low_water_mark cannot be set with dm.thinp_autoextend_*: the threshold sets the low-water mark")
	}
	return errs
}

// autoExtend reports whether an auto-extend option is set.
func (c *Config) autoExtend() bool {
	return c.AutoExtendThreshold != 0 || c.AutoExtendPercent != 0 || c.LoopDataSizeMax != 0 || c.LoopMetadataSizeMax != 0
}

// blockZeroing resolves dm.block_zeroing's default: a pool the driver
// makes (loopback files, or dm.datadev and dm.metadatadev) does not zero
// its newly provisioned blocks, as Docker's devicemapper driver never did
// (and as its direct-lvm setup asks of LVM, with --zero n). An external
// pool (dm.thinpooldev) keeps the table its maker gave it.
//
// Zeroing makes the pool write a whole block (64K by default) of zeros
// before the first partial write to it: applying a layer wrote 1.6x the
// bytes to the data device, and took 1.1x to 1.2x the time in two of
// three VM boots (hack/bench-archive -phases). It is not needed for layers: ext4 never reads a block it has
// not written (a hole or an unwritten extent reads as zeros from the
// filesystem's own maps, not from the disk), so what a deleted layer left
// in a block is not visible through any file of the layer that gets the
// block next. The caveat: it is visible to whoever reads the thin device
// itself (a process with the block device, or a filesystem told to trust
// uninitialised blocks, e.g. mkfs.ext4 -E lazy_itable_init=1 mounted with
// noinit_itable). Discarding a layer's blocks when it is removed
// (dm.blkdiscard, on by default for loopback pools) gives them back to the
// loopback file as holes, which read as zeros again.
func (c *Config) blockZeroing() bool {
	if c.BlockZeroing != nil {
		return *c.BlockZeroing
	}
	return false
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
	o := thinpool.Options{
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
	if c.external() {
		return o // its table is not ours
	}
	o.LowWaterMark = c.LowWaterMark
	o.SkipBlockZeroing = !c.blockZeroing()
	o.IgnoreDiscard = c.Discards == DiscardsIgnore
	o.NoDiscardPassdown = c.Discards == DiscardsNoPassdown
	o.QueueIfNoSpace = c.NoSpace == NoSpaceQueue
	if c.autoExtend() {
		o.AutoGrow = &thinpool.AutoGrow{
			ThresholdPercent: c.AutoExtendThreshold,
			StepPercent:      c.AutoExtendPercent,
			MaxDataSize:      c.LoopDataSizeMax,
			MaxMetadataSize:  c.LoopMetadataSizeMax,
		}
	}
	return o
}
