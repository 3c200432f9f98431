package layerstore

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

	"github.com/dmthin/dmthin/fsys"
	"github.com/dmthin/dmthin/internal/keyedmutex"
	"github.com/dmthin/dmthin/thinpool"
)

// Defaults and limits.
const (
	// DefaultBaseSize is the size of a new base device, as in Docker.
	DefaultBaseSize = 10 * units.GiB
	// MinBaseSize is the smallest base device accepted: ext4 with its
	// journal needs a few megabytes, and a layer needs room for files.
	// XFS needs more: xfs.MinSize.
	MinBaseSize = 16 * units.MiB
	// FilesystemExt4 and FilesystemXFS are the filesystems the store
	// formats (see package fsys); ext4 is the default.
	FilesystemExt4 = "ext4"
	FilesystemXFS  = "xfs"
	// DefaultDeferredInterval is how often deferred deletions are retried.
	DefaultDeferredInterval = 30 * time.Second
)

// Options configure a Store.
type Options struct {
	// Root holds base.json and the mount points. Required.
	Root string
	// Pool is the thin pool the layers live in; its Root defaults to Root.
	Pool thinpool.Options
	// BaseSize is the base device's size in bytes, a multiple of 512. 0
	// means DefaultBaseSize for a new base and the existing size
	// otherwise. Bigger than the existing base grows it (new layers get the
	// new size); smaller is an error.
	BaseSize int64
	// Filesystem of the base device: "" or "ext4", or "xfs" (a base of
	// at least 300 MiB; every layer mount gets "nouuid"). It must stay the
	// same for the life of Root.
	Filesystem string
	// MkfsArgs are extra mkfs.ext4 or mkfs.xfs arguments for the base
	// device.
	MkfsArgs []string
	// XFSNoSpaceMaxRetries (xfs only) is how many times a mounted layer
	// retries a metadata write that failed because the pool is full
	// before its filesystem shuts down: 0 fails at once, -1 retries
	// forever. nil leaves the kernel's default (forever). Set after
	// every mount by Get.
	XFSNoSpaceMaxRetries *int
	// RootfsDir, when set, is a directory made on the base filesystem
	// (mode 0755, root's) that Get returns as the layer's root, so that
	// callers never see lost+found. Docker's driver uses "rootfs"; a
	// caller that mounts the filesystem root itself leaves it empty, and
	// then lost+found is removed from the base filesystem when it is
	// made, so that the root holds only what callers put there. It must
	// stay the same for the life of Root.
	RootfsDir string
	// Discard a layer's blocks before deleting its device, so a loopback
	// file gives the space back.
	Discard bool
	// SyncRemove: Remove deletes the layer's device (discard included)
	// before it returns, as callers that need the space back at once want.
	// By default Remove returns once the removal is durable and the name
	// free (the device is retired: see thinpool.Retire), and the store's
	// background worker deletes the device; Drain waits for it.
	SyncRemove bool
	// DeferredRemoval: when a layer's device is still open after its last
	// Put or at Remove, let the kernel remove it at its last close instead
	// of failing.
	DeferredRemoval bool
	// DeferredDeletion (needs DeferredRemoval): when Remove finds the
	// device busy, mark it and delete it once closed (retried every
	// DeferredInterval and at the next Open) instead of failing.
	DeferredDeletion bool
	// DeferredInterval is how often deferred deletions are retried, and the
	// longest wait between retries of failed background work; 0 means
	// DefaultDeferredInterval.
	DeferredInterval time.Duration
	// Logger receives the store's log lines; nil discards them.
	Logger logrus.FieldLogger

	// StepHook, when set, is called at each named step of a multi-step
	// change (see the step constants). Crash tests kill the process
	// there; leave it nil otherwise.
	StepHook func(step string)
}

// Validate reports every problem at once, each wrapping ErrInvalidOptions.
func (o *Options) Validate() error {
	var errs []error
	bad := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidOptions}, a...)...))
	}
	if o.Root == "" {
		bad("empty root directory")
	}
	if o.BaseSize < 0 || (o.BaseSize > 0 && o.BaseSize < MinBaseSize) {
		errs = append(errs, &FieldError{Field: "BaseSize", Value: units.BytesSize(float64(o.BaseSize)),
			Err: fmt.Errorf("below the minimum %s", units.BytesSize(float64(MinBaseSize)))})
	} else if o.BaseSize%512 != 0 {
		errs = append(errs, &FieldError{Field: "BaseSize", Value: fmt.Sprint(o.BaseSize), Err: errors.New("not a multiple of 512 bytes")})
	}
	errs = append(errs, o.validateFilesystem()...)
	if o.RootfsDir != "" {
		if err := ValidateName(o.RootfsDir); err != nil {
			bad("rootfs directory: %w", err)
		}
	}
	if o.DeferredDeletion && !o.DeferredRemoval {
		bad("deferred deletion needs deferred removal")
	}
	if o.DeferredInterval < 0 {
		bad("deferred interval %s is negative", o.DeferredInterval)
	}
	return errors.Join(errs...)
}

// Store is an open layer store. Its methods are safe for concurrent use;
// calls for one layer name are serialised.
type Store struct {
	root     string
	opts     Options
	log      logrus.FieldLogger
	pool     *thinpool.Pool
	fs       fsys.Filesystem
	baseSize int64 // the base device's size, fixed at Open

	closeMu sync.RWMutex // held for reading by every operation, for writing by Close
	closed  bool

	locks keyedmutex.Map

	mu     sync.Mutex // guards mounts
	mounts map[string]*mount

	work *worker // background deactivations and deletions (worker.go)
}

// Open opens (making on first use) the store under opts.Root.
//
// It opens the thin pool (settling what a crash left half-done and retrying
// deferred deletions), then makes and formats the base device on first use,
// or verifies that the base device is the one this root recorded, growing
// it when opts.BaseSize asks for more. Layers left mounted by a previous
// process are adopted: Put or Close unmounts them.
func Open(ctx context.Context, opts Options) (_ *Store, err error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if opts.Filesystem == "" {
		opts.Filesystem = FilesystemExt4
	}
	if opts.DeferredInterval == 0 {
		opts.DeferredInterval = DefaultDeferredInterval
	}
	if opts.Logger == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		opts.Logger = l
	}
	root, err := filepath.Abs(opts.Root)
	if err != nil {
		return nil, fmt.Errorf("layerstore: root: %w", err)
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("layerstore: %w", err)
	}
	// The kernel shows mounts by their resolved path; so must we, or the
	// mounts an earlier process left under a root reached through a
	// symbolic link would not be found.
	if root, err = filepath.EvalSymlinks(root); err != nil {
		return nil, fmt.Errorf("layerstore: root: %w", err)
	}
	fs, err := opts.filesystem()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidOptions, err)
	}
	s := &Store{root: root, opts: opts, log: opts.Logger, fs: fs, mounts: map[string]*mount{}, work: newWorker()}
	if err := os.MkdirAll(s.mntDir(), 0o700); err != nil {
		return nil, fmt.Errorf("layerstore: %w", err)
	}
	popts := opts.Pool
	if popts.Root == "" {
		popts.Root = root
	}
	if popts.Logger == nil {
		popts.Logger = s.log
	}
	if popts.StepHook == nil {
		popts.StepHook = opts.StepHook
	}
	if s.pool, err = thinpool.Open(ctx, popts); err != nil {
		return nil, fmt.Errorf("layerstore: open pool: %w", err)
	}
	defer func() {
		if err != nil {
			// Leave the kernel as Open found it: nothing of ours active.
			if serr := s.pool.Shutdown(ctx); serr != nil {
				err = errors.Join(err, fmt.Errorf("layerstore: shut the pool down after a failed open: %w", serr))
			}
		}
	}()
	// What an earlier process left half-done, in dependency order: the
	// base's temporary mounts hold the base open; mounts under mnt/ hold
	// the layers they are of.
	if err := s.cleanupBaseMounts(); err != nil {
		return nil, err
	}
	if err := s.adoptMounts(); err != nil {
		return nil, err
	}
	if err := s.settleLayers(ctx); err != nil {
		return nil, err
	}
	if err := s.setupBase(ctx); err != nil {
		return nil, err
	}
	s.startWorker()
	s.log.WithFields(logrus.Fields{"root": root, "pool": s.pool.Name(), "base-size": units.BytesSize(float64(s.baseSize))}).Info("layer store ready")
	return s, nil
}

// Root returns the store's root directory, absolute and with symbolic
// links resolved.
func (s *Store) Root() string { return s.root }

// Pool returns the thin pool, for status and inspection. Changing its
// layer devices behind the store's back is not supported.
func (s *Store) Pool() *thinpool.Pool { return s.pool }

// BaseSize returns the base device's size in bytes: the size of a layer
// made without a size, and the smallest size a layer can ask for.
func (s *Store) BaseSize() int64 { return s.baseSize }

// Filesystem returns the base device's filesystem type.
func (s *Store) Filesystem() string { return s.opts.Filesystem }

// Options returns the options the store was opened with, defaults filled.
func (s *Store) Options() Options { return s.opts }

func (s *Store) mntDir() string                { return filepath.Join(s.root, "mnt") }
func (s *Store) mountPoint(name string) string { return filepath.Join(s.root, "mnt", name) }

// step calls the crash-test hook.
func (s *Store) step(name string) {
	if s.opts.StepHook != nil {
		s.opts.StepHook(name)
	}
}

// enter guards an operation against Close; call the result when done.
func (s *Store) enter() (func(), error) {
	s.closeMu.RLock()
	if s.closed {
		s.closeMu.RUnlock()
		return nil, ErrClosed
	}
	return s.closeMu.RUnlock, nil
}

// lockLayer enters the store, checks name and locks it; release undoes
// both. The methods that act on one layer start with it.
func (s *Store) lockLayer(name string) (release func(), err error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	done, err := s.enter()
	if err != nil {
		return nil, err
	}
	unlock := s.locks.Lock(name)
	return func() { unlock(); done() }, nil
}

// Close stops the background worker after one last pass (what it leaves
// undone, a device held elsewhere, stays recorded for the next Open),
// unmounts every layer, deactivates every device and, unless the pool is
// external, removes the pool and detaches its loop devices. Layers and
// their contents stay for the next Open. The store cannot be used
// afterwards; a second Close does nothing.
func (s *Store) Close() error {
	s.stopWorker()
	if left, _, err := s.pass(context.Background(), time.Now(), s.opts.DeferredDeletion); left > 0 && !errors.Is(err, ErrClosed) {
		s.log.WithError(err).WithField("left", left).Warn("close: background work left for the next open")
	}
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var errs []error
	for _, name := range s.mountedNames() {
		if err := s.unmountLocked(name, true); err != nil {
			errs = append(errs, fmt.Errorf("unmount %q: %w", name, err))
		}
	}
	if err := s.pool.Shutdown(context.Background()); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("layerstore: close: %w", err)
	}
	return nil
}

// MaxNameLen is the longest layer name accepted. A layer's device-mapper
// name is the pool's prefix, "-l-" and the name, and must fit the kernel's
// 127 bytes; Docker's ids are 64 hex digits (69 with "-init").
const MaxNameLen = 100

// baseDevice is the thin device every layer descends from. Layer devices
// are named layerDevicePrefix+name, so no name can collide with it or with
// the names thinpool reserves.
const (
	baseDevice        = "base"
	layerDevicePrefix = "l-"
)

// ValidateName reports whether name can name a layer: not empty, not "."
// or "..", at most MaxNameLen bytes, and free of "/", "..", NUL and other
// control characters (it becomes a directory name and part of a device
// name).
func ValidateName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty", ErrInvalidName)
	case name == "." || name == "..":
		return fmt.Errorf("%w: %q", ErrInvalidName, name)
	case len(name) > MaxNameLen:
		return fmt.Errorf("%w: %q is %d bytes, at most %d", ErrInvalidName, name, len(name), MaxNameLen)
	case strings.Contains(name, "/"):
		return fmt.Errorf("%w: %q contains \"/\"", ErrInvalidName, name)
	case strings.Contains(name, ".."):
		return fmt.Errorf("%w: %q contains \"..\"", ErrInvalidName, name)
	}
	for _, c := range []byte(name) {
		if c < 0x20 || c == 0x7f {
			return fmt.Errorf("%w: %q contains control character %#x", ErrInvalidName, name, c)
		}
	}
	return nil
}

// DeviceName is the thin device of layer name.
func DeviceName(name string) string { return layerDevicePrefix + name }

// layerName is the layer name of a thin device name, or false for the base
// device and anything else not made by the store.
func layerName(device string) (string, bool) {
	name, ok := strings.CutPrefix(device, layerDevicePrefix)
	return name, ok && name != ""
}
