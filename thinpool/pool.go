package thinpool

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/devmapper"
	"github.com/dmthin/dmthin/internal/keyedmutex"
	"github.com/dmthin/dmthin/loopback"
)

// Pool is an open thin pool. It is safe for concurrent use.
type Pool struct {
	opts Options
	log  logrus.FieldLogger
	dm   *devmapper.Client
	st   *store

	name      string // pool device-mapper name
	prefix    string // prefix of every thin device's dm name
	dev       devmapper.Dev
	blockSize devmapper.Sectors
	external  bool
	// direct is set for a pool on a whole device (Options.Device).
	direct *directDevice

	dataLoop, metaLoop *loopback.Device
	dataPath, metaPath string // files (loopback) or devices

	// msgMu serialises pool messages with the transaction id they move,
	// and guards txid.
	msgMu sync.Mutex
	txid  uint64
	// issued is the last transaction id handed to a change (txn.go); the
	// next one is past both. Guarded by msgMu.
	issued uint64
	// changes counts the changes since the pool's transaction id was last
	// moved up to issued, which happens every syncEvery changes (txn.go).
	// Guarded by msgMu.
	changes, syncEvery int

	locks keyedmutex.Map

	// grow is the AutoGrow loop's state; nil without AutoGrow.
	grow *autoGrower
	// space is the free-space guard of creates (space.go).
	space spaceGuard

	// made names the devices Open made (pool, linear devices), in order,
	// for Open to remove if it fails.
	made []string
	// pending names the records recovery found waiting for deletion.
	pending []string
	// strays are dm devices of the pool that recovery could neither remove
	// nor resume.
	strays []FaultyDevice

	closeMu sync.RWMutex
	closed  bool
	// closing is closed when Close starts, to end waits (WaitEvent) that
	// would otherwise keep it from taking closeMu.
	closing   chan struct{}
	closeOnce sync.Once

	// hook is called at each named step of an operation; tests use it to
	// crash the process at that point.
	hook func(step string)
	// resumeFault and messageFault, when set, can fail a resume or a pool
	// message before it is sent (tests).
	resumeFault  func(dm string) error
	messageFault func(msg string) error
}

func (p *Pool) step(name string) {
	if p.hook != nil {
		p.hook(name)
	}
}

// Open opens (creating or reusing as needed) the pool Options describe,
// then settles every operation a crash left half-done.
func Open(ctx context.Context, opts Options) (_ *Pool, err error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	root, err := filepath.Abs(opts.Root)
	if err != nil {
		return nil, fmt.Errorf("thinpool: root: %w", err)
	}
	opts.Root = root
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("thinpool: root: %w", err)
	}
	p := &Pool{opts: opts, log: opts.Logger.WithField("pool-root", root), closing: make(chan struct{}), hook: opts.StepHook, syncEvery: syncEvery}
	if p.hook == nil {
		p.hook = openHook
	}
	p.space.maxAge = spaceMaxAge
	if opts.AutoGrow != nil && opts.source() == "loopback" {
		p.grow = &autoGrower{cfg: opts.AutoGrow.withDefaults(), interval: autoGrowInterval}
	}
	var cleanup []func() error
	defer func() {
		if err != nil {
			for i := len(cleanup) - 1; i >= 0; i-- {
				err = errors.Join(err, cleanup[i]())
			}
		}
	}()

	openDM := func() (*devmapper.Client, error) {
		if p.dm == nil {
			c, err := devmapper.Open(devmapper.Options{NodeDir: opts.DeviceDir, Logger: opts.Logger, Fault: openFault})
			if err != nil {
				return nil, fmt.Errorf("thinpool: %w", err)
			}
			p.dm = c
			cleanup = append(cleanup, p.dm.Close)
		}
		return p.dm, nil
	}
	if p.st, err = openStoreSettling(ctx, filepath.Join(root, "metadata.db"), openDM, p.log); err != nil {
		return nil, err
	}
	cleanup = append(cleanup, p.st.close)
	if _, err := openDM(); err != nil {
		return nil, err
	}
	// What this Open made in the kernel goes again if it fails: the pool
	// device, then the devices under it.
	cleanup = append(cleanup, func() error {
		var errs []error
		for i := len(p.made) - 1; i >= 0; i-- {
			if err := p.dm.Remove(p.made[i], devmapper.RemoveOptions{}); err != nil && !devmapper.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("thinpool: remove %q made by the failed open: %w", p.made[i], err))
			}
		}
		return errors.Join(errs...)
	})

	if err := p.initPrefix(); err != nil {
		return nil, err
	}
	fresh, err := p.st.metaString(keyPoolName)
	if err != nil {
		return nil, err
	}
	isNew := fresh == ""

	switch opts.source() {
	case "external":
		err = p.useExternal(isNew)
	case "devices":
		err = p.useDevices(isNew)
	case "direct":
		err = p.useDirect(isNew)
	default:
		err = p.useLoopback(isNew, &cleanup)
	}
	if err != nil {
		return nil, err
	}
	if err := p.recordPool(isNew); err != nil {
		return nil, err
	}
	if err := p.recover(ctx); err != nil {
		return nil, err
	}
	if err := p.processNames(ctx, p.pending); err != nil {
		p.log.WithError(err).Warn("deferred deletions still pending")
	}
	if p.grow != nil {
		p.startAutoGrow()
	}
	p.armSpace(false)
	p.made = nil // kept from now on
	return p, nil
}

func (p *Pool) initPrefix() error {
	prefix, err := p.st.metaString(keyPrefix)
	if err != nil {
		return err
	}
	if prefix == "" {
		sum := sha256.Sum256([]byte(p.opts.Root))
		prefix = "dmthin-" + hex.EncodeToString(sum[:4])
		err := p.st.update(func(tx txn) error { return tx.Bucket(bucketMeta).Put(keyPrefix, []byte(prefix)) })
		if err != nil {
			return fmt.Errorf("thinpool: save prefix: %w", err)
		}
	}
	p.prefix = prefix
	return nil
}

func (p *Pool) recordPool(isNew bool) error {
	return p.st.update(func(tx txn) error {
		meta := tx.Bucket(bucketMeta)
		if !isNew {
			if old := string(meta.Get(keyPoolName)); old != p.name {
				return fmt.Errorf("%w: store belongs to pool %q, options give %q", ErrPoolNotOurs, old, p.name)
			}
		}
		if err := meta.Put(keyPoolName, []byte(p.name)); err != nil {
			return err
		}
		return putU64(meta, keyBlockSize, p.blockSize.Bytes())
	})
}

// Name returns the pool's device-mapper name.
func (p *Pool) Name() string { return p.name }

// Dev returns the pool's device number.
func (p *Pool) Dev() devmapper.Dev { return p.dev }

// BlockSize returns the data block size in bytes.
func (p *Pool) BlockSize() int64 { return int64(p.blockSize.Bytes()) }

// dmName is the device-mapper name of a thin device.
func (p *Pool) dmName(name string) string { return p.prefix + "-" + name }

// enter guards against use after Close; call the result when done.
func (p *Pool) enter() (func(), error) {
	p.closeMu.RLock()
	if p.closed {
		p.closeMu.RUnlock()
		return nil, ErrClosed
	}
	return p.closeMu.RUnlock, nil
}

// Close releases the store and file handles. Active devices, the pool and
// its loop devices stay, for the next Open to find.
//
// With AutoGrow, the growth loop ends first, and a pool table that queues
// writes while waiting for growth is switched to error_if_no_space.
func (p *Pool) Close() error {
	p.closeOnce.Do(func() { close(p.closing) })
	growErr := p.stopAutoGrow(true) // may reload the table, which re-arms the guard
	p.stopSpace()
	p.closeMu.Lock()
	defer p.closeMu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	errs := []error{growErr}
	// Bring the pool's transaction id up to the last change and commit it
	// with the staged outcomes (st.close). A pool that refuses (read-only)
	// keeps its id: the next Open probes the records it does not cover.
	p.msgMu.Lock()
	if err := p.syncTxIDLocked(); err != nil {
		p.log.WithError(err).Warn("close: could not move the pool's transaction id")
	} else if err := p.st.update(func(tx txn) error { return putU64(tx.Bucket(bucketMeta), keyTxID, p.txid) }); err != nil {
		errs = append(errs, fmt.Errorf("thinpool: close: record transaction id: %w", err))
	}
	p.msgMu.Unlock()
	for _, l := range []*loopback.Device{p.dataLoop, p.metaLoop} {
		if l != nil {
			errs = append(errs, l.Close())
		}
	}
	errs = append(errs, p.st.close(), p.dm.Close())
	return errors.Join(errs...)
}

// Shutdown deactivates every thin device of the pool and, unless the pool is
// external, removes the pool device and detaches its loop devices; then
// closes. Records stay: the next Open brings everything back.
func (p *Pool) Shutdown(ctx context.Context) error {
	if err := p.stopAutoGrow(false); err != nil {
		return err
	}
	done, err := p.enter()
	if err != nil {
		return err
	}
	p.stopSpace() // the pool device goes away under the watcher
	var errs []error
	// While the pool is there to be told (Close does it too, but the pool
	// may be gone by then).
	p.msgMu.Lock()
	if err := p.syncTxIDLocked(); err != nil {
		p.log.WithError(err).Warn("shutdown: could not move the pool's transaction id")
	}
	p.msgMu.Unlock()
	recs, err := p.st.all()
	if err != nil {
		errs = append(errs, err)
	}
	for _, r := range recs {
		if err := p.removeDM(ctx, p.dmName(r.Name), false); err != nil {
			errs = append(errs, fmt.Errorf("deactivate %q: %w", r.Name, err))
		}
	}
	if !p.external && len(errs) == 0 {
		if err := p.removeDM(ctx, p.name, false); err != nil {
			errs = append(errs, fmt.Errorf("remove pool: %w", err))
		} else {
			p.msgMu.Lock()
			p.poolGoneLocked()
			p.msgMu.Unlock()
			if err := p.removeDirect(ctx); err != nil {
				errs = append(errs, err)
			}
		}
		for _, l := range []*loopback.Device{p.dataLoop, p.metaLoop} {
			if l != nil {
				if err := l.Detach(); err != nil {
					errs = append(errs, err)
				}
			}
		}
		p.dataLoop, p.metaLoop = nil, nil
	}
	done()
	return errors.Join(append(errs, p.Close())...)
}

// devOf returns the device number of a block device path.
func devOf(path string) (devmapper.Dev, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return devmapper.Dev{}, fmt.Errorf("thinpool: %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return devmapper.Dev{}, fmt.Errorf("thinpool: %s is not a block device", path)
	}
	return devmapper.DecodeDev(st.Rdev), nil
}
