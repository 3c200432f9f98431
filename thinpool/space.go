package thinpool

import (
	"context"
	"sync"
	"time"

	"github.com/dmthin/dmthin/devmapper"
)

// The free-space guard: a create is refused when the pool is not writable
// or has less than MinFreeSpacePercent of its data or metadata space free.
// Reading the pool's status for every create would cost an ioctl each; the
// guard keeps the last status instead and relies on the pool to say when
// it changes in a way that matters:
//
//   - The pool raises an event when it changes mode (out of data space,
//     read-only, failed) and when free data blocks drop to its low-water
//     mark, which the pool's table sets at or above the data minimum
//     (poolTable). A watcher waits for the first event and disarms the
//     guard; from then on every create reads the status, as the low-water
//     event fires only once until the pool is resumed again (Grow arms the
//     guard anew).
//   - The guard arms only when it knows the low-water event is still to
//     come: the pool has raised no event since its device was made (event
//     number 0) or Grow just resumed it, its table's low-water mark covers
//     the data minimum, and free data is above the mark. Without a minimum (MinFreeSpacePercent
//     0) only the mode matters, and every mode change raises an event, so
//     the guard always arms.
//   - Metadata has no event at the minimum (the kernel's metadata
//     threshold is a fixed 4 MiB), so with a minimum set the kept status
//     is used for at most spaceMaxAge: the metadata figure a create sees
//     is at most that old.
//
// Between the kernel raising an event and the watcher disarming the guard
// lies the watcher's wake-up; a create in that instant passes, as one would
// that read the status just before the event.

// spaceMaxAge bounds how old the status a create is checked against may be
// while a minimum free space is set.
const spaceMaxAge = time.Second

type spaceGuard struct {
	mu sync.Mutex
	// maxAge is spaceMaxAge (tests change it).
	maxAge time.Duration
	armed  bool
	ps     devmapper.ThinPoolStatus
	at     time.Time
	// reads counts status reads made for creates (tests).
	reads int
	// stop ends the watcher (Close).
	stop context.CancelFunc
}

// armSpace arms the guard if the pool's next event can be trusted to
// announce a drop below the minimum, and starts the watcher that disarms it
// at that event. resumed says that the pool was just resumed by us, which
// cleared its low-water trigger; otherwise only a pool that never raised an
// event is known to have it clear. A failure leaves the guard disarmed:
// every create then reads the status.
func (p *Pool) armSpace(resumed bool) {
	g := &p.space
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.armed {
		return // the watcher still waits for the first event
	}
	log := p.log.WithField("pool", p.name)
	info, err := p.dm.Info(p.name)
	if err != nil {
		log.WithError(err).Warn("free-space guard: pool info; every create reads the pool's status")
		return
	}
	ps, err := p.poolStatus()
	if err != nil {
		log.WithError(err).Warn("free-space guard: pool status; every create reads the pool's status")
		return
	}
	if pct := uint64(*p.opts.MinFreeSpacePercent); pct > 0 {
		tab, err := p.dm.Table(p.name)
		if err != nil {
			log.WithError(err).Warn("free-space guard: pool table; every create reads the pool's status")
			return
		}
		var lwm uint64
		if len(tab) == 1 {
			if tp, ok := tab[0].Params.(devmapper.ThinPoolParams); ok {
				lwm = tp.LowWaterMark
			}
		}
		free := ps.TotalDataBlocks - ps.UsedDataBlocks
		if (info.EventNr != 0 && !resumed) || lwm*100 < ps.TotalDataBlocks*pct || free <= lwm {
			log.WithFields(map[string]any{"event-nr": info.EventNr, "low-water-blocks": lwm, "free-blocks": free}).
				Debug("free-space guard: the low-water event may not come; every create reads the pool's status")
			return
		}
	}
	c, err := devmapper.Open(devmapper.Options{Logger: p.opts.Logger})
	if err != nil {
		log.WithError(err).Warn("free-space guard: open a control node for the watcher; every create reads the pool's status")
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	g.armed, g.ps, g.at, g.stop = true, ps, time.Now(), cancel
	go func() {
		// Its own client, so that Close need not wait for the wait to
		// end.
		defer c.Close()
		_, err := c.WaitEvent(ctx, p.name, info.EventNr)
		g.mu.Lock()
		g.armed = false
		g.mu.Unlock()
		if err != nil && ctx.Err() == nil {
			log.WithError(err).Warn("free-space guard: waiting for pool events failed; every create reads the pool's status")
		}
	}()
}

// stopSpace ends the watcher.
func (p *Pool) stopSpace() {
	g := &p.space
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stop != nil {
		g.stop()
		g.stop = nil
	}
	g.armed = false
}

// guardStatus is the pool status a create is checked against: the kept one
// while the guard is armed (and, with a minimum set, young enough), else a
// fresh read.
func (p *Pool) guardStatus() (devmapper.ThinPoolStatus, error) {
	g := &p.space
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.armed && (*p.opts.MinFreeSpacePercent == 0 || time.Since(g.at) < g.maxAge) {
		return g.ps, nil
	}
	ps, err := p.poolStatus()
	if err != nil {
		return ps, err
	}
	g.reads++
	g.ps, g.at = ps, time.Now()
	return ps, nil
}
