package graphdriver

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/docker/go-units"

	"github.com/dmthin/dmthin/thinpool"
)

// Status describes the driver and its pool as key/value pairs, in the order
// and mostly with the keys of Docker's devicemapper driver ("docker info").
// Sizes are in binary units (GiB, MiB).
func (d *Driver) Status() [][2]string {
	done, err := d.enter()
	if err != nil {
		return [][2]string{{"Error", err.Error()}}
	}
	defer done()
	size := func(n int64) string { return units.BytesSize(float64(n)) }
	yesNo := strconv.FormatBool
	out := [][2]string{
		{"Pool Name", d.pool.Name()},
		{"Pool Blocksize", size(d.pool.BlockSize())},
		{"Base Device Size", size(d.baseSize)},
		{"Backing Filesystem", d.cfg.Filesystem},
		{"Udev", "not used: dmthin makes its own device nodes"},
	}
	s, err := d.pool.Status(context.Background())
	if err != nil {
		return append(out, [2]string{"Error", err.Error()})
	}
	switch {
	case s.External:
		out = append(out, [2]string{"Pool Device", "external (dm.thinpooldev), left as it is by Cleanup"})
	case s.DataFile != "":
		out = append(out, [2]string{"Data loop file", s.DataFile}, [2]string{"Metadata loop file", s.MetadataFile})
	default:
		out = append(out, [2]string{"Data file", s.DataDevice}, [2]string{"Metadata file", s.MetadataDevice})
	}
	layers, pending, err := d.layerCount()
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
	)
}

// PoolStatus is the thin pool's status in numbers (bytes of data and
// metadata used and total, mode, deferred deletions...), for engines that
// export metrics; Status gives the same as text.
func (d *Driver) PoolStatus(ctx context.Context) (thinpool.Status, error) {
	done, err := d.enter()
	if err != nil {
		return thinpool.Status{}, err
	}
	defer done()
	return d.pool.Status(ctx)
}

// layerCount counts the layers, and the layer devices whose deletion is
// pending (deferred, or started and not finished).
func (d *Driver) layerCount() (layers, pending int, err error) {
	devs, err := d.pool.List()
	if err != nil {
		return 0, 0, err
	}
	for _, dev := range devs {
		if _, ok := layerID(dev.Name); !ok {
			continue
		}
		if deleting(dev) {
			pending++
		} else {
			layers++
		}
	}
	return layers, pending, nil
}

// GetMetadata describes layer id's device: "DeviceId" (its thin id in the
// pool), "DeviceSize" (bytes), "DeviceName" (its name in the pool) and, when
// active, "DevicePath" (its block node) and "MappedSize" (bytes provisioned
// for it alone or shared).
func (d *Driver) GetMetadata(id string) (map[string]string, error) {
	done, err := d.enter()
	if err != nil {
		return nil, err
	}
	defer done()
	if err := ValidateID(id); err != nil {
		return nil, err
	}
	dev, err := d.pool.Get(deviceName(id))
	if err != nil || deleting(dev) {
		if err == nil || isNotFound(err) {
			return nil, fmt.Errorf("%w: %q", ErrNotFound, id)
		}
		return nil, fmt.Errorf("graphdriver: metadata of %q: %w", id, err)
	}
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

func isNotFound(err error) bool { return err != nil && errors.Is(err, thinpool.ErrNotFound) }
