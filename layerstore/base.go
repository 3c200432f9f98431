package layerstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/docker/go-units"
	"github.com/sirupsen/logrus"

	"github.com/dmthin/dmthin/fsys"
	"github.com/dmthin/dmthin/internal/retry"
	"github.com/dmthin/dmthin/thinpool"
)

// baseRecordFile, under the root, records the base device's filesystem. It is
// written (atomically) once the base device is complete: a base device
// without it was left half-made and is made again.
const baseRecordFile = "base.json"

// baseRecord is what base.json holds.
type baseRecord struct {
	Filesystem string `json:"filesystem"`
	UUID       string `json:"uuid"`
	// FilledSize is the size of the base device, in bytes, that the
	// filesystem was made or last grown to fill. When the device is
	// bigger (dm.basesize grew it, maybe in a run killed before the
	// filesystem followed) the filesystem is grown. 0 in records written
	// before it existed: grown once (a no-op if it was full) and recorded.
	FilledSize int64 `json:"filled_size,omitempty"`
}

func (s *Store) baseRecordPath() string { return filepath.Join(s.root, baseRecordFile) }

// readBaseRecord returns nil when the file does not exist.
func (s *Store) readBaseRecord() (*baseRecord, error) {
	data, err := os.ReadFile(s.baseRecordPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("layerstore: %w", err)
	}
	var r baseRecord
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("layerstore: %s is damaged (want {\"filesystem\":..., \"uuid\":...}): %w", s.baseRecordPath(), err)
	}
	if r.UUID == "" {
		return nil, fmt.Errorf("layerstore: %s is damaged: no uuid in %q", s.baseRecordPath(), data)
	}
	return &r, nil
}

// writeBaseRecord replaces base.json atomically: a temporary file, fsync,
// rename, fsync of the directory.
func (s *Store) writeBaseRecord(r baseRecord) error {
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return writeFileAtomic(s.baseRecordPath(), append(data, '\n'))
}

func writeFileAtomic(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return fmt.Errorf("layerstore: %w", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, os.Remove(f.Name()))
		}
	}()
	_, werr := f.Write(data)
	if werr == nil {
		werr = f.Sync()
	}
	if err := errors.Join(werr, f.Close()); err != nil {
		return fmt.Errorf("layerstore: write %s: %w", path, err)
	}
	if err := os.Chmod(f.Name(), 0o600); err != nil {
		return fmt.Errorf("layerstore: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("layerstore: %w", err)
	}
	df, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("layerstore: %w", err)
	}
	serr := df.Sync()
	if err := errors.Join(serr, df.Close()); err != nil {
		return fmt.Errorf("layerstore: sync %s: %w", dir, err)
	}
	return nil
}

// setupBase makes the base device on first use, or checks that the one in
// the pool is the one base.json recorded, growing it if asked.
func (s *Store) setupBase(ctx context.Context) error {
	rec, err := s.readBaseRecord()
	if err != nil {
		return err
	}
	base, err := s.pool.Get(baseDevice)
	exists := err == nil
	if err != nil && !errors.Is(err, thinpool.ErrNotFound) {
		return fmt.Errorf("layerstore: base device: %w", err)
	}
	switch {
	case !exists && rec == nil:
		return s.createBase(ctx)
	case !exists:
		return fmt.Errorf("%w: %s records a base filesystem %s, but pool %q has no base device: "+
			"a different pool is behind this root (check the pool options)",
			ErrBaseMismatch, s.baseRecordPath(), rec.UUID, s.pool.Name())
	case rec == nil && base.Labels[LabelState] == StateIncomplete:
		// Made by a run that stopped before recording it (no layer can
		// have been made from it): start over.
		if err := s.deleteHalfMadeBase(ctx); err != nil {
			return err
		}
		return s.createBase(ctx)
	case rec == nil:
		// Made by a run that stopped before recording it, by a version
		// that did not label it; start over, unless layers were made
		// from it (then base.json was lost).
		devs, err := s.pool.List()
		if err != nil {
			return fmt.Errorf("layerstore: %w", err)
		}
		for _, dev := range devs {
			if _, ok := layerName(dev.Name); ok {
				return fmt.Errorf("%w: pool %q has layers but %s is missing; restore it or use a new root",
					ErrBaseMismatch, s.pool.Name(), s.baseRecordPath())
			}
		}
		if err := s.deleteHalfMadeBase(ctx); err != nil {
			return err
		}
		return s.createBase(ctx)
	}
	if s.opts.BaseSize != 0 && s.opts.BaseSize < base.Size {
		return &FieldError{Field: "BaseSize", Value: units.BytesSize(float64(s.opts.BaseSize)),
			Err: fmt.Errorf("smaller than the existing base device (%s): the base can grow, not shrink", units.BytesSize(float64(base.Size)))}
	}
	if rec.Filesystem != s.opts.Filesystem {
		return &FieldError{Field: "Filesystem", Value: s.opts.Filesystem,
			Err: fmt.Errorf("the base device was formatted %s: a filesystem is chosen when the pool is made", rec.Filesystem)}
	}
	if err := s.verifyBase(ctx, rec, base); err != nil {
		return err
	}
	if base.Labels[LabelState] != "" {
		// Recorded, but killed before it was marked complete: base.json
		// and the filesystem agree (verifyBase), so it is.
		if err := s.pool.SetLabels(ctx, baseDevice, stateLabels("")); err != nil {
			return fmt.Errorf("layerstore: base device: %w", err)
		}
	}
	return nil
}

// halfMadeWait bounds how long Open waits for the last opener of a base
// device an earlier run left half-made: the tool that was formatting it
// (mkfs dies with the run that started it, but its exit takes a moment),
// or that run's own process while the kernel tears it down.
const halfMadeWait = 10 * time.Second

// deleteHalfMadeBase deletes the base device a run that was stopped left
// unfinished, waiting for it to be closed.
func (s *Store) deleteHalfMadeBase(ctx context.Context) error {
	s.log.Warn("base device left half-made by an earlier run: making it again")
	err := retry.Do(ctx, retry.Policy{Base: 20 * time.Millisecond, Max: 500 * time.Millisecond, Within: halfMadeWait},
		retry.On(thinpool.ErrBusy), func() error { return s.pool.Delete(ctx, baseDevice, thinpool.DeleteOptions{}) })
	if err != nil {
		return fmt.Errorf("layerstore: delete half-made base device: %w", err)
	}
	return nil
}

// createBase makes the base device, formats it, makes the rootfs directory
// on it and records its UUID. On error the half-made device is deleted.
func (s *Store) createBase(ctx context.Context) (err error) {
	size := s.opts.BaseSize
	if size == 0 {
		size = DefaultBaseSize
	}
	log := s.log.WithFields(logrus.Fields{"size": units.BytesSize(float64(size)), "filesystem": s.opts.Filesystem})
	log.Info("making the base device")
	// Incomplete until formatted and recorded, in the same commit as the
	// device itself: Open starts over with a base a crash cut short.
	if _, err := s.pool.Create(ctx, baseDevice, size, thinpool.WithLabels(stateLabels(StateIncomplete))); err != nil {
		return fmt.Errorf("layerstore: create base device: %w", err)
	}
	s.step(StepBaseCreated)
	defer func() {
		if err != nil {
			err = errors.Join(err, s.pool.Delete(ctx, baseDevice, thinpool.DeleteOptions{}))
		}
	}()
	node, err := s.pool.Activate(ctx, baseDevice)
	if err != nil {
		return fmt.Errorf("layerstore: activate base device: %w", err)
	}
	s.step(StepBaseFormatting)
	if err := s.fs.Format(ctx, node, s.opts.MkfsArgs); err != nil {
		return errors.Join(fmt.Errorf("layerstore: format base device: %w", err), s.pool.Deactivate(ctx, baseDevice, false))
	}
	s.step(StepBaseFormatted)
	err = s.withBaseMounted(node, func(mp string) error {
		root := filepath.Join(mp, s.opts.RootfsDir)
		if s.opts.RootfsDir == "" {
			// Callers see the filesystem's root itself: it holds only
			// what they put there (ext4 made a lost+found, xfs none).
			if err := os.Remove(filepath.Join(mp, "lost+found")); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		} else if err := os.Mkdir(root, 0o755); err != nil {
			return err
		}
		// Exactly 0755 and root's, whatever the umask and the caller.
		return errors.Join(os.Chmod(root, 0o755), os.Lchown(root, 0, 0))
	})
	if err != nil {
		return errors.Join(fmt.Errorf("layerstore: prepare base filesystem: %w", err), s.pool.Deactivate(ctx, baseDevice, false))
	}
	id, err := s.fs.Identify(node)
	if err := errors.Join(err, s.pool.Deactivate(ctx, baseDevice, false)); err != nil {
		return fmt.Errorf("layerstore: base device: %w", err)
	}
	if err := s.writeBaseRecord(baseRecord{Filesystem: s.opts.Filesystem, UUID: id.UUID, FilledSize: size}); err != nil {
		return err
	}
	s.step(StepBaseRecorded)
	if err := s.pool.SetLabels(ctx, baseDevice, stateLabels("")); err != nil {
		return errors.Join(fmt.Errorf("layerstore: base device: record it complete: %w", err), os.Remove(s.baseRecordPath()))
	}
	s.baseSize = size
	log.WithField("uuid", id.UUID).Info("base device ready")
	return nil
}

// verifyBase checks the base device's filesystem against base.json and grows
// it when Options.BaseSize asks for more (or when a grow was interrupted).
func (s *Store) verifyBase(ctx context.Context, rec *baseRecord, base thinpool.Device) (err error) {
	node, err := s.pool.Activate(ctx, baseDevice)
	if err != nil {
		return fmt.Errorf("layerstore: activate base device: %w", err)
	}
	defer func() { err = errors.Join(err, s.pool.Deactivate(ctx, baseDevice, false)) }()
	id, err := s.fs.Identify(node)
	if errors.Is(err, fsys.ErrNotFormatted) {
		return fmt.Errorf("%w: the base device of pool %q holds no %s filesystem, but %s records one (UUID %s): "+
			"a different pool is behind this root", ErrBaseMismatch, s.pool.Name(), rec.Filesystem, s.baseRecordPath(), rec.UUID)
	}
	if err != nil {
		return fmt.Errorf("layerstore: base device: %w", err)
	}
	if got := id.UUID; got != rec.UUID {
		return fmt.Errorf("%w: the base filesystem of pool %q has UUID %s, but %s records %s: "+
			"a different pool is behind this root", ErrBaseMismatch, s.pool.Name(), got, s.baseRecordPath(), rec.UUID)
	}
	s.baseSize = base.Size
	if s.opts.BaseSize > base.Size {
		s.log.WithFields(logrus.Fields{"from": units.BytesSize(float64(base.Size)), "to": units.BytesSize(float64(s.opts.BaseSize))}).Info("growing the base device")
		if err := s.pool.Resize(ctx, baseDevice, s.opts.BaseSize); err != nil {
			return fmt.Errorf("layerstore: grow base device: %w", err)
		}
		s.step(StepBaseResized)
		s.baseSize = s.opts.BaseSize
	}
	// Grown just now, or by a run killed before the filesystem followed.
	// Whether a grow would add anything depends on each filesystem's
	// rounding (a last group or allocation group too small to add is left
	// out), so the record says what size the filesystem was grown for.
	if rec.FilledSize != s.baseSize {
		s.log.WithFields(logrus.Fields{"from": units.BytesSize(float64(id.Size)), "device": units.BytesSize(float64(s.baseSize))}).Info("growing the base filesystem")
		if err := s.withBaseMounted(node, func(mp string) error { return s.fs.Grow(ctx, node, mp) }); err != nil {
			return fmt.Errorf("layerstore: grow base filesystem: %w", err)
		}
		grown := *rec
		grown.FilledSize = s.baseSize
		if err := s.writeBaseRecord(grown); err != nil {
			return err
		}
	}
	return nil
}

// withBaseMounted mounts the base device on a temporary mount point under
// the root while f runs.
func (s *Store) withBaseMounted(node string, f func(mp string) error) (err error) {
	mp, err := os.MkdirTemp(s.root, ".base-mnt-")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, os.Remove(mp)) }()
	if err := mountDevice(node, mp, s.fs.Type(), 0, s.fs.MountData()); err != nil {
		return err
	}
	s.step(StepBaseMounted)
	ferr := f(mp)
	return errors.Join(ferr, unmount(mp, false))
}
