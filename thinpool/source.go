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
		if err := zeroHeader(claimed[0]); err != nil {
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
// which case its table must name the same devices.
func (p *Pool) ensurePool(md, dd devmapper.Dev) error {
	dataSize, err := devSize(dd)
	if err != nil {
		return err
	}
	want := p.poolTable(md, dd, dataSize)
	info, err := p.dm.Info(p.name)
	switch {
	case err == nil && info.LiveTable:
		tab, err := p.dm.Table(p.name)
		if err != nil {
			return err
		}
		cur, ok := tab[0].Params.(devmapper.ThinPoolParams)
		if len(tab) != 1 || !ok || cur.Data != dd || cur.Metadata != md {
			return fmt.Errorf("thinpool: existing %q maps %v, not data %s metadata %s", p.name, tab, dd, md)
		}
		p.dev, p.blockSize = info.Dev, cur.BlockSize
		if cur.BlockSize.Bytes() != uint64(p.opts.BlockSize) {
			p.log.WithField("blocksize", cur.BlockSize.Bytes()).Warn("pool exists with another block size; keeping it")
		}
		if tab.Length() < want[0].Length {
			// The data device grew while we were away.
			want[0].Params = withBlockSize(want[0].Params, cur.BlockSize)
			if err := p.reload(p.name, want); err != nil {
				return fmt.Errorf("thinpool: grow %q: %w", p.name, err)
			}
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
	if bs := p.storedBlockSize(); bs != 0 {
		want[0].Params = withBlockSize(want[0].Params, bs)
	}
	info, err = p.dm.Activate(p.name, "", want, false)
	if err != nil {
		return fmt.Errorf("thinpool: create pool %q: %w", p.name, err)
	}
	p.dev = info.Dev
	p.blockSize = want[0].Params.(devmapper.ThinPoolParams).BlockSize
	p.log.WithFields(map[string]any{"pool": p.name, "data": dd, "metadata": md}).Info("thin pool created")
	return nil
}

func withBlockSize(tp devmapper.TargetParams, bs devmapper.Sectors) devmapper.TargetParams {
	t := tp.(devmapper.ThinPoolParams)
	t.BlockSize = bs
	return t
}

func (p *Pool) storedBlockSize() devmapper.Sectors {
	var v uint64
	_ = p.st.db.View(func(tx txn) error {
		v = u64(tx.Bucket(bucketMeta).Get(keyBlockSize))
		return nil
	})
	return devmapper.Sectors(v / devmapper.SectorSize)
}

func (p *Pool) poolTable(md, dd devmapper.Dev, dataSize int64) devmapper.Table {
	bs := devmapper.Sectors(p.opts.BlockSize / devmapper.SectorSize)
	blocks := uint64(dataSize) / bs.Bytes()
	lwm := uint64(p.opts.LowWaterMark) / bs.Bytes()
	if p.opts.LowWaterMark == 0 {
		lwm = blocks / 100
	}
	// The event at the low-water mark is what tells the free-space guard
	// that creates must stop (space.go): the mark is at least the minimum.
	if pct := uint64(*p.opts.MinFreeSpacePercent); pct > 0 {
		lwm = max(lwm, (blocks*pct+99)/100)
	}
	length := devmapper.Sectors(uint64(dataSize) / devmapper.SectorSize)
	return devmapper.Table{{
		Start:  0,
		Length: length,
		Params: devmapper.ThinPoolParams{
			Metadata: md, Data: dd, BlockSize: bs, LowWaterMark: lwm,
			Features: devmapper.ThinPoolFeatures{
				SkipBlockZeroing:  p.opts.SkipBlockZeroing,
				NoDiscardPassdown: p.opts.NoDiscardPassdown,
				ErrorIfNoSpace:    !p.opts.QueueIfNoSpace,
			},
		},
	}}
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

// zeroHeader zeroes the first 4 KiB of a claimed device and syncs it.
func zeroHeader(f *os.File) error {
	if _, err := f.WriteAt(make([]byte, 4096), 0); err != nil {
		return fmt.Errorf("thinpool: zero %s: %w", f.Name(), err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("thinpool: zero %s: %w", f.Name(), err)
	}
	return nil
}
