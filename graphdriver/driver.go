package graphdriver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/docker/go-units"
	"github.com/sirupsen/logrus"

	"github.com/dmthin/dmthin/internal/keyedmutex"
	"github.com/dmthin/dmthin/thinpool"
)

// DriverName is what String returns.
const DriverName = "dmthin"

// deferredInterval is how often deferred deletions are retried. A variable
// so that tests can shorten it.
var deferredInterval = 30 * time.Second

// Driver is the storage driver. Its methods are safe for concurrent use;
// calls for one layer id are serialised.
type Driver struct {
	home     string
	cfg      Config
	log      logrus.FieldLogger
	pool     *thinpool.Pool
	baseSize int64 // the base device's size, fixed at Init
	selinux  bool  // apply mount labels

	closeMu sync.RWMutex // held for reading by every operation, for writing by Cleanup
	closed  bool

	locks keyedmutex.Map

	mu     sync.Mutex // guards mounts
	mounts map[string]*mount

	stopDeferred context.CancelFunc
	deferredDone chan struct{}
}

// CreateOpts are the options of Create and CreateReadWrite, as in Docker.
type CreateOpts struct {
	// MountLabel is accepted for Docker compatibility; the label is given
	// to Get, which mounts.
	MountLabel string
	// StorageOpt: "size" (e.g. "20G") makes the layer's device and
	// filesystem that big; it must be at least the base size.
	StorageOpt map[string]string
}

// Init opens (making on first use) the driver whose state lives under home,
// configured with Docker's dm.* options (see ParseOptions). logger may be
// nil.
func Init(home string, options []string, logger logrus.FieldLogger) (*Driver, error) {
	cfg, err := ParseOptions(options)
	if err != nil {
		return nil, err
	}
	return New(home, cfg, logger)
}

// New is Init with a Config built in Go.
//
// It opens the thin pool (settling what a crash left half-done and retrying
// deferred deletions), then makes and formats the base device on first use,
// or verifies that the base device is the one this home recorded, growing
// it when cfg.BaseSize asks for more. Layers left mounted by a previous
// process are adopted: Put or Cleanup unmounts them.
func New(home string, cfg Config, logger logrus.FieldLogger) (_ *Driver, err error) {
	if err := errors.Join(cfg.Validate(), cfg.checkDevices()); err != nil {
		return nil, err
	}
	if cfg.Filesystem == "" {
		cfg.Filesystem = FilesystemExt4
	}
	if logger == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		logger = l
	}
	if home == "" {
		return nil, fmt.Errorf("%w: empty home directory", ErrInvalidOptions)
	}
	if home, err = filepath.Abs(home); err != nil {
		return nil, fmt.Errorf("graphdriver: home: %w", err)
	}
	d := &Driver{home: home, cfg: cfg, log: logger.WithField("storage-driver", DriverName), mounts: map[string]*mount{}, selinux: selinuxEnabled()}
	for _, dir := range []string{home, d.mntDir()} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("graphdriver: %w", err)
		}
	}
	ctx := context.Background()
	popts := cfg.poolOptions(home)
	popts.Logger = d.log
	if d.pool, err = thinpool.Open(ctx, popts); err != nil {
		return nil, cfg.thinPoolDevError(fmt.Errorf("graphdriver: open pool: %w", err))
	}
	defer func() {
		if err != nil {
			// Leave the kernel as Init found it: nothing of ours active.
			if serr := d.pool.Shutdown(ctx); serr != nil {
				err = errors.Join(err, fmt.Errorf("graphdriver: shut the pool down after a failed init: %w", serr))
			}
		}
	}()
	if err := d.adoptMounts(); err != nil {
		return nil, err
	}
	if err := d.setupBase(ctx); err != nil {
		return nil, err
	}
	if cfg.DeferredDeletion {
		d.startDeferredWorker()
	}
	d.log.WithFields(logrus.Fields{"home": home, "pool": d.pool.Name(), "base-size": units.BytesSize(float64(d.baseSize))}).Info("storage driver ready")
	return d, nil
}

// String returns the driver's name.
func (d *Driver) String() string { return DriverName }

// Home returns the driver's home directory.
func (d *Driver) Home() string { return d.home }

func (d *Driver) mntDir() string              { return filepath.Join(d.home, "mnt") }
func (d *Driver) mountPoint(id string) string { return filepath.Join(d.home, "mnt", id) }

// rootfsDir is the directory, on every layer's filesystem, that callers see
// as the layer's root.
const rootfsDir = "rootfs"

// enter guards an operation against Cleanup; call the result when done.
func (d *Driver) enter() (func(), error) {
	d.closeMu.RLock()
	if d.closed {
		d.closeMu.RUnlock()
		return nil, ErrClosed
	}
	return d.closeMu.RUnlock, nil
}

// lockLayer enters the driver, checks id and locks it; release undoes
// both. The methods that act on one layer start with it.
func (d *Driver) lockLayer(id string) (release func(), err error) {
	if err := ValidateID(id); err != nil {
		return nil, err
	}
	done, err := d.enter()
	if err != nil {
		return nil, err
	}
	unlock := d.locks.Lock(id)
	return func() { unlock(); done() }, nil
}

// Create makes layer id as a snapshot of parent, or of the base device when
// parent is "". opts may carry StorageOpt["size"]; see CreateOpts.
// On error nothing was made.
func (d *Driver) Create(id, parent string, opts *CreateOpts) error {
	if parent != "" {
		if err := ValidateID(parent); err != nil {
			return fmt.Errorf("parent: %w", err)
		}
	}
	size, err := d.storageSize(opts)
	if err != nil {
		return err
	}
	release, err := d.lockLayer(id)
	if err != nil {
		return err
	}
	defer release()
	return d.createLocked(context.Background(), id, parent, size)
}

// CreateReadWrite makes a container's read-write layer. With this driver it
// is the same as Create.
func (d *Driver) CreateReadWrite(id, parent string, opts *CreateOpts) error {
	return d.Create(id, parent, opts)
}

// storageSize parses the storage options; 0 means none was given.
func (d *Driver) storageSize(opts *CreateOpts) (int64, error) {
	if opts == nil {
		return 0, nil
	}
	var size int64
	for k, v := range opts.StorageOpt {
		switch strings.ToLower(k) {
		case "size":
			n, err := units.RAMInBytes(v)
			if err != nil || n <= 0 {
				return 0, fmt.Errorf("%w: storage option size=%q: want a size such as 20G", ErrInvalidOptions, v)
			}
			if n < d.baseSize {
				return 0, fmt.Errorf("%w: storage option size=%s is below the base device size %s", ErrInvalidOptions,
					v, units.BytesSize(float64(d.baseSize)))
			}
			// Devices are sized in 512-byte sectors.
			size = (n + 511) &^ 511
		default:
			return 0, fmt.Errorf("%w: unknown storage option %q (this driver knows \"size\")", ErrInvalidOptions, k)
		}
	}
	return size, nil
}

func (d *Driver) createLocked(ctx context.Context, id, parent string, size int64) error {
	name := deviceName(id)
	if dev, err := d.pool.Lookup(name); err == nil {
		if !deleting(dev) {
			return fmt.Errorf("%w: %q", ErrExists, id)
		}
		// A pending deletion of the same id: finish it if it can be.
		perr := d.retryDeletions(ctx)
		if _, err := d.pool.Lookup(name); err == nil {
			return fmt.Errorf("%w: %q is still being deleted: %w", ErrExists, id, perr)
		}
	} else if !errors.Is(err, thinpool.ErrNotFound) {
		return fmt.Errorf("graphdriver: create %q: %w", id, err)
	}

	parentDev := baseDevice
	if parent != "" {
		parentDev = deviceName(parent)
	}
	pdev, err := d.pool.Lookup(parentDev)
	if errors.Is(err, thinpool.ErrNotFound) || (err == nil && deleting(pdev)) {
		return fmt.Errorf("%w: %q (creating %q)", ErrParentNotFound, parent, id)
	}
	if err != nil {
		return fmt.Errorf("graphdriver: create %q: parent %q: %w", id, parent, err)
	}
	want := max(pdev.Size, d.baseSize)
	if size != 0 {
		if size < pdev.Size {
			return fmt.Errorf("%w: storage option size %s is below the size of parent %q (%s)", ErrInvalidOptions,
				units.BytesSize(float64(size)), parent, units.BytesSize(float64(pdev.Size)))
		}
		want = size
	}

	if _, err := d.pool.Snapshot(ctx, name, parentDev, want); err != nil {
		if errors.Is(err, thinpool.ErrNotFound) {
			return fmt.Errorf("%w: %q (creating %q): %w", ErrParentNotFound, parent, id, err)
		}
		return fmt.Errorf("graphdriver: create %q: %w", id, err)
	}
	if want > pdev.Size {
		if err := d.growLocked(ctx, id, name); err != nil {
			derr := d.pool.Delete(ctx, name, thinpool.DeleteOptions{})
			return errors.Join(fmt.Errorf("graphdriver: create %q: grow its filesystem to %s: %w", id, units.BytesSize(float64(want)), err), derr)
		}
	}
	d.log.WithFields(logrus.Fields{"id": id, "parent": parent, "size": want}).Debug("layer created")
	return nil
}

// Remove unmounts layer id if it is mounted, deactivates and deletes its
// device. When the device is held by someone else, Remove fails with ErrBusy,
// unless deferred deletion is on: then the layer is gone for the driver
// (Exists is false) and its device is deleted once closed.
func (d *Driver) Remove(id string) error {
	release, err := d.lockLayer(id)
	if err != nil {
		return err
	}
	defer release()
	ctx := context.Background()
	name := deviceName(id)
	dev, err := d.pool.Lookup(name)
	if errors.Is(err, thinpool.ErrNotFound) {
		return fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	if err != nil {
		return fmt.Errorf("graphdriver: remove %q: %w", id, err)
	}
	if dev.DeferredDelete {
		return nil // its deletion waits for the device to be closed
	}
	if m := d.mountOf(id); m != nil {
		if m.refs > 0 {
			d.log.WithFields(logrus.Fields{"id": id, "references": m.refs}).Warn("removing a layer that is still in use")
		}
		if err := d.unmountLocked(id, d.cfg.DeferredDeletion); err != nil {
			return fmt.Errorf("graphdriver: remove %q: %w", id, err)
		}
	}
	err = d.pool.Delete(ctx, name, thinpool.DeleteOptions{Discard: d.cfg.blkDiscard(), Deferred: d.cfg.DeferredDeletion})
	if errors.Is(err, thinpool.ErrBusy) {
		if d.cfg.DeferredRemoval {
			// The layer stays, but its device goes away at last close.
			if derr := d.pool.Deactivate(ctx, name, true); derr != nil {
				err = errors.Join(err, derr)
			}
		}
		return fmt.Errorf("%w: remove %q: %w", ErrBusy, id, err)
	}
	if err != nil {
		return fmt.Errorf("graphdriver: remove %q: %w", id, err)
	}
	if err := os.Remove(d.mountPoint(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		d.log.WithError(err).WithField("id", id).Warn("mount point left behind")
	}
	d.log.WithField("id", id).Debug("layer removed")
	return nil
}

// Exists reports whether layer id exists (and is not being deleted).
func (d *Driver) Exists(id string) bool {
	done, err := d.enter()
	if err != nil {
		return false
	}
	defer done()
	if ValidateID(id) != nil {
		return false
	}
	dev, err := d.pool.Lookup(deviceName(id))
	return err == nil && dev.State == thinpool.StateReady
}

// Cleanup unmounts every layer, deactivates every device and, unless the
// pool is external (dm.thinpooldev), removes the pool and detaches its loop
// devices. Layers and their contents stay for the next Init. The driver
// cannot be used afterwards.
func (d *Driver) Cleanup() error {
	if d.stopDeferred != nil {
		d.stopDeferred()
		<-d.deferredDone
	}
	d.closeMu.Lock()
	defer d.closeMu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	var errs []error
	for _, id := range d.mountedIDs() {
		if err := d.unmountLocked(id, true); err != nil {
			errs = append(errs, fmt.Errorf("unmount %q: %w", id, err))
		}
	}
	if err := d.pool.Shutdown(context.Background()); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("graphdriver: cleanup: %w", err)
	}
	return nil
}

// deleting reports whether a device is on its way out: its deletion is
// deferred until it is closed, or was started and did not finish.
func deleting(dev thinpool.Device) bool {
	return dev.DeferredDelete || dev.State == thinpool.StateDeleting
}

// retryDeletions finishes the deletions that can be finished now: deferred
// ones whose device was closed (thinpool's ProcessDeferred), and layers
// whose deletion the pool started but could not finish. The latter happens
// when a deferred removal has just fired: the kernel removes the device in
// a work queue, and until its table is torn down the pool refuses to delete
// the thin device (EBUSY); thinpool then leaves the record "deleting" for
// its next Open, and retrying the delete settles it now.
func (d *Driver) retryDeletions(ctx context.Context) error {
	errs := []error{d.pool.ProcessDeferred(ctx)}
	devs, err := d.pool.List()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, dev := range devs {
		if _, ok := layerID(dev.Name); ok && dev.State == thinpool.StateDeleting {
			if err := d.pool.Delete(ctx, dev.Name, thinpool.DeleteOptions{}); err != nil && !errors.Is(err, thinpool.ErrNotFound) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// startDeferredWorker retries deferred deletions every deferredInterval
// until Cleanup.
func (d *Driver) startDeferredWorker() {
	ctx, cancel := context.WithCancel(context.Background())
	d.stopDeferred = cancel
	d.deferredDone = make(chan struct{})
	go func() {
		defer close(d.deferredDone)
		t := time.NewTicker(deferredInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			done, err := d.enter()
			if err != nil {
				return
			}
			if err := d.retryDeletions(ctx); err != nil {
				d.log.WithError(err).Debug("deletions still pending")
			}
			done()
		}
	}()
}
