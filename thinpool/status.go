package thinpool

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/devmapper"
	"github.com/dmthin/dmthin/loopback"
)

// Status is the pool's space and state.
type Status struct {
	Name      string `json:"name"`
	BlockSize int64  `json:"block_size"`
	// Data and metadata space in bytes. Available is what can still be
	// provisioned: free pool space, bounded for a loopback file by the free
	// space of the filesystem holding it.
	DataUsed          int64              `json:"data_used"`
	DataTotal         int64              `json:"data_total"`
	DataAvailable     int64              `json:"data_available"`
	MetadataUsed      int64              `json:"metadata_used"`
	MetadataTotal     int64              `json:"metadata_total"`
	MetadataAvailable int64              `json:"metadata_available"`
	Mode              devmapper.PoolMode `json:"mode"`
	NeedsCheck        bool               `json:"needs_check"`
	TransactionID     uint64             `json:"transaction_id"`
	Devices           int                `json:"devices"`
	DeferredDeletes   int                `json:"deferred_deletes"`
	Retired           int                `json:"retired"` // retired (Retire), not yet deleted
	Faulty            int                `json:"faulty"`
	// FaultyDevices names every device recovery could not settle (faulty
	// records, and dm devices of the pool it could not remove or resume),
	// with the reason.
	FaultyDevices []FaultyDevice `json:"faulty_devices,omitempty"`
	// Where the pool lives: loopback files, or devices. For a pool on a
	// whole device, Device is that device, and DataDevice and
	// MetadataDevice are the linear devices mapping its areas.
	Device              string `json:"device,omitempty"`
	DataFile            string `json:"data_file"`
	MetadataFile        string `json:"metadata_file"`
	DataDevice          string `json:"data_device"`
	MetadataDevice      string `json:"metadata_device"`
	External            bool   `json:"external"`
	MinFreeSpacePercent int    `json:"min_free_space_percent"`
	// EventNr is the pool device's event counter, for WaitEvent.
	EventNr uint32 `json:"event_nr"`

	// ErrorIfNoSpace: writes that find the pool full fail with ENOSPC at
	// once; otherwise the kernel queues them (see Options.QueueIfNoSpace
	// and AutoGrow).
	ErrorIfNoSpace bool `json:"error_if_no_space"`
}

// FaultyDevice is a device Open could not settle.
type FaultyDevice struct {
	Name   string `json:"name"` // the device's name, or a dm device name for a stray
	Reason string `json:"reason"`
}

// Status reads the pool's status without making it commit metadata.
func (p *Pool) Status(ctx context.Context) (Status, error) {
	done, err := p.enter()
	if err != nil {
		return Status{}, err
	}
	defer done()
	return p.status()
}

func (p *Pool) status() (Status, error) {
	s, err := p.spaceStatus()
	if err != nil {
		return s, err
	}
	info, err := p.dm.Info(p.name)
	if err != nil {
		return Status{}, fmt.Errorf("thinpool: %w", err)
	}
	s.EventNr = info.EventNr
	recs, err := p.st.all()
	if err != nil {
		return s, err
	}
	explained := make(map[string]bool, len(recs))
	for _, r := range recs {
		s.Devices++
		if r.Retired != "" {
			s.Retired++
		}
		if r.State == StateReady || r.State == StateDeferredDelete {
			explained[p.dmName(r.Name)] = true
		}
		switch r.State {
		case StateDeferredDelete:
			s.DeferredDeletes++
		case StateFaulty:
			s.Faulty++
			s.FaultyDevices = append(s.FaultyDevices, FaultyDevice{Name: r.Name, Reason: r.Fault})
		}
	}
	// What recovery could not remove, while it is still there and no
	// record has taken its name since.
	for _, f := range p.strays {
		if listed := !strings.HasSuffix(f.Name, "-*"); listed {
			if _, err := p.dm.Info(f.Name); devmapper.IsNotFound(err) || explained[f.Name] {
				continue
			}
		}
		s.FaultyDevices = append(s.FaultyDevices, f)
	}
	return s, nil
}

// spaceStatus is Status without the device counts and event number: one
// status ioctl, whatever the number of devices.
func (p *Pool) spaceStatus() (Status, error) {
	ps, err := p.poolStatus()
	if err != nil {
		return Status{}, err
	}
	return p.spaceFrom(ps), nil
}

// spaceFrom fills in a Status from the pool's status line, bounding a
// loopback pool's free space by that of the filesystem holding its files.
func (p *Pool) spaceFrom(ps devmapper.ThinPoolStatus) Status {
	bs := int64(p.blockSize.Bytes())
	s := Status{
		Name: p.name, BlockSize: bs, Mode: ps.Mode, NeedsCheck: ps.NeedsCheck,
		TransactionID: ps.TransactionID, External: p.external,
		MinFreeSpacePercent: *p.opts.MinFreeSpacePercent,
		DataUsed:            int64(ps.UsedDataBlocks) * bs,
		DataTotal:           int64(ps.TotalDataBlocks) * bs,
		MetadataUsed:        int64(ps.UsedMetadataBlocks) * devmapper.MetadataBlockSize,
		MetadataTotal:       int64(ps.TotalMetadata) * devmapper.MetadataBlockSize,
	}
	s.ErrorIfNoSpace = ps.NoSpace == devmapper.ErrorIfNoSpace
	s.DataAvailable = s.DataTotal - s.DataUsed
	s.MetadataAvailable = s.MetadataTotal - s.MetadataUsed
	if p.dataLoop != nil {
		s.DataFile, s.MetadataFile = p.dataPath, p.metaPath
		if free, err := fsFree(filepath.Dir(p.dataPath)); err == nil {
			s.DataAvailable = min(s.DataAvailable, free)
			s.MetadataAvailable = min(s.MetadataAvailable, free)
		}
	} else if !p.external {
		s.DataDevice, s.MetadataDevice = p.dataPath, p.metaPath
	}
	if p.direct != nil {
		s.Device = p.direct.path
	}
	return s
}

func fsFree(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * st.Bsize, nil
}

// checkSpace refuses new devices when free data or metadata space is below
// the minimum (data: unless AutoGrow can still grow the pool), or the pool
// is not writable. It reads the pool's status only when the guard cannot
// vouch for the last one (space.go).
func (p *Pool) checkSpace() error {
	ps, err := p.guardStatus()
	if err != nil {
		return err
	}
	s := p.spaceFrom(ps)
	switch s.Mode {
	case devmapper.PoolOutOfDataSpace:
		return &SpaceError{What: "data", Free: s.DataAvailable, Total: s.DataTotal, OutOfData: true}
	case devmapper.PoolReadWrite:
	default:
		return fmt.Errorf("thinpool: pool %q is in mode %s; no new devices", p.name, s.Mode)
	}
	pct := int64(*p.opts.MinFreeSpacePercent)
	if pct == 0 {
		return nil
	}
	// A pool that grows itself gets its free space back by growing.
	if min := s.DataTotal * pct / 100; s.DataAvailable < min && !p.canGrow() {
		return &SpaceError{What: "data", Free: s.DataAvailable, Total: s.DataTotal, MinFree: min}
	}
	if min := s.MetadataTotal * pct / 100; s.MetadataAvailable < min {
		return &SpaceError{What: "metadata", Free: s.MetadataAvailable, Total: s.MetadataTotal, MinFree: min}
	}
	return nil
}

// Grow grows the pool. For a loopback pool, the files grow to dataSize and
// metadataSize (0 keeps a size; shrinking is refused) and the loop devices
// are told; for a pool over devices, the caller grew them and both sizes
// must be 0 (for a pool on a whole device, the label's data area and the
// linear device mapping it grow first). The pool's table is reloaded while thin devices stay in use.
func (p *Pool) Grow(ctx context.Context, dataSize, metadataSize int64) error {
	done, err := p.enter()
	if err != nil {
		return err
	}
	defer done()
	if p.external {
		return fmt.Errorf("thinpool: %q is external: grow it where it was made", p.name)
	}
	if p.dataLoop == nil && (dataSize != 0 || metadataSize != 0) {
		return fmt.Errorf("thinpool: pool over devices: grow the devices, then call Grow(ctx, 0, 0)")
	}
	p.msgMu.Lock()
	defer p.msgMu.Unlock()
	if p.direct != nil {
		if err := p.growDirectLocked(); err != nil {
			return err
		}
	}
	if p.dataLoop != nil {
		if err := p.growFilesLocked(dataSize, metadataSize); err != nil {
			return err
		}
	}
	return p.reloadPoolLocked()
}

// growFilesLocked grows the loopback files to dataSize and metadataSize (0
// keeps a size; shrinking is refused) and tells their loop devices. The
// caller holds msgMu and reloads the pool's table after.
func (p *Pool) growFilesLocked(dataSize, metadataSize int64) error {
	for _, f := range []struct {
		path string
		size int64
		loop *loopback.Device
	}{{p.dataPath, dataSize, p.dataLoop}, {p.metaPath, metadataSize, p.metaLoop}} {
		if f.size == 0 {
			continue
		}
		st, err := os.Stat(f.path)
		if err != nil {
			return fmt.Errorf("thinpool: grow: %w", err)
		}
		if f.size < st.Size() {
			return fmt.Errorf("thinpool: grow %s to %d bytes: it has %d, shrinking is not supported", f.path, f.size, st.Size())
		}
		if err := loopback.CreateSparse(f.path, f.size); err != nil {
			return fmt.Errorf("thinpool: grow: %w", err)
		}
		p.step("grow:extended")
		if err := f.loop.SetCapacity(); err != nil {
			return fmt.Errorf("thinpool: grow: %w", err)
		}
		p.step("grow:capacity")
	}
	return nil
}

// reloadPoolLocked reloads the pool's table as the options and the data
// device's size call for, keeping its devices and block size: the one way
// the pool's table changes after it is made (growth, the no-space policy of
// AutoGrow). The caller holds msgMu.
func (p *Pool) reloadPoolLocked() error {
	tab, err := p.dm.Table(p.name)
	if err != nil {
		return err
	}
	if len(tab) != 1 {
		return fmt.Errorf("thinpool: %q has an unexpected table %v", p.name, tab)
	}
	cur, ok := tab[0].Params.(devmapper.ThinPoolParams)
	if !ok {
		return fmt.Errorf("thinpool: %q has an unexpected table %v", p.name, tab)
	}
	size, err := devSize(cur.Data)
	if err != nil {
		return err
	}
	want := p.poolTable(cur.Metadata, cur.Data, size, cur.BlockSize)
	if err := p.reload(p.name, want); err != nil {
		return fmt.Errorf("thinpool: reload %q: %w", p.name, err)
	}
	// The resume cleared the pool's low-water trigger.
	p.armSpace(true)
	p.step("grow:rearmed")
	return nil
}

// WaitEvent blocks until the pool raises an event after the one numbered
// after (Status.EventNr): crossing the low-water mark, running out of
// space, a mode change. It returns the new status. Close ends the wait
// with ErrClosed.
func (p *Pool) WaitEvent(ctx context.Context, after uint32) (Status, error) {
	done, err := p.enter()
	if err != nil {
		return Status{}, err
	}
	defer done()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-p.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	if _, err := p.dm.WaitEvent(ctx, p.name, after); err != nil {
		select {
		case <-p.closing:
			return Status{}, errors.Join(ErrClosed, err)
		default:
		}
		return Status{}, err
	}
	return p.status()
}

// discard activates the device if needed and discards all its blocks, so
// that the pool (with discard passdown) punches them out of its data device.
// It looks at the device again after Delete's mark: an opener that came
// in between keeps its data (ErrBusy), as an exclusive open would not
// refuse a shared opener.
func (p *Pool) discard(ctx context.Context, rec *record) error {
	info, err := p.dm.Info(p.dmName(rec.Name))
	if err == nil && info.LiveTable && info.OpenCount > 0 {
		return fmt.Errorf("%w: %q is open", ErrBusy, rec.Name)
	}
	path, err := p.activateKnown(ctx, rec, info, err)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_EXCL, 0)
	if err != nil {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("%w: %q: %w", ErrBusy, rec.Name, err)
		}
		return fmt.Errorf("thinpool: discard %q: %w", rec.Name, err)
	}
	rng := [2]uint64{0, uint64(rec.Size)}
	_, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKDISCARD, uintptr(unsafe.Pointer(&rng[0])))
	cerr := f.Close()
	if e != 0 && e != unix.EOPNOTSUPP {
		return errors.Join(fmt.Errorf("thinpool: discard %q: BLKDISCARD: %w", rec.Name, e), cerr)
	}
	return cerr
}
