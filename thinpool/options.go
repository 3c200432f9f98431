package thinpool

import (
	"errors"
	"fmt"
	"io"

	"github.com/docker/go-units"
	"github.com/sirupsen/logrus"
)

// Defaults, as in Docker's devicemapper driver.
const (
	DefaultLoopDataSize     = 100 * units.GiB
	DefaultLoopMetadataSize = 2 * units.GiB
	DefaultBlockSize        = 64 * units.KiB
	DefaultMinFreeSpace     = 10 // percent
	MinBlockSize            = 64 * units.KiB
	MaxBlockSize            = 1 * units.GiB
)

// Options choose and tune the pool. The zero value of every field but Root
// means its default.
type Options struct {
	// Root holds the metadata database, a lock file and, for the loopback
	// pool, the data and metadata files. Required.
	Root string

	// DataDevice and MetadataDevice: build the pool over these block
	// devices (both or neither). The metadata device's first 4 KiB are
	// zeroed when the pool is first created. Both are opened exclusively
	// first (a mounted or otherwise held device is refused), and a new pool
	// refuses devices that hold a filesystem, partition table, LVM, LUKS or
	// thin-pool signature unless ForceDevices is set.
	DataDevice, MetadataDevice string
	// Device: build the pool on this one block device, given whole (see
	// direct.go): dmthin writes its label at the start, carves a metadata
	// and a data area, and grows the data area when the device grows. It
	// is claimed and checked like DataDevice, and a device holding another
	// dmthin pool's label is refused too. Excludes DataDevice,
	// MetadataDevice and PoolDevice.
	Device string
	// ForceDevices: build a new pool over DataDevice and MetadataDevice
	// (or Device) even if they hold a signature (their contents are lost).
	ForceDevices bool
	// PoolDevice: use this existing thin-pool device-mapper device. It is
	// never reloaded, grown or removed, so the options of its table
	// (LowWaterMark, SkipBlockZeroing, IgnoreDiscard, NoDiscardPassdown,
	// QueueIfNoSpace) and AutoGrow are refused with it: they belong to
	// whoever made the pool.
	PoolDevice string

	// LoopDataSize and LoopMetadataSize size the sparse loopback files.
	LoopDataSize, LoopMetadataSize int64

	// BlockSize is the pool's data block size in bytes: a multiple of 64K
	// between 64K and 1G.
	BlockSize int64
	// The options below are the pool table's (see the kernel's
	// thin-provisioning.rst). When the pool device exists already, Open
	// reloads its table if they changed, except IgnoreDiscard, which the
	// kernel cannot change while the pool device exists.

	// LowWaterMark in bytes of free data space: the pool raises an event
	// when free space drops below it. 0 means 1% of the data device,
	// raised to MinFreeSpacePercent of it: that event is how creates learn
	// that the minimum is reached without reading the pool's status each
	// time (with a mark set below the minimum, each create reads it).
	// With AutoGrow it is derived from AutoGrow.ThresholdPercent and must
	// stay 0.
	LowWaterMark int64
	// SkipBlockZeroing: do not zero newly provisioned blocks (faster
	// first writes, but a new device may read stale data of deleted ones).
	SkipBlockZeroing bool
	// IgnoreDiscard: the pool ignores discards (no space is given back
	// when files or devices are deleted); implies no passdown.
	IgnoreDiscard bool
	// NoDiscardPassdown: the pool frees its blocks on a discard but does
	// not pass the discard down to the data device (a loopback file then
	// keeps its allocated space).
	NoDiscardPassdown bool
	// QueueIfNoSpace: queue writes when the pool is full instead of failing
	// them with ENOSPC (the default is to fail). The kernel fails queued
	// writes after its no_space_timeout (60 s by default).
	QueueIfNoSpace bool

	// AutoGrow, when set, makes a loopback pool grow its files while it is
	// open (see AutoGrow). Nil: the files keep their size unless Grow is
	// called.
	AutoGrow *AutoGrow
	// MinFreeSpacePercent of data and metadata space that must stay free
	// for a new device to be created. Nil means 10; 0 disables the check.
	MinFreeSpacePercent *int

	// DeviceDir is where block nodes are made, default /dev/mapper.
	DeviceDir string
	// Logger receives the pool's log lines; nil discards them.
	Logger logrus.FieldLogger `json:"-"`
	// StepHook, when set, is called at each named step of a multi-step
	// change, Open's first layout and growth included ("direct:layout:label",
	// "pool:created", "reload:suspended"...): crash tests kill the process
	// there.
	StepHook func(step string) `json:"-"`
}

func (o *Options) source() string {
	switch {
	case o.PoolDevice != "":
		return "external"
	case o.Device != "":
		return "direct"
	case o.DataDevice != "" || o.MetadataDevice != "":
		return "devices"
	default:
		return "loopback"
	}
}

// Validate reports every problem at once, each wrapping ErrInvalidOptions.
func (o *Options) Validate() error {
	var errs []error
	bad := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidOptions}, a...)...))
	}
	if o.Root == "" {
		bad("Root is required")
	}
	if (o.DataDevice == "") != (o.MetadataDevice == "") {
		bad("DataDevice and MetadataDevice go together (got data %q, metadata %q)", o.DataDevice, o.MetadataDevice)
	}
	if o.PoolDevice != "" && (o.DataDevice != "" || o.MetadataDevice != "") {
		bad("PoolDevice excludes DataDevice and MetadataDevice")
	}
	if o.Device != "" && (o.PoolDevice != "" || o.DataDevice != "" || o.MetadataDevice != "") {
		bad("Device excludes PoolDevice, DataDevice and MetadataDevice")
	}
	if o.source() != "loopback" && (o.LoopDataSize != 0 || o.LoopMetadataSize != 0) {
		bad("loopback sizes make no sense with %s devices", o.source())
	}
	if o.LoopDataSize < 0 {
		bad("LoopDataSize %d is negative", o.LoopDataSize)
	}
	if o.LoopMetadataSize < 0 {
		bad("LoopMetadataSize %d is negative", o.LoopMetadataSize)
	} else if o.LoopMetadataSize != 0 && o.LoopMetadataSize < 2*units.MiB {
		bad("LoopMetadataSize %s is below the 2MiB a pool needs", units.BytesSize(float64(o.LoopMetadataSize)))
	} else if o.LoopMetadataSize > 16*units.GiB {
		bad("LoopMetadataSize %s is above the 16GiB a pool can use", units.BytesSize(float64(o.LoopMetadataSize)))
	}
	if o.BlockSize != 0 && (o.BlockSize < MinBlockSize || o.BlockSize > MaxBlockSize || o.BlockSize%MinBlockSize != 0) {
		bad("BlockSize %d: want a multiple of 64K between 64K and 1G", o.BlockSize)
	}
	if o.LowWaterMark < 0 {
		bad("LowWaterMark %d is negative", o.LowWaterMark)
	}
	if o.source() == "external" {
		for _, f := range []struct {
			name string
			set  bool
		}{
			{"LowWaterMark", o.LowWaterMark != 0}, {"SkipBlockZeroing", o.SkipBlockZeroing},
			{"IgnoreDiscard", o.IgnoreDiscard}, {"NoDiscardPassdown", o.NoDiscardPassdown},
			{"QueueIfNoSpace", o.QueueIfNoSpace}, {"AutoGrow", o.AutoGrow != nil},
		} {
			if f.set {
				bad("%s cannot be set with PoolDevice: the pool's table is its maker's to change", f.name)
			}
		}
	}
	if g := o.AutoGrow; g != nil {
		errs = append(errs, g.validate(o)...)
	}
	if p := o.MinFreeSpacePercent; p != nil && (*p < 0 || *p > 99) {
		bad("MinFreeSpacePercent %d: want 0 to 99", *p)
	}
	return errors.Join(errs...)
}

// withDefaults returns a copy with defaults filled in.
func (o Options) withDefaults() Options {
	if o.source() == "loopback" {
		if o.LoopDataSize == 0 {
			o.LoopDataSize = DefaultLoopDataSize
		}
		if o.LoopMetadataSize == 0 {
			o.LoopMetadataSize = DefaultLoopMetadataSize
		}
	}
	if o.BlockSize == 0 {
		o.BlockSize = DefaultBlockSize
	}
	if o.MinFreeSpacePercent == nil {
		v := DefaultMinFreeSpace
		o.MinFreeSpacePercent = &v
	}
	if o.Logger == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		o.Logger = l
	}
	return o
}
