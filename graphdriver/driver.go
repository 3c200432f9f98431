package graphdriver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/docker/go-units"
	"github.com/sirupsen/logrus"

	"github.com/dmthin/dmthin/layerstore"
)

// DriverName is what String returns.
const DriverName = "dmthin"

// deferredInterval is how often deferred deletions are retried. A variable
// so that tests can shorten it.
var deferredInterval = layerstore.DefaultDeferredInterval

// rootfsDir is the directory, on every layer's filesystem, that callers see
// as the layer's root.
const rootfsDir = "rootfs"

// Driver is the storage driver: Docker's names and options over a
// layerstore.Store, which holds the device logic. Its methods are safe for
// concurrent use; calls for one layer id are serialised.
type Driver struct {
	home    string
	cfg     Config
	log     logrus.FieldLogger
	store   *layerstore.Store
	selinux bool // apply mount labels

	// stepHook is handed to the store (crash tests).
	stepHook func(step string)
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
// It opens the layer store (see layerstore.Open): the thin pool, settling
// what a crash left half-done; the base device, made and formatted on first
// use, verified and grown when dm.basesize asks for more afterwards; and
// the layers a previous process left mounted, which Put or Cleanup
// unmounts.
func New(home string, cfg Config, logger logrus.FieldLogger) (*Driver, error) {
	return newDriver(home, cfg, logger, nil)
}

func newDriver(home string, cfg Config, logger logrus.FieldLogger, hook func(string)) (_ *Driver, err error) {
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
	d := &Driver{home: home, cfg: cfg, log: logger.WithField("storage-driver", DriverName), selinux: selinuxEnabled(), stepHook: hook}
	d.store, err = layerstore.Open(context.Background(), d.storeOptions())
	if err != nil {
		if err = storeErr(err); !errors.Is(err, ErrInvalidOptions) {
			err = fmt.Errorf("graphdriver: %w", err) // the option errors say whose they are
		}
		return nil, cfg.thinPoolDevError(err)
	}
	d.home = d.store.Root() // symbolic links resolved
	d.log.WithFields(logrus.Fields{"home": home, "base-size": units.BytesSize(float64(d.store.BaseSize()))}).Info("storage driver ready")
	return d, nil
}

// storeOptions translates the configuration for the layer store.
func (d *Driver) storeOptions() layerstore.Options {
	return layerstore.Options{
		Root:                 d.home,
		Pool:                 d.cfg.poolOptions(d.home),
		BaseSize:             d.cfg.BaseSize,
		Filesystem:           d.cfg.Filesystem,
		MkfsArgs:             d.cfg.MkfsArgs,
		XFSNoSpaceMaxRetries: d.cfg.XFSNoSpaceMaxRetries,
		RootfsDir:            rootfsDir,
		Discard:              d.cfg.blkDiscard(),
		DeferredRemoval:      d.cfg.DeferredRemoval,
		DeferredDeletion:     d.cfg.DeferredDeletion,
		SyncRemove:           d.cfg.SyncRemove,
		DeferredInterval:     deferredInterval,
		Logger:               d.log,
		StepHook:             d.stepHook,
	}
}

// String returns the driver's name.
func (d *Driver) String() string { return DriverName }

// Home returns the driver's home directory.
func (d *Driver) Home() string { return d.home }

func (d *Driver) mntDir() string { return filepath.Join(d.home, "mnt") }

// Create makes layer id as a snapshot of parent, or of the base device when
// parent is "". opts may carry StorageOpt["size"]; see CreateOpts.
// On error nothing was made.
func (d *Driver) Create(id, parent string, opts *CreateOpts) error {
	if err := ValidateID(id); err != nil {
		return err
	}
	if parent != "" {
		if err := ValidateID(parent); err != nil {
			return fmt.Errorf("parent: %w", err)
		}
	}
	size, err := d.storageSize(opts)
	if err != nil {
		return err
	}
	return storeErr(d.store.Create(context.Background(), id, parent, size))
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
			if base := d.store.BaseSize(); n < base {
				return 0, fmt.Errorf("%w: storage option size=%s is below the base device size %s", ErrInvalidOptions,
					v, units.BytesSize(float64(base)))
			}
			// Devices are sized in 512-byte sectors.
			size = (n + 511) &^ 511
		default:
			return 0, fmt.Errorf("%w: unknown storage option %q (this driver knows \"size\")", ErrInvalidOptions, k)
		}
	}
	return size, nil
}

// Remove removes layer id: when it returns, Exists is false and id can be
// used by Create at once. Its device is discarded and deleted in the
// background (Drain waits for that; a crash leaves it for the next Init),
// or before Remove returns with dm.sync_remove=true. When the device is
// held by someone else, Remove fails with ErrBusy, unless deferred deletion
// is on: then the layer is gone for the driver and its device is deleted
// once closed.
func (d *Driver) Remove(id string) error {
	return storeErr(d.store.Remove(context.Background(), id))
}

// Drain waits for the background work of earlier Puts and Removes: the
// deactivation of unmounted layers' devices and the deletion of removed
// layers' devices. It is not part of Docker's interface; nobody has to call
// it (Cleanup makes one last attempt, and Init finishes what is left).
func (d *Driver) Drain(ctx context.Context) error {
	return storeErr(d.store.Drain(ctx))
}

// Exists reports whether layer id exists (and is not being deleted).
func (d *Driver) Exists(id string) bool { return d.store.Exists(id) }

// Get mounts layer id (on first use) and returns the path of its root: a
// directory that holds only what was put in it, owned by root with mode 0755
// when fresh. Each Get needs a Put. mountLabel, when not empty, is the
// SELinux context of the files (used on the first Get only, which mounts;
// ignored when SELinux is not enabled).
func (d *Driver) Get(id, mountLabel string) (string, error) {
	if !d.selinux {
		mountLabel = "" // as Docker does: no context= where SELinux is off
	}
	flags, data := mountOptions(d.cfg.MountOptions, mountLabel)
	return d.store.Get(context.Background(), id, layerstore.MountOptions{Flags: flags, Data: data})
}

// Put releases a Get. The last one unmounts the layer; its device is
// deactivated in the background (deferred, when dm.use_deferred_removal is
// on and the device is still held by someone else).
func (d *Driver) Put(id string) error { return d.store.Put(context.Background(), id) }

// Cleanup unmounts every layer, deactivates every device and, unless the
// pool is external (dm.thinpooldev), removes the pool and detaches its loop
// devices. Layers and their contents stay for the next Init. The driver
// cannot be used afterwards.
func (d *Driver) Cleanup() error {
	if err := d.store.Close(); err != nil {
		return fmt.Errorf("graphdriver: cleanup: %w", err)
	}
	return nil
}
