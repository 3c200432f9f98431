package thinpool

// A pool on one block device given whole (Options.Device), Docker's
// dm.directlvm_device without LVM. internal/devlabel lays the device out:
// a label at offset 0, a metadata area, then a data area. Two linear
// device-mapper devices, <prefix>-pool-meta and <prefix>-pool-data, map
// the areas; the pool sits over them as over any two devices.
//
// First layout, in this order, each step durable before the next:
//
//  1. the store records the new label's uuid (the intent);
//  2. the first 4 KiB of the metadata area are zeroed (the kernel then
//     formats fresh metadata instead of opening stale metadata);
//  3. the label is written (O_DIRECT, fsync);
//  4. the linear devices and the pool are made; the store records the pool.
//
// A crash before 3 leaves no label: the next Open lays the device out
// again (it is checked as blank again, since nothing before the metadata
// area was written). A crash after 3 leaves a label whose uuid the store
// knows: the next Open recognises it and goes on from 4, without zeroing
// anything (the metadata area holds either zeroes or the kernel's fresh
// metadata).
//
// Grow (at Open, and in Pool.Grow) when the device is bigger than the label
// says: the label is rewritten with the bigger data area first, then the
// data linear device is reloaded, then the pool. The label may so be
// ahead of the kernel, never behind: a crash between the steps leaves a
// label that covers all the pool uses, and the next Open redoes the
// reloads from it. The other order could leave, after a crash, a label
// smaller than the pool's data device, and the next Open would have to
// shrink a data area the pool uses.

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/devmapper"
	"github.com/dmthin/dmthin/internal/devlabel"
)

// keyDeviceUUID in the meta bucket: the uuid of the label on Options.Device.
var keyDeviceUUID = []byte("device-uuid")

// openHook, when set, is given to every Pool Open makes, so that tests can
// crash the process at a step of Open itself.
var openHook func(step string)

// openFault, when set, is given to the device-mapper client of every Pool
// Open makes (devmapper.Options.Fault), so that tests can fail an ioctl
// of Open itself.
var openFault func(op, name string) unix.Errno

// directDevice is the state of a pool on a whole device.
type directDevice struct {
	path  string
	dev   devmapper.Dev
	label devlabel.Label
}

// Names of the linear devices, after the pool's prefix.
const (
	directMetaSuffix = "-pool-meta"
	directDataSuffix = "-pool-data"
)

// isPoolDevice reports whether dm is the pool or one of the devices under
// it, which are no thin device's and never strays.
func (p *Pool) isPoolDevice(dm string) bool { return isPoolDM(p.name, p.prefix, dm) }

// isPoolDM reports whether the dm name dm is the pool or a device under it
// (the linear devices of a pool on a whole device), which no thin device's
// name can be (checkName reserves them).
func isPoolDM(pool, prefix, dm string) bool {
	return dm == pool || dm == prefix+directMetaSuffix || dm == prefix+directDataSuffix
}

// useDirect finds or lays out the label on Options.Device and builds the
// pool over the linear devices that map its areas.
func (p *Pool) useDirect(isNew bool) (err error) {
	path := p.opts.Device
	p.name = p.prefix + "-pool"
	dev, err := devOf(path)
	if err != nil {
		return err
	}
	p.direct = &directDevice{path: path, dev: dev}
	metaName, dataName := p.prefix+directMetaSuffix, p.prefix+directDataSuffix
	p.metaPath, p.dataPath = p.dm.NodePath(metaName), p.dm.NodePath(dataName)

	known, err := p.st.metaString(keyDeviceUUID)
	if err != nil {
		return err
	}
	if !isNew && known == "" {
		return fmt.Errorf("%w: the store under %s has a pool that is not on a whole device; refusing Device %s", ErrPoolNotOurs, p.opts.Root, path)
	}
	held := false
	for _, n := range []string{p.name, metaName, dataName} {
		ok, err := p.dm.Exists(n)
		if err != nil {
			return err
		}
		held = held || ok
	}
	// Claim the device unless our own dm devices hold it already: O_EXCL
	// fails for a mounted filesystem or another holder.
	var claim *os.File
	if !held {
		if claim, err = claimDevice(path); err != nil {
			return err
		}
		defer func() {
			if claim != nil {
				err = errors.Join(err, claim.Close())
			}
		}()
	}
	size, err := blockDevSize(path)
	if err != nil {
		return err
	}
	label, err := devlabel.Read(path)
	switch {
	case err == nil && label.UUID.String() == known:
		// Ours: a pool made before, or a layout a crash interrupted
		// after its label was written.
	case held && err == nil:
		return fmt.Errorf("%w: %s is held by this pool's devices but holds the label %s, the store knows %q", ErrPoolNotOurs, path, label.UUID, known)
	case held:
		return fmt.Errorf("thinpool: the device is held by this pool's devices: %w", err)
	case err == nil && !isNew:
		return fmt.Errorf("%w: %s holds the dmthin label %s, the store under %s knows %s", ErrPoolNotOurs, path, label.UUID, p.opts.Root, known)
	case err == nil && !p.opts.ForceDevices:
		return fmt.Errorf("%w: %s holds the pool of another dmthin store (label %s); refusing to build a pool over it (Options.ForceDevices overrides)", ErrDeviceInUse, path, label.UUID)
	case errors.Is(err, devlabel.ErrNoLabel) && !isNew:
		return fmt.Errorf("thinpool: %s has no dmthin label but the store under %s has a pool on it: refusing to make an empty one", path, p.opts.Root)
	case err != nil && !errors.Is(err, devlabel.ErrNoLabel) && (!isNew || !p.opts.ForceDevices):
		// Corrupt, or of a version we do not read.
		return fmt.Errorf("thinpool: %w; refusing to use it (a new pool can overwrite it with Options.ForceDevices)", err)
	default:
		// A new pool: the device is blank, or forced.
		if errors.Is(err, devlabel.ErrNoLabel) {
			if err := checkBlank(claim, p.opts.ForceDevices); err != nil {
				return err
			}
		}
		if label, err = p.layoutDirect(claim, size); err != nil {
			return err
		}
	}
	p.direct.label = label
	if err := p.growDirectLabel(size); err != nil {
		return err
	}
	if claim != nil {
		// The linear devices are about to hold the device; the kernel
		// refuses a second exclusive holder.
		err := claim.Close()
		claim = nil
		if err != nil {
			return fmt.Errorf("thinpool: release claim of %s: %w", path, err)
		}
	}
	md, err := p.ensureLinear(metaName, label.MetaOffset, label.MetaLength)
	if err != nil {
		return err
	}
	dd, err := p.ensureLinear(dataName, p.direct.label.DataOffset, p.direct.label.DataLength)
	if err != nil {
		return err
	}
	p.step("direct:linear")
	return p.ensurePool(md, dd)
}

// layoutDirect plans the device's layout and writes it: uuid in the store,
// zeroed metadata superblock, label (see the order at the top of the file).
func (p *Pool) layoutDirect(f *os.File, size int64) (devlabel.Label, error) {
	var uuid devlabel.UUID
	if _, err := rand.Read(uuid[:]); err != nil {
		return devlabel.Label{}, fmt.Errorf("thinpool: label uuid: %w", err)
	}
	bs := p.opts.BlockSize
	if stored := p.storedBlockSize(); stored != 0 {
		bs = int64(stored.Bytes())
	}
	label, err := devlabel.Plan(uuid, size, bs)
	if err != nil {
		return devlabel.Label{}, fmt.Errorf("thinpool: lay out %s: %w", p.opts.Device, err)
	}
	if err := p.st.update(func(tx txn) error { return tx.Bucket(bucketMeta).Put(keyDeviceUUID, []byte(uuid.String())) }); err != nil {
		return devlabel.Label{}, fmt.Errorf("thinpool: save label uuid: %w", err)
	}
	p.step("direct:layout:intent")
	if err := zeroHeader(f, label.MetaOffset); err != nil {
		return devlabel.Label{}, err
	}
	p.step("direct:layout:zeroed")
	if err := devlabel.Write(p.opts.Device, label); err != nil {
		return devlabel.Label{}, fmt.Errorf("thinpool: %w", err)
	}
	p.step("direct:layout:label")
	p.log.WithFields(map[string]any{
		"device": p.opts.Device, "label": uuid.String(),
		"metadata": label.MetaLength, "data": label.DataLength,
	}).Info("device laid out for a new pool")
	return label, nil
}

// growDirectLabel rewrites the label with a bigger data area when the device
// has grown by at least a block. The linear device and the pool are grown
// after it, by the caller.
func (p *Pool) growDirectLabel(size int64) error {
	grown, ok, err := p.direct.label.Grow(size)
	if err != nil {
		return fmt.Errorf("thinpool: %s: %w", p.direct.path, err)
	}
	if !ok {
		return nil
	}
	if err := devlabel.Write(p.direct.path, grown); err != nil {
		return fmt.Errorf("thinpool: grow: %w", err)
	}
	p.log.WithFields(map[string]any{"device": p.direct.path, "from": p.direct.label.DataLength, "to": grown.DataLength}).Info("data area grown in the label")
	p.direct.label = grown
	p.step("direct:grow:label")
	return nil
}

// growDirectLocked grows the label and the data linear device to the
// device's size; Grow then reloads the pool. Caller holds msgMu.
func (p *Pool) growDirectLocked() error {
	size, err := blockDevSize(p.direct.path)
	if err != nil {
		return err
	}
	if err := p.growDirectLabel(size); err != nil {
		return err
	}
	l := p.direct.label
	_, err = p.ensureLinear(p.prefix+directDataSuffix, l.DataOffset, l.DataLength)
	return err
}

// ensureLinear makes the linear device name map length bytes of the whole
// device from off, creating it, or growing it when it maps less. It
// refuses to shrink a device or to remap it elsewhere.
func (p *Pool) ensureLinear(name string, off, length int64) (devmapper.Dev, error) {
	want := devmapper.Table{{
		Start:  0,
		Length: devmapper.Sectors(length / devmapper.SectorSize),
		Params: devmapper.LinearParams{Device: p.direct.dev, Offset: devmapper.Sectors(off / devmapper.SectorSize)},
	}}
	info, err := p.dm.Info(name)
	if err == nil && info.LiveTable && info.Suspended {
		// A crash inside a reload: resume makes the loaded table live.
		if err := p.resume(name); err != nil {
			return devmapper.Dev{}, err
		}
		info, err = p.dm.Info(name)
	}
	switch {
	case err == nil && info.LiveTable:
		tab, err := p.dm.Table(name)
		if err != nil {
			return devmapper.Dev{}, err
		}
		cur, ok := tab[0].Params.(devmapper.LinearParams)
		if len(tab) != 1 || !ok || cur != want[0].Params {
			return devmapper.Dev{}, fmt.Errorf("thinpool: existing %q maps %v, want %v", name, tab, want)
		}
		switch {
		case tab[0].Length > want[0].Length:
			return devmapper.Dev{}, fmt.Errorf("thinpool: %q maps %d sectors, the label of %s only %d: refusing to shrink it", name, tab[0].Length, p.direct.path, want[0].Length)
		case tab[0].Length < want[0].Length:
			if err := p.reload(name, want); err != nil {
				return devmapper.Dev{}, fmt.Errorf("thinpool: grow %q: %w", name, err)
			}
			p.step("direct:grow:linear")
		}
		if _, err := p.dm.EnsureNode(name); err != nil {
			return devmapper.Dev{}, err
		}
		return info.Dev, nil
	case err == nil:
		// No live table: a crash inside our own create.
		if err := p.dm.Remove(name, devmapper.RemoveOptions{}); err != nil {
			return devmapper.Dev{}, fmt.Errorf("thinpool: remove half-made %q: %w", name, err)
		}
	case !devmapper.IsNotFound(err):
		return devmapper.Dev{}, err
	}
	info, err = p.dm.Activate(name, "", want, false)
	if err != nil {
		return devmapper.Dev{}, fmt.Errorf("thinpool: create %q: %w", name, err)
	}
	p.made = append(p.made, name)
	return info.Dev, nil
}

// removeDirect removes the linear devices (the pool over them is gone).
func (p *Pool) removeDirect(ctx context.Context) error {
	if p.direct == nil {
		return nil
	}
	var errs []error
	for _, n := range []string{p.prefix + directDataSuffix, p.prefix + directMetaSuffix} {
		if err := p.removeDM(ctx, n, false); err != nil {
			errs = append(errs, fmt.Errorf("remove %q: %w", n, err))
		}
	}
	return errors.Join(errs...)
}

// blockDevSize returns the size of the block device at path (BLKGETSIZE64).
func blockDevSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("thinpool: size of %s: %w", path, err)
	}
	defer f.Close()
	size, err := unix.IoctlGetUint64(int(f.Fd()), unix.BLKGETSIZE64)
	if err != nil {
		return 0, fmt.Errorf("thinpool: size of %s: %w", path, err)
	}
	return int64(size), nil
}
