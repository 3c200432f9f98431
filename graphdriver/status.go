package graphdriver

import (
	"context"
	"fmt"
	"strconv"

	"github.com/docker/go-units"

	"github.com/dmthin/dmthin/thinpool"
)

// Status describes the driver and its pool as key/value pairs, in the order
// and mostly with the keys of Docker's devicemapper driver ("docker info").
// Sizes are in binary units (GiB, MiB).
func (d *Driver) Status() [][2]string {
	s, err := d.PoolStatus(context.Background())
	if err != nil {
		return [][2]string{{"Error", err.Error()}}
	}
	pool := d.store.Pool()
	size := func(n int64) string { return units.BytesSize(float64(n)) }
	yesNo := strconv.FormatBool
	out := [][2]string{
		{"Pool Name", pool.Name()},
		{"Pool Blocksize", size(pool.BlockSize())},
		{"Base Device Size", size(d.store.BaseSize())},
		{"Backing Filesystem", d.cfg.Filesystem},
		{"Udev", "not used: dmthin makes its own device nodes"},
	}
	switch {
	case s.External:
		out = append(out, [2]string{"Pool Device", "external (dm.thinpooldev), left as it is by Cleanup"})
	case d.cfg.Device != "":
		out = append(out, [2]string{"Device", d.cfg.Device + " (given whole, " + d.cfg.deviceOption() + ")"},
			[2]string{"Data file", s.DataDevice}, [2]string{"Metadata file", s.MetadataDevice})
	case s.DataFile != "":
		out = append(out, [2]string{"Data loop file", s.DataFile}, [2]string{"Metadata loop file", s.MetadataFile})
	default:
		out = append(out, [2]string{"Data file", s.DataDevice}, [2]string{"Metadata file", s.MetadataDevice})
	}
	layers, pending, err := d.store.Count()
	if err != nil {
		out = append(out, [2]string{"Error", err.Error()})
	}
	return append(out,
		[2]string{"Data Space Used", size(s.DataUsed)},
		[2]string{"Data Space Total", size(s.DataTotal)},
		[2]string{"Data Space Available", size(s.DataAvailable)},
		[2]string{"Metadata Space Used", size(s.MetadataUsed)},
		[2]string{"Metadata Space Total", size(s.MetadataTotal)},
		[2]string{"Metadata Space Available", size(s.MetadataAvailable)},
		[2]string{"Thin Pool Minimum Free Space", fmt.Sprintf("%s (%d%%)", size(s.DataTotal*int64(s.MinFreeSpacePercent)/100), s.MinFreeSpacePercent)},
		[2]string{"Pool Mode", s.Mode.String()},
		[2]string{"Pool Needs Check", yesNo(s.NeedsCheck)},
		[2]string{"Layers", strconv.Itoa(layers)},
		[2]string{"Deferred Removal Enabled", yesNo(d.cfg.DeferredRemoval)},
		[2]string{"Deferred Deletion Enabled", yesNo(d.cfg.DeferredDeletion)},
		[2]string{"Deferred Deleted Device Count", strconv.Itoa(pending)},
		[2]string{"Discard On Removal", yesNo(d.cfg.blkDiscard())},
		[2]string{"Pool No Space Policy", noSpace(s.ErrorIfNoSpace)},
		[2]string{"Pool Auto-extend", d.cfg.autoExtendText()},
		[2]string{"Synchronous Removal", yesNo(d.cfg.SyncRemove)},
	)
}

func noSpace(errorIfNoSpace bool) string {
	if errorIfNoSpace {
		return "error_if_no_space (writes to a full pool fail at once)"
	}
	return "queue_if_no_space (writes to a full pool wait for space)"
}

// autoExtendText describes the auto-extend options, defaults filled in.
func (c *Config) autoExtendText() string {
	if !c.autoExtend() {
		return "off"
	}
	g := c.poolOptions("").AutoGrow
	threshold, step := g.ThresholdPercent, g.StepPercent
	if threshold == 0 {
		threshold = thinpool.DefaultAutoGrowThreshold
	}
	if step == 0 {
		step = thinpool.DefaultAutoGrowStep
	}
	limit := "the filesystem's free space"
	if g.MaxDataSize != 0 {
		limit = units.BytesSize(float64(g.MaxDataSize))
	}
	return fmt.Sprintf("at %d%% used, by %d%%, data up to %s", threshold, step, limit)
}

// PoolStatus is the thin pool's status in numbers (bytes of data and
// metadata used and total, mode, deferred deletions...), for engines that
// export metrics; Status gives the same as text.
func (d *Driver) PoolStatus(ctx context.Context) (thinpool.Status, error) {
	return d.store.PoolStatus(ctx)
}

// GetMetadata describes layer id's device: "DeviceId" (its thin id in the
// pool), "DeviceSize" (bytes), "DeviceName" (its name in the pool) and, when
// active, "DevicePath" (its block node) and "MappedSize" (bytes provisioned
// for it alone or shared).
func (d *Driver) GetMetadata(id string) (map[string]string, error) {
	l, err := d.store.Lookup(id)
	if err != nil {
		return nil, err
	}
	dev := l.Device
	m := map[string]string{
		"DeviceId":   strconv.FormatUint(uint64(dev.ID), 10),
		"DeviceSize": strconv.FormatInt(dev.Size, 10),
		"DeviceName": dev.Name,
	}
	if dev.Active {
		m["DevicePath"] = dev.Path
		m["MappedSize"] = strconv.FormatInt(dev.MappedBytes, 10)
	}
	return m, nil
}
