package thinpool

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/dmthin/dmthin/devmapper"
	"github.com/dmthin/dmthin/loopback"
)

const (
	dataFileName     = "data"
	metadataFileName = "metadata"
)

// useLoopback makes or finds the sparse files and their loop devices, then
// the pool over them.
func (p *Pool) useLoopback(isNew bool, cleanup *[]func() error) error {
	dir := filepath.Join(p.opts.Root, "devicemapper")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("thinpool: %w", err)
	}
	p.dataPath = filepath.Join(dir, dataFileName)
	p.metaPath = filepath.Join(dir, metadataFileName)
	_, statErr := os.Stat(p.metaPath)
	metaIsNew := errors.Is(statErr, os.ErrNotExist)
	if metaIsNew && !isNew {
		return fmt.Errorf("thinpool: %s is missing but the store under %s has a pool: refusing to make an empty one", p.metaPath, p.opts.Root)
	}
	for _, f := range []struct {
		path string
		size int64
	}{{p.dataPath, p.opts.LoopDataSize}, {p.metaPath, p.opts.LoopMetadataSize}} {
		if err := growFileTo(f.path, f.size); err != nil {
			return err
		}
	}
	var err error
	if p.dataLoop, err = findOrAttach(p.dataPath); err != nil {
		return err
	}
	*cleanup = append(*cleanup, p.dataLoop.Close)
	if p.metaLoop, err = findOrAttach(p.metaPath); err != nil {
		return err
	}
	*cleanup = append(*cleanup, p.metaLoop.Close)
	if p.grow != nil {
		if err := p.initGrowState(); err != nil {
			return err
		}
	}
	// Files may have grown since the loop devices were bound.
	for _, l := range []*loopback.Device{p.dataLoop, p.metaLoop} {
		if err := l.SetCapacity(); err != nil {
			return fmt.Errorf("thinpool: %w", err)
		}
	}
	p.name = p.prefix + "-pool"
	return p.ensurePool(loopDev(p.metaLoop), loopDev(p.dataLoop))
}

// growFileTo creates the sparse file or grows it; a larger file is kept.
func growFileTo(path string, size int64) error {
	st, err := os.Stat(path)
	if err == nil && st.Size() >= size {
		return nil
	}
	if err := loopback.CreateSparse(path, size); err != nil {
		return fmt.Errorf("thinpool: %w", err)
	}
	return nil
}

func findOrAttach(path string) (*loopback.Device, error) {
	d, err := loopback.Find(path)
	if err == nil {
		return d, nil
	}
	if !errors.Is(err, loopback.ErrNotFound) {
		return nil, fmt.Errorf("thinpool: find loop device of %s: %w", path, err)
	}
	d, err = loopback.Attach(path, loopback.Options{Autoclear: true})
	if err != nil {
		return nil, fmt.Errorf("thinpool: attach %s: %w", path, err)
	}
	return d, nil
}

func loopDev(l *loopback.Device) devmapper.Dev {
	maj, min := l.Dev()
	return devmapper.Dev{Major: maj, Minor: min}
}

// useDevices builds the pool over given block devices.
func (p *Pool) useDevices(isNew bool) error {
	p.dataPath, p.metaPath = p.opts.DataDevice, p.opts.MetadataDevice
	md, err := devOf(p.metaPath)
	if err != nil {
		return err
	}
	dd, err := devOf(p.dataPath)
	if err != nil {
		return err
	}
	p.name = p.prefix + "-pool"
	exists, err := p.dm.Exists(p.name)
	if err != nil {
		return err
	}
	if exists {
		// The pool device holds both devices already.
		return p.ensurePool(md, dd)
	}
	// Claim both before a byte is written: O_EXCL fails for a mounted
	// filesystem or another holder. The claim lasts until the pool
	// device holds them (the kernel refuses a second exclusive holder,
	// so it has to be let go just before).
	var claimed []*os.File
	release := func() error {
		var errs []error
		for _, f := range claimed {
			errs = append(errs, f.Close())
		}
		claimed = nil
		return errors.Join(errs...)
	}
	defer release()
	for _, path := range []string{p.metaPath, p.dataPath} {
		f, err := claimDevice(path)
		if err != nil {
			return err
		}
		claimed = append(claimed, f)
		if isNew {
			if err := checkBlank(f, p.opts.ForceDevices); err != nil {
				return err
			}
		}
	}
	if isNew {
		// A new pool needs a zeroed metadata superblock, or the kernel
		// would try to open stale metadata.
		if err := zeroHeader(claimed[0], 0); err != nil {
			return err
		}
	}
	if err := release(); err != nil {
		return fmt.Errorf("thinpool: release claim: %w", err)
	}
	return p.ensurePool(md, dd)
}

// useExternal adopts an existing thin-pool device.
func (p *Pool) useExternal(isNew bool) error {
	p.external = true
	p.name = p.opts.PoolDevice
	info, err := p.dm.Info(p.name)
	if err != nil {
		return fmt.Errorf("thinpool: pool device %q: %w", p.name, err)
	}
	tab, err := p.dm.Table(p.name)
	if err != nil {
		return fmt.Errorf("thinpool: pool device %q: %w", p.name, err)
	}
	if len(tab) != 1 {
		return fmt.Errorf("thinpool: %q has %d targets, want one thin-pool", p.name, len(tab))
	}
	params, ok := tab[0].Params.(devmapper.ThinPoolParams)
	if !ok {
		return fmt.Errorf("thinpool: %q is a %s device, not thin-pool", p.name, tab[0].Params.TargetType())
	}
	p.dev = info.Dev
	p.blockSize = params.BlockSize
	st, err := p.poolStatus()
	if err != nil {
		return err
	}
	if isNew && (st.TransactionID != 0 || st.UsedDataBlocks != 0) {
		return fmt.Errorf("%w: %q has transaction id %d and %d data blocks in use", ErrPoolNotOurs, p.name, st.TransactionID, st.UsedDataBlocks)
	}
	return nil
}

// ensurePool creates the pool device over md and dd unless it exists, in
// which case its table must name the same devices; it is reloaded when the
// data device grew or the options ask for another table.
func (p *Pool) ensurePool(md, dd devmapper.Dev) error {
	dataSize, err := devSize(dd)
	if err != nil {
		return err
	}
	info, err := p.dm.Info(p.name)
	if err == nil && info.LiveTable && info.Suspended {
		// A process killed inside a reload: the resume makes the table
		// it loaded live (its data device has that size already).
		p.log.WithField("pool", p.name).Warn("pool left suspended: resuming it")
		if err := p.resume(p.name); err != nil {
			return err
		}
		info, err = p.dm.Info(p.name)
	} else if err == nil && info.InactiveTable {
		// Killed after a reload's load, before its suspend.
		if err := p.dm.ClearInactive(p.name); err != nil {
			return fmt.Errorf("thinpool: clear the inactive table of %q: %w", p.name, err)
		}
	}
	switch {
	case err == nil && info.LiveTable:
		tab, err := p.dm.Table(p.name)
		if err != nil {
			return err
		}
		var cur devmapper.ThinPoolParams
		ok := len(tab) == 1
		if ok {
			cur, ok = tab[0].Params.(devmapper.ThinPoolParams)
		}
		if !ok || cur.Data != dd || cur.Metadata != md {
			return fmt.Errorf("thinpool: existing %q maps %v, not data %s metadata %s", p.name, tab, dd, md)
		}
		p.dev, p.blockSize = info.Dev, cur.BlockSize
		if cur.BlockSize.Bytes() != uint64(p.opts.BlockSize) {
			p.log.WithField("blocksize", cur.BlockSize.Bytes()).Warn("pool exists with another block size; keeping it")
		}
		want := p.poolTable(md, dd, dataSize, cur.BlockSize)
		wantParams := want[0].Params.(devmapper.ThinPoolParams)
		if cur.Features.IgnoreDiscard != wantParams.Features.IgnoreDiscard {
			return fmt.Errorf("%w: IgnoreDiscard=%t, but the pool device %q exists with IgnoreDiscard=%t, which the kernel cannot change while it exists: shut the pool down (Shutdown) first",
				ErrInvalidOptions, p.opts.IgnoreDiscard, p.name, cur.Features.IgnoreDiscard)
		}
		metaGrew, err := p.metadataDeviceGrew(md)
		if err != nil {
			return err
		}
		// The data device grew while we were away (or the metadata
		// device: the pool takes it in at a resume), or the options
		// changed.
		if tab.Length() < want[0].Length || cur != wantParams || metaGrew {
			if err := p.reload(p.name, want); err != nil {
				return fmt.Errorf("thinpool: reload %q: %w", p.name, err)
			}
			p.log.WithFields(map[string]any{"pool": p.name, "from": tab.String(), "to": want.String()}).Info("thin pool table reloaded")
		}
		_, err = p.dm.EnsureNode(p.name)
		return err
	case err == nil:
		// A device with no live table: a crash during our own create.
		if err := p.dm.Remove(p.name, devmapper.RemoveOptions{}); err != nil {
			return fmt.Errorf("thinpool: remove half-made %q: %w", p.name, err)
		}
	case !devmapper.IsNotFound(err):
		return err
	}
	bs := devmapper.Sectors(p.opts.BlockSize / devmapper.SectorSize)
	if stored := p.storedBlockSize(); stored != 0 {
		bs = stored
	}
	want := p.poolTable(md, dd, dataSize, bs)
	info, err = p.dm.Activate(p.name, "", want, false)
	if err != nil {
		return fmt.Errorf("thinpool: create pool %q: %w", p.name, err)
	}
	p.dev = info.Dev
	p.blockSize = bs
	p.made = append(p.made, p.name)
	p.step("pool:created")
	p.log.WithFields(map[string]any{"pool": p.name, "data": dd, "metadata": md}).Info("thin pool created")
	return nil
}

// metadataDeviceGrew reports whether the metadata device md is bigger than
// the metadata the live pool uses (a growth a crash cut short before the
// reload), below the most a pool can use.
func (p *Pool) metadataDeviceGrew(md devmapper.Dev) (bool, error) {
	size, err := devSize(md)
	if err != nil {
		return false, err
	}
	ps, err := p.poolStatus()
	if err != nil {
		return false, err
	}
	if ps.Mode == devmapper.PoolFailed || ps.Mode == devmapper.PoolError {
		return false, nil // recovery reports it
	}
	used := int64(ps.TotalMetadata) * devmapper.MetadataBlockSize
	return used < min(size, MaxMetadataSize)-devmapper.MetadataBlockSize, nil
}

func (p *Pool) storedBlockSize() devmapper.Sectors {
	var v uint64
	_ = p.st.db.View(func(tx txn) error {
		v = u64(tx.Bucket(bucketMeta).Get(keyBlockSize))
		return nil
	})
	return devmapper.Sectors(v / devmapper.SectorSize)
}

// poolTable is the pool's table over md and dd, with block size bs.
func (p *Pool) poolTable(md, dd devmapper.Dev, dataSize int64, bs devmapper.Sectors) devmapper.Table {
	blocks := uint64(dataSize) / bs.Bytes()
	lwm := uint64(p.opts.LowWaterMark) / bs.Bytes()
	switch {
	case p.grow != nil:
		// The event that makes the pool grow.
		lwm = blocks * uint64(100-p.grow.cfg.ThresholdPercent) / 100
	case p.opts.LowWaterMark == 0:
		lwm = blocks / 100
		// The event at the low-water mark is what tells the free-space
		// guard that creates must stop (space.go), so the default mark
		// is at least the minimum. A mark the caller chose, or AutoGrow's,
		// is kept as it is; the guard then reads the pool's status for
		// each create when the mark is below the minimum.
		if m := p.opts.MinFreeSpacePercent; m != nil && *m > 0 {
			lwm = max(lwm, (blocks*uint64(*m)+99)/100)
		}
	}
	length := devmapper.Sectors(uint64(dataSize) / devmapper.SectorSize)
	return devmapper.Table{{
		Start:  0,
		Length: length,
		Params: devmapper.ThinPoolParams{
			Metadata: md, Data: dd, BlockSize: bs, LowWaterMark: lwm,
			Features: p.features(),
		},
	}}
}

// features are the pool table's feature arguments: the options', with
// the no-space policy AutoGrow needs while the pool can grow.
func (p *Pool) features() devmapper.ThinPoolFeatures {
	queue := p.opts.QueueIfNoSpace || p.grow != nil && p.grow.queue
	return devmapper.ThinPoolFeatures{
		SkipBlockZeroing:  p.opts.SkipBlockZeroing,
		IgnoreDiscard:     p.opts.IgnoreDiscard,
		NoDiscardPassdown: p.opts.NoDiscardPassdown,
		ErrorIfNoSpace:    !queue,
	}
}

// devSize returns the size in bytes of the block device dev.
func devSize(dev devmapper.Dev) (int64, error) {
	path := fmt.Sprintf("/sys/dev/block/%d:%d/size", dev.Major, dev.Minor)
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("thinpool: size of %s: %w", dev, err)
	}
	var sectors int64
	if _, err := fmt.Sscan(string(data), &sectors); err != nil {
		return 0, fmt.Errorf("thinpool: size of %s: %w", dev, err)
	}
	return sectors * devmapper.SectorSize, nil
}

// zeroHeader zeroes 4 KiB at off of a claimed device and syncs them.
func zeroHeader(f *os.File, off int64) error {
	if _, err := f.WriteAt(make([]byte, 4096), off); err != nil {
		return fmt.Errorf("thinpool: zero %s: %w", f.Name(), err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("thinpool: zero %s: %w", f.Name(), err)
	}
	return nil
}
