package thinpool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/sirupsen/logrus"

	"github.com/dmthin/dmthin/devmapper"
	"github.com/dmthin/dmthin/internal/proc"
)

// An Inspector reads a pool without opening it: a consistent copy of its
// records (see storecopy.go) and the kernel's live state. It works while
// another process (the engine) has the pool open, and changes nothing in
// the store or the pool; Check and Usage reserve a metadata snapshot of an
// active pool for the time thin_dump or thin_ls runs, and release it.
//
// What it reports is a moment's view: the engine may change the pool right
// after. Check of a pool in use compares two views and reports only what
// both show.
type Inspector struct {
	root  string
	dm    *devmapper.Client
	log   logrus.FieldLogger
	inUse bool
	// holderDying: the process holding the store was killed (HolderDying).
	holderDying bool
	// p is a read-only Pool over the store copy: its describe and status
	// code is reused, nothing that changes the pool is ever called on it.
	p         *Pool
	dropStore func() error
	active    bool // the pool device exists in the kernel
}

// InspectOptions say which pool to inspect.
type InspectOptions struct {
	// Root is the pool's Root: the directory that holds metadata.db.
	// Required.
	Root string
	// Logger receives warnings; nil discards them.
	Logger logrus.FieldLogger
}

// Pool kinds, as Report.Kind names them.
const (
	KindLoopback = "loopback"
	KindDevices  = "devices"
	KindDirect   = "direct" // one whole block device (Options.Device)
	KindExternal = "external"
)

// ErrNoPool: Root holds no pool (no metadata.db, or one that never
// recorded a pool).
var ErrNoPool = errors.New("thinpool: no pool under this root")

// Inspect starts inspecting the pool under opts.Root.
func Inspect(opts InspectOptions) (_ *Inspector, err error) {
	if opts.Root == "" {
		return nil, fmt.Errorf("%w: Root is required", ErrInvalidOptions)
	}
	if opts.Logger == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		opts.Logger = l
	}
	root, err := filepath.Abs(opts.Root)
	if err != nil {
		return nil, fmt.Errorf("thinpool: root: %w", err)
	}
	dbPath := filepath.Join(root, "metadata.db")
	if _, err := os.Stat(dbPath); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s does not exist", ErrNoPool, dbPath)
		}
		return nil, fmt.Errorf("thinpool: %w", err)
	}
	in := &Inspector{root: root, log: opts.Logger}
	if in.dm, err = devmapper.Open(devmapper.Options{Logger: opts.Logger}); err != nil {
		return nil, fmt.Errorf("thinpool: %w", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, in.Close())
		}
	}()
	if err := in.refresh(); err != nil {
		return nil, err
	}
	return in, nil
}

// refresh takes a new copy of the store and looks at the pool device again.
func (in *Inspector) refresh() error {
	if in.dropStore != nil {
		if err := in.dropStore(); err != nil {
			return err
		}
		in.dropStore = nil
	}
	dbPath := filepath.Join(in.root, "metadata.db")
	inUse, err := storeInUse(dbPath)
	if err != nil {
		return fmt.Errorf("thinpool: %w", err)
	}
	st, drop, err := copyStore(dbPath, os.TempDir())
	if err != nil {
		return err
	}
	in.dropStore = drop
	in.inUse = inUse
	in.holderDying = false
	if inUse {
		holders, err := proc.LockHolders(dbPath)
		for _, pid := range holders {
			in.holderDying = in.holderDying || (err == nil && proc.Dying(pid))
		}
	}
	zero := 0
	p := &Pool{st: st, dm: in.dm, log: in.log, opts: Options{Root: in.root, MinFreeSpacePercent: &zero}, closing: make(chan struct{})}
	if p.prefix, err = st.metaString(keyPrefix); err != nil {
		return err
	}
	if p.name, err = st.metaString(keyPoolName); err != nil {
		return err
	}
	if p.name == "" || p.prefix == "" {
		return fmt.Errorf("%w: %s records no pool yet", ErrNoPool, dbPath)
	}
	p.blockSize = p.storedBlockSize()
	p.external = p.name != p.prefix+"-pool"
	uuid, err := st.metaString(keyDeviceUUID)
	if err != nil {
		return err
	}
	switch {
	case !p.external && uuid != "":
		// A pool on a whole device (Kind); which device, only
		// Options asks (directDisk).
		p.direct = &directDevice{}
	case !p.external:
		p.dataPath = filepath.Join(in.root, "devicemapper", dataFileName)
		p.metaPath = filepath.Join(in.root, "devicemapper", metadataFileName)
	}
	in.p = p
	info, err := in.dm.Info(p.name)
	switch {
	case err == nil && info.LiveTable:
		in.active = true
		p.dev = info.Dev
	case err == nil || devmapper.IsNotFound(err):
		in.active = false
	default:
		return fmt.Errorf("thinpool: pool device %s: %w", p.name, err)
	}
	return nil
}

// Close drops the store copy and the device-mapper handle.
func (in *Inspector) Close() error {
	var errs []error
	if in.dropStore != nil {
		errs = append(errs, in.dropStore())
		in.dropStore = nil
	}
	if in.dm != nil {
		errs = append(errs, in.dm.Close())
		in.dm = nil
	}
	return errors.Join(errs...)
}

// InUse reports whether another process (or another Pool of this process)
// had the pool open when the records were read. Changing commands must
// wait until it stops: Open would fail with ErrLocked.
func (in *Inspector) InUse() bool { return in.inUse }

// HolderDying reports whether the process that holds the pool open was
// killed and has not exited yet: it will never change the pool again, and
// Open settles what it left (see deadowner.go) instead of failing with
// ErrLocked. A changing command may go on.
func (in *Inspector) HolderDying() bool { return in.holderDying }

// Active reports whether the pool device is in the kernel.
func (in *Inspector) Active() bool { return in.active }

// Kind is KindLoopback, KindDevices, KindDirect or KindExternal.
func (in *Inspector) Kind() string {
	switch {
	case in.p.external:
		return KindExternal
	case in.p.direct != nil:
		return KindDirect
	case fileExists(in.p.metaPath):
		return KindLoopback
	}
	return KindDevices
}

func fileExists(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular()
}

// Report is an inspector's view of a pool: its kernel status (when the
// pool device is active) and what its records say.
type Report struct {
	// Status: the space fields, NeedsCheck, TransactionID and EventNr are
	// the kernel's, zero when the pool is not active; the device counts
	// and FaultyDevices come from the records and the kernel's device
	// list. MinFreeSpacePercent is what the process that last opened the
	// pool enforces, as it recorded it (0 for a store older than that).
	Status
	// Mode is the pool's mode ("rw", "ro", "out_of_data_space", "Fail",
	// "Error"), or "inactive" when the pool device is not in the kernel.
	Mode string `json:"mode"`
	Root string `json:"root"`
	Kind string `json:"kind"`
	// Active: the pool device is in the kernel.
	Active bool `json:"active"`
	// InUse: a process (the engine) has the pool open.
	InUse bool `json:"in_use"`
	// HolderDying: the process that has it open was killed and cannot
	// exit yet, mostly because it left a device suspended (Suspended).
	HolderDying bool `json:"holder_dying"`
	// Suspended names the pool's devices left suspended (FindingSuspended).
	Suspended []string `json:"suspended"`
	// Prefix of the pool's device-mapper names.
	Prefix string `json:"prefix"`
	// LowWaterMark in bytes of free data space, from the pool's table
	// (0 when not active).
	LowWaterMark int64 `json:"low_water_mark"`
	// MetadataSnapshotHeld: the pool holds a metadata snapshot (a check
	// running, or one a killed check left).
	MetadataSnapshotHeld bool `json:"metadata_snapshot_held"`
	// StoreTransactionID is the pool transaction id the records last
	// agreed with.
	StoreTransactionID uint64 `json:"store_transaction_id"`
	// Deleting names the devices whose deletion is deferred until they
	// are closed, retired (removed for the caller, deleted in the
	// background) or started and not finished: the background work.
	Deleting []string `json:"deleting"`
}

// Report describes the pool.
func (in *Inspector) Report(ctx context.Context) (Report, error) {
	p := in.p
	r := Report{Root: in.root, Kind: in.Kind(), Active: in.active, InUse: in.inUse, HolderDying: in.holderDying, Prefix: p.prefix, Mode: "inactive", Deleting: []string{}}
	suspended, err := p.suspendedDMs()
	if err != nil {
		return r, err
	}
	r.Suspended = append([]string{}, suspended...)
	if in.active {
		ps, err := p.poolStatus()
		if err != nil {
			return r, err
		}
		st, err := p.status()
		if err != nil {
			return r, err
		}
		r.Status = st
		r.Mode = st.Mode.String()
		// status() names the paths of an open pool's own; set them here.
		r.DataDevice, r.MetadataDevice = "", ""
		r.MetadataSnapshotHeld = ps.HeldMetadataRoot != nil
		tab, err := in.dm.Table(p.name)
		if err != nil {
			return r, fmt.Errorf("thinpool: %w", err)
		}
		if tp, ok := tab[0].Params.(devmapper.ThinPoolParams); ok && len(tab) == 1 {
			r.LowWaterMark = int64(tp.LowWaterMark) * int64(tp.BlockSize.Bytes())
			r.BlockSize = int64(tp.BlockSize.Bytes())
			if in.Kind() == KindDevices {
				r.DataDevice, r.MetadataDevice = blockDevPath(tp.Data), blockDevPath(tp.Metadata)
			}
		}
	} else {
		r.Status = Status{Name: p.name, BlockSize: int64(p.blockSize.Bytes()), External: p.external}
		recs, err := p.st.all()
		if err != nil {
			return r, err
		}
		for _, rec := range recs {
			r.Devices++
			switch rec.State {
			case StateDeferredDelete:
				r.DeferredDeletes++
			case StateFaulty:
				r.Faulty++
				r.FaultyDevices = append(r.FaultyDevices, FaultyDevice{Name: rec.Name, Reason: rec.Fault})
			}
		}
	}
	if r.Kind == KindLoopback {
		r.DataFile, r.MetadataFile = p.dataPath, p.metaPath
		if free, err := fsFree(filepath.Dir(p.dataPath)); err == nil && in.active {
			r.DataAvailable = min(r.DataAvailable, free)
			r.MetadataAvailable = min(r.MetadataAvailable, free)
		}
	}
	minFree, err := p.st.metaString(keyMinFree)
	if err != nil {
		return r, err
	}
	r.MinFreeSpacePercent = int(u64([]byte(minFree)))
	recs, err := p.st.all()
	if err != nil {
		return r, err
	}
	for _, rec := range recs {
		if rec.State == StateDeferredDelete || rec.State == StateDeleting || rec.State == StateRetired {
			r.Deleting = append(r.Deleting, rec.Name)
		}
	}
	// Devices of ours that no record explains are faulty too (the engine
	// reports those it could not remove; an inspector sees them all).
	strays, err := in.strayDMs(recs)
	if err != nil {
		return r, err
	}
	for _, s := range strays {
		r.FaultyDevices = append(r.FaultyDevices, FaultyDevice{Name: s, Reason: "device-mapper device without a record"})
	}
	if r.StoreTransactionID, _, err = p.st.txIDs(); err != nil {
		return r, err
	}
	return r, nil
}

// strayDMs lists the device-mapper devices with the pool's prefix that no
// record names.
func (in *Inspector) strayDMs(recs []*record) ([]string, error) {
	all, err := in.p.prefixDMs()
	if err != nil {
		return nil, err
	}
	known := make(map[string]bool, len(recs))
	for _, r := range recs {
		known[in.p.dmName(r.Name)] = true
	}
	var out []string
	for _, name := range all {
		if !known[name] {
			out = append(out, name)
		}
	}
	return out, nil
}

// prefixDMs lists the device-mapper devices whose names carry the pool's
// prefix, sorted: thin devices and strays. The pool and the devices under
// it (isPoolDevice) are left out.
func (p *Pool) prefixDMs() ([]string, error) {
	live, err := p.dm.List()
	if err != nil {
		return nil, fmt.Errorf("thinpool: list dm devices: %w", err)
	}
	var out []string
	for _, l := range live {
		if !p.isPoolDevice(l.Name) && strings.HasPrefix(l.Name, p.prefix+"-") {
			out = append(out, l.Name)
		}
	}
	slices.Sort(out)
	return out, nil
}

// suspendedDMs lists the devices of the pool (the pool, the devices under
// it, its thin devices) that are suspended, sorted.
func (p *Pool) suspendedDMs() ([]string, error) { return suspendedDevices(p.dm, p.name, p.prefix) }

// suspendedDevices lists the suspended devices of the pool named pool whose
// device-mapper names carry prefix: the pool, the devices under it, its
// thin devices; sorted.
func suspendedDevices(c *devmapper.Client, pool, prefix string) ([]string, error) {
	live, err := c.List()
	if err != nil {
		return nil, fmt.Errorf("thinpool: list dm devices: %w", err)
	}
	var out []string
	for _, l := range live {
		if !isPoolDM(pool, prefix, l.Name) && !strings.HasPrefix(l.Name, prefix+"-") {
			continue
		}
		if info, err := c.Info(l.Name); err == nil && info.Suspended {
			out = append(out, l.Name)
		}
	}
	slices.Sort(out)
	return out, nil
}

// blockDevPath names a block device by its number: /dev/block/MAJ:MIN where
// udev made it, else /dev/ and the kernel's name for it.
func blockDevPath(d devmapper.Dev) string {
	p := fmt.Sprintf("/dev/block/%d:%d", d.Major, d.Minor)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	data, err := os.ReadFile(fmt.Sprintf("/sys/dev/block/%d:%d/uevent", d.Major, d.Minor))
	if err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if name, ok := strings.CutPrefix(line, "DEVNAME="); ok {
				return "/dev/" + name
			}
		}
	}
	return p
}

// Devices describes every device, in name order, with its live state.
func (in *Inspector) Devices() ([]Device, error) { return in.p.List() }

// Options returns Options that open this pool as it is: the same kind,
// files or devices, block size, and (when the pool is active) the same
// low-water mark and features, so that Open neither grows a loopback file
// to a default size nor reloads the pool with other features. It fails
// for a pool over devices that is not active: its devices are known only
// to the engine's configuration. A pool on a whole device is found: by the
// table of its metadata linear device when active, else by the label the
// store records (see directDisk).
func (in *Inspector) Options() (Options, error) {
	p := in.p
	zero := 0
	o := Options{Root: in.root, BlockSize: int64(p.blockSize.Bytes()), MinFreeSpacePercent: &zero}
	var tp *devmapper.ThinPoolParams
	if in.active {
		tab, err := in.dm.Table(p.name)
		if err != nil {
			return o, fmt.Errorf("thinpool: %w", err)
		}
		if t, ok := tab[0].Params.(devmapper.ThinPoolParams); ok && len(tab) == 1 {
			tp = &t
			o.BlockSize = int64(t.BlockSize.Bytes())
			o.LowWaterMark = int64(t.LowWaterMark) * o.BlockSize
			o.SkipBlockZeroing = t.Features.SkipBlockZeroing
			o.NoDiscardPassdown = t.Features.NoDiscardPassdown
			o.QueueIfNoSpace = !t.Features.ErrorIfNoSpace
		}
	}
	switch in.Kind() {
	case KindExternal:
		o.PoolDevice = p.name
		o.BlockSize = 0
	case KindLoopback:
		for _, f := range []struct {
			path string
			size *int64
		}{{p.dataPath, &o.LoopDataSize}, {p.metaPath, &o.LoopMetadataSize}} {
			fi, err := os.Stat(f.path)
			if err != nil {
				return o, fmt.Errorf("thinpool: %w", err)
			}
			*f.size = fi.Size()
		}
	case KindDirect:
		path, err := in.directDisk()
		if err != nil {
			return o, err
		}
		o.Device = path
	case KindDevices:
		if tp == nil {
			return o, fmt.Errorf("thinpool: the pool %s over devices is not active: its data and metadata devices are in the engine's configuration only", p.name)
		}
		o.DataDevice, o.MetadataDevice = blockDevPath(tp.Data), blockDevPath(tp.Metadata)
	}
	return o, o.Validate()
}

// directDisk names the block device a whole-device pool is on: the device
// the table of <prefix>-pool-meta maps when it is live, else the one block
// device whose dmthin label has the uuid the store records.
func (in *Inspector) directDisk() (string, error) {
	p := in.p
	meta := p.prefix + directMetaSuffix
	tab, err := in.dm.Table(meta)
	switch {
	case err == nil && len(tab) > 0:
		if lp, ok := tab[0].Params.(devmapper.LinearParams); ok && len(tab) == 1 {
			return blockDevPath(lp.Device), nil
		}
		return "", fmt.Errorf("thinpool: %s maps %v, not one linear target over the pool's disk", meta, tab)
	case err != nil && !devmapper.IsNotFound(err):
		return "", fmt.Errorf("thinpool: table of %s: %w", meta, err)
	}
	// Not there, or without a live table (a create a crash cut short):
	// the label says which disk.
	uuid, err := p.st.metaString(keyDeviceUUID)
	if err != nil {
		return "", err
	}
	return findLabelled(sysClassBlock, uuid)
}
