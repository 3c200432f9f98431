package thinpool

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/docker/go-units"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/devmapper"
)

// Defaults of AutoGrow, Docker's for dm.thinp_autoextend_threshold and
// dm.thinp_autoextend_percent.
const (
	DefaultAutoGrowThreshold = 80 // percent used
	DefaultAutoGrowStep      = 20 // percent of the current size
	// MaxAutoGrowStep bounds StepPercent: growing tenfold at once is a
	// typing error more likely than a plan.
	MaxAutoGrowStep = 1000
	// MaxMetadataSize is the most metadata a thin pool can use (the
	// kernel's THIN_METADATA_MAX_SECTORS, 16320 MiB); metadata never grows
	// past it.
	MaxMetadataSize = 16320 * units.MiB
)

// AutoGrow makes a loopback pool grow its own files, while the process that
// opened it keeps it open: no daemon, no LVM.
//
// The pool's low-water mark is set at ThresholdPercent of its data space,
// so the kernel raises an event when that much is in use; the pool then
// grows the data file by StepPercent of its size (and the metadata file
// likewise when its use crosses ThresholdPercent, checked at every event
// and every few seconds), never past MaxDataSize or MaxMetadataSize, and
// never past what the filesystem holding the files can still give (their
// unallocated parts count as given). Each growth is logged.
//
// While the pool can still grow, its table asks the kernel to queue writes
// that find it full (queue_if_no_space) until the growth lands, so a fast
// writer waits instead of failing. Once the pool is at its maximum, the
// table is switched to error_if_no_space (unless Options.QueueIfNoSpace)
// and writes past it fail with ENOSPC at once. Close switches it back to
// error_if_no_space; a process that dies leaves it queueing (the kernel
// fails queued writes after its no_space_timeout, 60 s by default) until
// the next Open.
type AutoGrow struct {
	// ThresholdPercent of data (or metadata) space in use that makes the
	// file grow: 1 to 99; 0 means DefaultAutoGrowThreshold.
	ThresholdPercent int
	// StepPercent of the file's current size that each growth adds: 1 to
	// MaxAutoGrowStep; 0 means DefaultAutoGrowStep. A step is at least
	// one data block (data) or 1 MiB (metadata).
	StepPercent int
	// MaxDataSize: the data file never grows past it. 0: only the
	// filesystem's free space limits it.
	MaxDataSize int64
	// MaxMetadataSize: the metadata file never grows past it. 0 means
	// MaxMetadataSize.
	MaxMetadataSize int64
}

// validate checks the AutoGrow of o; each error wraps ErrInvalidOptions.
func (g *AutoGrow) validate(o *Options) []error {
	var errs []error
	bad := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("%w: AutoGrow."+format, append([]any{ErrInvalidOptions}, a...)...))
	}
	human := func(n int64) string { return units.BytesSize(float64(n)) }
	switch o.source() {
	case "devices":
		bad("needs a loopback pool: grow the devices, then call Grow")
		return errs
	case "external":
		return errs // refused with the other table options
	}
	if t := g.ThresholdPercent; t < 0 || t > 99 {
		bad("ThresholdPercent %d: want 1 to 99", t)
	}
	if s := g.StepPercent; s < 0 || s > MaxAutoGrowStep {
		bad("StepPercent %d: want 1 to %d", s, MaxAutoGrowStep)
	}
	if g.MaxDataSize < 0 {
		bad("MaxDataSize %d is negative", g.MaxDataSize)
	} else if data := cmp(o.LoopDataSize, DefaultLoopDataSize); g.MaxDataSize != 0 && g.MaxDataSize < data {
		bad("MaxDataSize %s is below the data file's initial size %s", human(g.MaxDataSize), human(data))
	}
	if g.MaxMetadataSize < 0 || g.MaxMetadataSize > MaxMetadataSize {
		bad("MaxMetadataSize %s: want at most %s (what a pool can use)", human(g.MaxMetadataSize), human(MaxMetadataSize))
	} else if meta := cmp(o.LoopMetadataSize, DefaultLoopMetadataSize); g.MaxMetadataSize != 0 && g.MaxMetadataSize < meta {
		bad("MaxMetadataSize %s is below the metadata file's initial size %s", human(g.MaxMetadataSize), human(meta))
	}
	if o.LowWaterMark != 0 {
		errs = append(errs, fmt.Errorf("%w: LowWaterMark cannot be set with AutoGrow: the low-water mark is AutoGrow.ThresholdPercent of the data space", ErrInvalidOptions))
	}
	return errs
}

// cmp returns v, or def when v is 0.
func cmp(v, def int64) int64 {
	if v == 0 {
		return def
	}
	return v
}

func (g AutoGrow) withDefaults() AutoGrow {
	if g.ThresholdPercent == 0 {
		g.ThresholdPercent = DefaultAutoGrowThreshold
	}
	if g.StepPercent == 0 {
		g.StepPercent = DefaultAutoGrowStep
	}
	if g.MaxMetadataSize == 0 {
		g.MaxMetadataSize = MaxMetadataSize
	}
	return g
}

// fileSpace is what growth planning knows of one file.
type fileSpace struct {
	size        int64 // the file's size
	used, total int64 // pool space in use and in all, bytes
	limit       int64 // the largest size it may have (maximum, filesystem)
	unit        int64 // sizes are multiples of this
}

// nextSize is the size to grow f to: 0 when its use is below the
// threshold, or it cannot grow by a unit.
func (g AutoGrow) nextSize(f fileSpace) int64 {
	if f.total <= 0 || f.used*100 < f.total*int64(g.ThresholdPercent) {
		return 0
	}
	n := min(f.size+max(f.size*int64(g.StepPercent)/100, f.unit), f.limit)
	n -= n % f.unit
	if n <= f.size {
		return 0
	}
	return n
}

// canGrow reports whether f can grow by one unit.
func (f fileSpace) canGrow() bool { return f.limit-f.size >= f.unit }

// fileAlloc is a file's size and the bytes it has allocated.
func fileAlloc(path string) (size, allocated int64, err error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, 0, fmt.Errorf("thinpool: %w", &os.PathError{Op: "stat", Path: path, Err: err})
	}
	return st.Size, st.Blocks * 512, nil
}

// growRoom returns what the filesystem holding the loopback files can still
// give them beyond what they already promise the pool: its free space less
// the unallocated parts of both files.
func growRoom(dir string, files ...[2]int64) (int64, error) {
	free, err := fsFree(dir)
	if err != nil {
		return 0, fmt.Errorf("thinpool: free space of %s: %w", dir, err)
	}
	for _, f := range files {
		free -= max(f[0]-f[1], 0)
	}
	return max(free, 0), nil
}

// autoGrower is the state of a pool's growth loop.
type autoGrower struct {
	cfg      AutoGrow // defaults filled in
	interval time.Duration

	// queue: the pool table's no-space policy is queue_if_no_space
	// because the pool can still grow. atMax: the last check found it
	// could not. Guarded by Pool.msgMu.
	queue, atMax bool
	// lastErr is the last error logged, so a lasting one is logged once.
	lastErr string

	startOnce, stopOnce sync.Once
	cancel              context.CancelFunc
	done                chan struct{}
}

// autoGrowInterval is how often the growth loop checks the pool when no
// event comes (the metadata's own event comes late, at 75% use for small
// metadata). A variable so tests can shorten it.
var autoGrowInterval = 2 * time.Second

// planGrowthLocked reads the pool and its files and returns the sizes to
// grow them to (0: keep) and whether the pool can still grow afterwards.
// The caller holds msgMu.
func (p *Pool) planGrowthLocked(ps devmapper.ThinPoolStatus) (data, meta fileSpace, newData, newMeta int64, err error) {
	g := p.grow.cfg
	dSize, dAlloc, err := fileAlloc(p.dataPath)
	if err != nil {
		return data, meta, 0, 0, err
	}
	mSize, mAlloc, err := fileAlloc(p.metaPath)
	if err != nil {
		return data, meta, 0, 0, err
	}
	room, err := growRoom(filepath.Dir(p.dataPath), [2]int64{dSize, dAlloc}, [2]int64{mSize, mAlloc})
	if err != nil {
		return data, meta, 0, 0, err
	}
	bs := int64(p.blockSize.Bytes())
	data = fileSpace{size: dSize, used: int64(ps.UsedDataBlocks) * bs, total: int64(ps.TotalDataBlocks) * bs,
		limit: dSize + room, unit: bs}
	if g.MaxDataSize != 0 {
		data.limit = min(data.limit, g.MaxDataSize)
	}
	if newData = g.nextSize(data); newData != 0 {
		room -= newData - dSize
	}
	meta = fileSpace{size: mSize, used: int64(ps.UsedMetadataBlocks) * devmapper.MetadataBlockSize,
		total: int64(ps.TotalMetadata) * devmapper.MetadataBlockSize, limit: min(mSize+room, g.MaxMetadataSize), unit: units.MiB}
	newMeta = g.nextSize(meta)
	return data, meta, newData, newMeta, nil
}

// initGrowState decides, before the pool's table is made at Open, whether
// it can still grow (and so queues writes when full).
func (p *Pool) initGrowState() error {
	dSize, dAlloc, err := fileAlloc(p.dataPath)
	if err != nil {
		return err
	}
	mSize, mAlloc, err := fileAlloc(p.metaPath)
	if err != nil {
		return err
	}
	room, err := growRoom(filepath.Dir(p.dataPath), [2]int64{dSize, dAlloc}, [2]int64{mSize, mAlloc})
	if err != nil {
		return err
	}
	f := fileSpace{size: dSize, limit: dSize + room, unit: p.opts.BlockSize}
	if m := p.grow.cfg.MaxDataSize; m != 0 {
		f.limit = min(f.limit, m)
	}
	p.grow.atMax = !f.canGrow()
	p.grow.queue = !p.grow.atMax
	return nil
}

// autoGrowOnce grows the files whose use crossed the threshold, and sets
// the pool's no-space policy to what its room to grow calls for.
func (p *Pool) autoGrowOnce() error {
	done, err := p.enter()
	if err != nil {
		return err
	}
	defer done()
	p.msgMu.Lock()
	defer p.msgMu.Unlock()
	ps, err := p.poolStatus()
	if err != nil {
		return err
	}
	switch ps.Mode {
	case devmapper.PoolReadWrite, devmapper.PoolOutOfDataSpace:
	default:
		// Read-only or failed: more space would not help; thin_check would.
		return fmt.Errorf("thinpool: pool %q is in mode %s: not growing it", p.name, ps.Mode)
	}
	data, meta, newData, newMeta, err := p.planGrowthLocked(ps)
	if err != nil {
		return err
	}
	g := p.grow
	after := data
	if newData != 0 {
		after.size = newData
	}
	atMax := !after.canGrow()
	queue := !atMax
	if newData == 0 && newMeta == 0 && queue == g.queue {
		return nil
	}
	if err := p.growFilesLocked(newData, newMeta); err != nil {
		return err
	}
	wasQueue := g.queue
	g.queue = queue
	if err := p.reloadPoolLocked(); err != nil {
		g.queue = wasQueue
		return err
	}
	human := func(n int64) string { return units.BytesSize(float64(n)) }
	log := p.log.WithField("pool", p.name)
	if newData != 0 {
		log.WithFields(logrus.Fields{"from": human(data.size), "to": human(newData), "used": human(data.used),
			"limit": human(data.limit)}).Info("thin pool data grew")
	}
	if newMeta != 0 {
		log.WithFields(logrus.Fields{"from": human(meta.size), "to": human(newMeta), "used": human(meta.used),
			"limit": human(meta.limit)}).Info("thin pool metadata grew")
	}
	if atMax && !g.atMax {
		log.WithField("data-size", human(cmp(newData, data.size))).Warn("thin pool reached its maximum size: writes past it fail with ENOSPC")
	} else if !atMax && g.atMax {
		log.Info("thin pool can grow again")
	}
	g.atMax = atMax
	return nil
}

// startAutoGrow starts the growth loop; stopAutoGrow ends it.
func (p *Pool) startAutoGrow() {
	g := p.grow
	g.startOnce.Do(func() {
		ctx, cancel := context.WithCancel(context.Background())
		g.cancel = cancel
		g.done = make(chan struct{})
		go p.autoGrowLoop(ctx, g)
	})
}

func (p *Pool) autoGrowLoop(ctx context.Context, g *autoGrower) {
	defer close(g.done)
	for {
		// The event number before the check: an event during the check
		// ends the wait at once.
		info, err := p.dm.Info(p.name)
		if err == nil {
			err = p.autoGrowOnce()
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if msg := err.Error(); msg != g.lastErr {
				g.lastErr = msg
				p.log.WithError(err).WithField("pool", p.name).Error("thin pool auto-grow")
			}
		} else {
			g.lastErr = ""
		}
		wctx, cancel := context.WithTimeout(ctx, g.interval)
		_, werr := p.dm.WaitEvent(wctx, p.name, info.EventNr)
		if err != nil || werr != nil && wctx.Err() == nil {
			// Something failed: wait out the interval, not spin.
			<-wctx.Done()
		}
		cancel()
		if ctx.Err() != nil {
			return
		}
	}
}

// stopAutoGrow ends the growth loop and waits for it. With restore, a pool
// table left queueing writes for growth that will no longer come is
// switched to error_if_no_space.
func (p *Pool) stopAutoGrow(restore bool) error {
	g := p.grow
	if g == nil {
		return nil
	}
	g.stopOnce.Do(func() {
		if g.cancel != nil {
			g.cancel()
			<-g.done
		}
	})
	if !restore {
		return nil
	}
	done, err := p.enter()
	if err != nil {
		return nil // closed: nothing to restore with
	}
	defer done()
	p.msgMu.Lock()
	defer p.msgMu.Unlock()
	if !g.queue || p.opts.QueueIfNoSpace {
		return nil
	}
	g.queue = false
	if err := p.reloadPoolLocked(); err != nil {
		return fmt.Errorf("thinpool: switch %q to error_if_no_space: %w", p.name, err)
	}
	return nil
}

// canGrow reports whether AutoGrow can still grow the pool's data.
func (p *Pool) canGrow() bool {
	if p.grow == nil {
		return false
	}
	p.msgMu.Lock()
	defer p.msgMu.Unlock()
	return !p.grow.atMax
}

// poolGone notes that the pool device was removed: nothing is queued.
func (p *Pool) poolGoneLocked() {
	if p.grow != nil {
		p.grow.queue = false
	}
}
