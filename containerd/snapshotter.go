package containerd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/sirupsen/logrus"

	"github.com/dmthin/dmthin/layerstore"
	"github.com/dmthin/dmthin/thinpool"
)

// Snapshotter is a containerd snapshotter over a dmthin layer store: every
// snapshot is a thin snapshot of its parent's device (of the base device
// for a snapshot without a parent), so an empty Prepare runs no mkfs.
//
// A snapshot's containerd metadata (key, kind, parent, labels, times) is
// kept in its thin device's labels, in the same record and transaction as
// the device itself: there is no second store that could drift from the
// pool. The index in memory is rebuilt from those records at New.
//
// It is safe for concurrent use.
type Snapshotter struct {
	cfg Config
	ls  *layerstore.Store
	log logrus.FieldLogger

	// hook, when set, is called at each named step (crash tests kill the
	// process there).
	hook func(step string)

	mu      sync.Mutex
	index   map[string]*entry // by key (active, view) or name (committed)
	removed []string          // layers an earlier version marked removed (labelRemoved), for Cleanup
	closed  bool
}

// entry is one snapshot in the index.
type entry struct {
	layer string // layerstore name of its device
	info  snapshots.Info
	usage int64 // committed: mapped bytes, fixed at Commit
	// busy: an operation on this snapshot is under way (it is being made,
	// committed or removed); others fail until it ends.
	busy bool
	// hidden: being made; not visible to Stat, Walk or as a parent.
	hidden bool
}

// New opens (making on first use) the snapshotter cfg describes. A second
// snapshotter on the same root_path is refused.
func New(ctx context.Context, cfg Config, log logrus.FieldLogger) (*Snapshotter, error) {
	return open(ctx, cfg, log, nil)
}

// Steps of the snapshotter's own multi-step changes, for crash tests.
const (
	stepPrepareDevice     = "prepare:device"     // the layer made, its snapshot labels not yet written
	stepPrepareLabelled   = "prepare:labelled"   // labels written, the device not yet active
	stepCommitDeactivated = "commit:deactivated" // device deactivated, still recorded active
	stepCommitLabelled    = "commit:labelled"
	stepRemoveDeactivated = "remove:deactivated" // without async_remove
)

func (s *Snapshotter) step(name string) {
	if s.hook != nil {
		s.hook(name)
	}
}

func open(ctx context.Context, cfg Config, log logrus.FieldLogger, hook func(string)) (*Snapshotter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		l := logrus.New()
		l.SetOutput(discard{})
		log = l
	}
	sz, _ := cfg.sizes()
	opts := layerstore.Options{
		Root:       cfg.RootPath,
		BaseSize:   sz.base,
		Filesystem: cfg.FsType,
		Discard:    cfg.DiscardBlocks,
		// async_remove is the layer store's asynchronous removal: one
		// mechanism for both adapters.
		SyncRemove: !cfg.AsyncRemove,
		Logger:     log.WithField("snapshotter", "dmthin"),
		StepHook:   hook,
		Pool: thinpool.Options{
			Root:       filepath.Join(cfg.RootPath, "pool"),
			PoolDevice: cfg.PoolName,
		},
	}
	if fields := strings.Fields(cfg.FsOptions); len(fields) > 0 {
		opts.MkfsArgs = fields
	}
	if cfg.PoolName == "" {
		opts.Pool.LoopDataSize, opts.Pool.LoopMetadataSize = sz.data, sz.meta
		opts.Pool.AutoGrow = cfg.autoGrow(sz)
		// The loopback pool does not zero new blocks (skip_block_zeroing),
		// as graphdriver's pool and Docker's: ext4 never reads a block it
		// has not written (see graphdriver's blockZeroing for the
		// numbers and the caveat).
		opts.Pool.SkipBlockZeroing = true
	}
	ls, err := layerstore.Open(ctx, opts)
	if errors.Is(err, thinpool.ErrLocked) {
		return nil, fmt.Errorf("dmthin snapshotter: another process holds root_path %s: %w", cfg.RootPath, err)
	}
	if err != nil {
		return nil, fmt.Errorf("dmthin snapshotter: %w", configErr(err))
	}
	s := &Snapshotter{cfg: cfg, ls: ls, log: opts.Logger, index: map[string]*entry{}, hook: hook}
	if err := s.load(ctx); err != nil {
		return nil, errors.Join(err, ls.Close())
	}
	return s, nil
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// load builds the index from the layers' labels and settles what a crash
// left: a layer without a snapshot key was made by a Prepare or View that
// did not finish, and is removed; a committed snapshot still active is
// deactivated.
func (s *Snapshotter) load(ctx context.Context) error {
	layers, err := s.ls.Layers()
	if err != nil {
		return fmt.Errorf("dmthin snapshotter: %w", err)
	}
	var errs []error
	for _, l := range layers {
		e, removed, err := decodeEntry(l.Name, l.Device.Labels)
		switch {
		case err != nil:
			s.log.WithError(err).WithField("layer", l.Name).Warn("recovery: removing a snapshot left half-made")
			if rerr := s.ls.Remove(ctx, l.Name); rerr != nil {
				errs = append(errs, rerr)
			}
		case removed:
			s.removed = append(s.removed, l.Name)
		default:
			if other, dup := s.index[e.info.Name]; dup {
				errs = append(errs, fmt.Errorf("dmthin snapshotter: layers %s and %s both hold snapshot %q", other.layer, l.Name, e.info.Name))
				continue
			}
			s.index[e.info.Name] = e
			if e.info.Kind == snapshots.KindCommitted && l.Device.Active {
				if derr := s.ls.Deactivate(ctx, l.Name); derr != nil {
					s.log.WithError(derr).WithField("key", e.info.Name).Warn("committed snapshot left active")
				}
			}
		}
	}
	for _, e := range s.index {
		if p := e.info.Parent; p != "" {
			if pe, ok := s.index[p]; !ok || pe.info.Kind != snapshots.KindCommitted {
				errs = append(errs, fmt.Errorf("dmthin snapshotter: snapshot %q names parent %q, which is not a committed snapshot", e.info.Name, p))
			}
		}
	}
	return errors.Join(errs...)
}

// Close releases the store: the devices of snapshots not in use are
// deactivated; mounts that containerd holds stay containerd's. A second
// Close does nothing.
func (s *Snapshotter) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	err := s.ls.Close()
	if errors.Is(err, thinpool.ErrBusy) || errors.Is(err, layerstore.ErrBusy) {
		// Devices containerd still has mounted stay active for it.
		s.log.WithError(err).Info("snapshots still mounted by containerd stay active")
		return nil
	}
	return err
}

// Store is the layer store underneath, for status and inspection.
func (s *Snapshotter) Store() *layerstore.Store { return s.ls }

// lookup returns the visible entry for key. Callers hold mu.
func (s *Snapshotter) lookup(key string) (*entry, error) {
	if s.closed {
		return nil, fmt.Errorf("dmthin snapshotter is closed: %w", errdefs.ErrUnavailable)
	}
	e, ok := s.index[key]
	if !ok || e.hidden {
		return nil, fmt.Errorf("snapshot %q: %w", key, errdefs.ErrNotFound)
	}
	return e, nil
}

// claim marks key's entry busy for an operation; release with s.done.
func (s *Snapshotter) claim(key string) (*entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, err := s.lookup(key)
	if err != nil {
		return nil, err
	}
	if e.busy {
		return nil, fmt.Errorf("snapshot %q is busy with another operation: %w", key, errdefs.ErrUnavailable)
	}
	e.busy = true
	return e, nil
}

func (s *Snapshotter) done(e *entry) {
	s.mu.Lock()
	e.busy = false
	s.mu.Unlock()
}

// Stat returns the info of the snapshot key names (a key or a committed
// name).
func (s *Snapshotter) Stat(ctx context.Context, key string) (snapshots.Info, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, err := s.lookup(key)
	if err != nil {
		return snapshots.Info{}, err
	}
	return cloneInfo(e.info), nil
}

// Update changes a snapshot's labels, the only mutable field: all of them
// with no fieldpaths or "labels", one with "labels.KEY".
func (s *Snapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (snapshots.Info, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, err := s.lookup(info.Name)
	if err != nil {
		return snapshots.Info{}, err
	}
	labels := map[string]string{}
	if len(fieldpaths) == 0 {
		fieldpaths = []string{"labels"}
	}
	for k, v := range e.info.Labels {
		labels[k] = v
	}
	for _, fp := range fieldpaths {
		switch {
		case fp == "labels":
			labels = map[string]string{}
			for k, v := range info.Labels {
				labels[k] = v
			}
		case strings.HasPrefix(fp, "labels."):
			k := strings.TrimPrefix(fp, "labels.")
			if v := info.Labels[k]; v != "" {
				labels[k] = v
			} else {
				delete(labels, k)
			}
		default:
			return snapshots.Info{}, fmt.Errorf("snapshot %q: field %q cannot be updated: %w", info.Name, fp, errdefs.ErrInvalidArgument)
		}
	}
	if err := validateLabels(labels); err != nil {
		return snapshots.Info{}, err
	}
	next := cloneInfo(e.info)
	next.Labels = labels
	next.Updated = time.Now().UTC()
	if err := s.ls.SetLabels(ctx, e.layer, labelDiff(encodeInfo(e.info), encodeInfo(next))); err != nil {
		return snapshots.Info{}, fmt.Errorf("snapshot %q: update: %w", info.Name, err)
	}
	e.info = next
	return cloneInfo(next), nil
}

// Usage is the space the snapshot's thin device has mapped in the pool:
// exact for the device, counting blocks it shares with its parent, as
// containerd's devmapper snapshotter reports it. A committed snapshot's
// usage is fixed at Commit.
func (s *Snapshotter) Usage(ctx context.Context, key string) (snapshots.Usage, error) {
	e, err := s.claim(key)
	if err != nil {
		return snapshots.Usage{}, err
	}
	defer s.done(e)
	if e.info.Kind == snapshots.KindCommitted {
		return snapshots.Usage{Size: e.usage}, nil
	}
	n, err := s.mappedBytes(ctx, e.layer)
	if err != nil {
		return snapshots.Usage{}, fmt.Errorf("snapshot %q: usage: %w", key, err)
	}
	return snapshots.Usage{Size: n}, nil
}

// mappedBytes reads a layer's mapped bytes, activating its device first
// if needed (the kernel counts mappings of active devices only).
func (s *Snapshotter) mappedBytes(ctx context.Context, layer string) (int64, error) {
	if _, err := s.ls.Activate(ctx, layer); err != nil {
		return 0, err
	}
	l, err := s.ls.Lookup(layer)
	if err != nil {
		return 0, err
	}
	return l.Device.MappedBytes, nil
}

// Mounts returns how to mount an active snapshot or a view.
func (s *Snapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	e, err := s.claim(key)
	if err != nil {
		return nil, err
	}
	defer s.done(e)
	return s.mounts(ctx, e)
}

func (s *Snapshotter) mounts(ctx context.Context, e *entry) ([]mount.Mount, error) {
	if e.info.Kind == snapshots.KindCommitted {
		return nil, fmt.Errorf("snapshot %q is committed; prepare a view of it to mount it: %w", e.info.Name, errdefs.ErrFailedPrecondition)
	}
	node, err := s.ls.Activate(ctx, e.layer)
	if err != nil {
		return nil, fmt.Errorf("snapshot %q: %w", e.info.Name, err)
	}
	opts := []string{}
	if data := s.ls.MountData(); data != "" {
		// xfs: every snapshot carries its parent's UUID.
		opts = append(opts, strings.Split(data, ",")...)
	}
	if e.info.Kind == snapshots.KindView {
		// Mounted read-only. Its device is a snapshot of its own, so a
		// journal left to replay is replayed there, never in the parent.
		opts = append(opts, "ro")
	}
	return []mount.Mount{{Type: s.ls.Filesystem(), Source: node, Options: opts}}, nil
}

// Prepare makes an active snapshot key of the committed snapshot parent
// ("" for an empty one) and returns how to mount it read-write.
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.create(ctx, snapshots.KindActive, key, parent, opts)
}

// View makes a read-only snapshot key of parent and returns how to mount
// it.
func (s *Snapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.create(ctx, snapshots.KindView, key, parent, opts)
}

func (s *Snapshotter) create(ctx context.Context, kind snapshots.Kind, key, parent string, opts []snapshots.Opt) (_ []mount.Mount, err error) {
	if key == "" {
		return nil, fmt.Errorf("empty snapshot key: %w", errdefs.ErrInvalidArgument)
	}
	now := time.Now().UTC()
	info := snapshots.Info{Kind: kind, Name: key, Parent: parent, Created: now, Updated: now}
	for _, o := range opts {
		if err := o(&info); err != nil {
			return nil, err
		}
	}
	if err := validateLabels(info.Labels); err != nil {
		return nil, err
	}
	layer, err := newLayerName()
	if err != nil {
		return nil, err
	}

	// Reserve the key (and hold the parent) while the device is made.
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, fmt.Errorf("dmthin snapshotter is closed: %w", errdefs.ErrUnavailable)
	}
	if _, ok := s.index[key]; ok {
		s.mu.Unlock()
		return nil, fmt.Errorf("snapshot %q: %w", key, errdefs.ErrAlreadyExists)
	}
	var pe *entry
	parentLayer := ""
	if parent != "" {
		var perr error
		if pe, perr = s.lookup(parent); perr != nil {
			s.mu.Unlock()
			return nil, fmt.Errorf("parent of %q: %w", key, perr)
		}
		if pe.info.Kind != snapshots.KindCommitted {
			s.mu.Unlock()
			return nil, fmt.Errorf("parent %q of %q is not committed: %w", parent, key, errdefs.ErrFailedPrecondition)
		}
		if pe.busy {
			s.mu.Unlock()
			return nil, fmt.Errorf("parent %q of %q is busy with another operation: %w", parent, key, errdefs.ErrUnavailable)
		}
		parentLayer = pe.layer
	}
	e := &entry{layer: layer, info: info, busy: true, hidden: true}
	s.index[key] = e
	s.mu.Unlock()

	defer func() {
		s.mu.Lock()
		if err != nil {
			delete(s.index, key)
		} else {
			e.busy, e.hidden = false, false
		}
		s.mu.Unlock()
	}()

	// The device first, then its snapshot labels in one durable update: a
	// crash in between leaves a layer without a key, which New removes.
	if err := s.ls.Create(ctx, layer, parentLayer, 0); err != nil {
		return nil, fmt.Errorf("snapshot %q: %w", key, mapStoreErr(err))
	}
	s.step(stepPrepareDevice)
	undo := func(err error) error {
		return errors.Join(err, s.ls.Remove(context.WithoutCancel(ctx), layer))
	}
	if err := s.ls.SetLabels(ctx, layer, encodeInfo(info)); err != nil {
		return nil, undo(fmt.Errorf("snapshot %q: %w", key, err))
	}
	s.step(stepPrepareLabelled)
	m, err := s.mounts(ctx, e)
	if err != nil {
		return nil, undo(err)
	}
	return m, nil
}

// Commit turns the active snapshot key into the committed snapshot name,
// read-only from then on. Its device must no longer be mounted.
func (s *Snapshotter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) (err error) {
	if name == "" {
		return fmt.Errorf("empty snapshot name: %w", errdefs.ErrInvalidArgument)
	}
	e, err := s.claim(key)
	if err != nil {
		return err
	}
	defer s.done(e)
	if e.info.Kind != snapshots.KindActive {
		return fmt.Errorf("snapshot %q is %s; only an active snapshot can be committed: %w", key, e.info.Kind, errdefs.ErrFailedPrecondition)
	}
	next := cloneInfo(e.info)
	// A committed snapshot is a new one, as containerd's own snapshotters
	// see it: created (and last updated) now.
	next.Kind, next.Name = snapshots.KindCommitted, name
	next.Created = time.Now().UTC()
	next.Updated = next.Created
	for _, o := range opts {
		if err := o(&next); err != nil {
			return err
		}
	}
	if err := validateLabels(next.Labels); err != nil {
		return err
	}
	s.mu.Lock()
	if _, ok := s.index[name]; ok {
		s.mu.Unlock()
		return fmt.Errorf("snapshot %q: %w", name, errdefs.ErrAlreadyExists)
	}
	// Hold the name while the commit is under way.
	s.index[name] = &entry{layer: e.layer, info: next, busy: true, hidden: true}
	s.mu.Unlock()
	committed := false
	defer func() {
		s.mu.Lock()
		if committed {
			delete(s.index, key)
			e.info = next
			s.index[name] = e
		} else {
			delete(s.index, name)
		}
		s.mu.Unlock()
	}()

	usage, err := s.mappedBytes(ctx, e.layer)
	if err != nil {
		return fmt.Errorf("commit %q: %w", key, err)
	}
	if err := s.ls.Deactivate(ctx, e.layer); err != nil {
		if errors.Is(err, layerstore.ErrBusy) {
			return fmt.Errorf("commit %q: its device is still mounted: %w: %w", key, errdefs.ErrFailedPrecondition, err)
		}
		return fmt.Errorf("commit %q: %w", key, err)
	}
	s.step(stepCommitDeactivated)
	labels := labelDiff(encodeInfo(e.info), encodeInfo(next))
	labels[labelUsage] = fmt.Sprint(usage)
	if err := s.ls.SetLabels(ctx, e.layer, labels); err != nil {
		return fmt.Errorf("commit %q: %w", key, err)
	}
	s.step(stepCommitLabelled)
	e.usage = usage
	committed = true
	return nil
}

// Remove removes a snapshot that has no children. With async_remove the
// removal is durable and the key free when Remove returns; the device is
// deleted in the background, and Cleanup waits for that.
func (s *Snapshotter) Remove(ctx context.Context, key string) (err error) {
	e, err := s.claim(key)
	if err != nil {
		return err
	}
	removed := false
	defer func() {
		s.mu.Lock()
		e.busy = false
		if removed {
			delete(s.index, key)
		}
		s.mu.Unlock()
	}()
	s.mu.Lock()
	for _, o := range s.index {
		if o.info.Parent == key && o != e {
			s.mu.Unlock()
			return fmt.Errorf("remove %q: it has children (%q): %w", key, o.info.Name, errdefs.ErrFailedPrecondition)
		}
	}
	s.mu.Unlock()

	if s.cfg.AsyncRemove {
		// The layer store retires the device (its removal durable, the
		// name free; a device still mounted is refused) and deletes it in
		// the background; Cleanup waits for that.
		if err := s.ls.Remove(ctx, e.layer); err != nil && !errors.Is(err, layerstore.ErrNotFound) {
			if errors.Is(err, layerstore.ErrBusy) {
				return fmt.Errorf("remove %q: its device is still mounted: %w: %w", key, errdefs.ErrFailedPrecondition, err)
			}
			return fmt.Errorf("remove %q: %w", key, mapStoreErr(err))
		}
		removed = true
		return nil
	}
	if e.info.Kind != snapshots.KindCommitted {
		if err := s.ls.Deactivate(ctx, e.layer); err != nil {
			if errors.Is(err, layerstore.ErrBusy) {
				return fmt.Errorf("remove %q: its device is still mounted: %w: %w", key, errdefs.ErrFailedPrecondition, err)
			}
			if !errors.Is(err, layerstore.ErrNotFound) {
				return fmt.Errorf("remove %q: %w", key, err)
			}
		}
	}
	s.step(stepRemoveDeactivated)
	if err := s.ls.Remove(ctx, e.layer); err != nil && !errors.Is(err, layerstore.ErrNotFound) {
		return fmt.Errorf("remove %q: %w", key, mapStoreErr(err))
	}
	removed = true
	return nil
}

// Cleanup waits for the deletion of the devices of snapshots removed with
// async_remove (layerstore's Drain), and removes the layers an earlier
// version only marked removed.
func (s *Snapshotter) Cleanup(ctx context.Context) error {
	s.mu.Lock()
	todo := s.removed
	s.removed = nil
	s.mu.Unlock()
	var errs, left = []error{}, []string{}
	for _, layer := range todo {
		if err := s.ls.Remove(ctx, layer); err != nil && !errors.Is(err, layerstore.ErrNotFound) {
			errs = append(errs, err)
			left = append(left, layer)
		}
	}
	s.mu.Lock()
	s.removed = append(s.removed, left...)
	s.mu.Unlock()
	if err := s.ls.Drain(ctx); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Walk calls fn for every snapshot that matches all of filters (containerd's
// filter syntax over kind, name, parent and labels.KEY; several filter
// strings are alternatives).
func (s *Snapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, fs ...string) error {
	match, err := parseFilters(fs)
	if err != nil {
		return err
	}
	s.mu.Lock()
	var infos []snapshots.Info
	for _, e := range s.index {
		if !e.hidden && match(e.info) {
			infos = append(infos, cloneInfo(e.info))
		}
	}
	s.mu.Unlock()
	sort.Slice(infos, func(i, j int) bool { return infos[i].Name < infos[j].Name })
	// fn runs without the lock: it may call back into the snapshotter.
	for _, info := range infos {
		if err := fn(ctx, info); err != nil {
			return err
		}
	}
	return nil
}

// newLayerName is a fresh layer name. Snapshot keys may hold any byte, so
// they are never part of a device name.
func newLayerName() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return "s" + hex.EncodeToString(b[:]), nil
}

// mapStoreErr gives the layer store's errors containerd's classes.
func mapStoreErr(err error) error {
	switch {
	case errors.Is(err, layerstore.ErrNotFound):
		return fmt.Errorf("%w: %w", errdefs.ErrNotFound, err)
	case errors.Is(err, layerstore.ErrExists):
		return fmt.Errorf("%w: %w", errdefs.ErrAlreadyExists, err)
	case errors.Is(err, layerstore.ErrBusy):
		return fmt.Errorf("%w: %w", errdefs.ErrFailedPrecondition, err)
	case errors.Is(err, thinpool.ErrPoolFull):
		return fmt.Errorf("%w: %w", errdefs.ErrResourceExhausted, err)
	}
	return err
}

// sanity check: the interfaces containerd asks for.
var (
	_ snapshots.Snapshotter = (*Snapshotter)(nil)
	_ snapshots.Cleaner     = (*Snapshotter)(nil)
)
