package graphdriver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/docker/go-units"
	"github.com/sirupsen/logrus"

	"github.com/dmthin/dmthin/ext4"
	"github.com/dmthin/dmthin/thinpool"
)

// baseRecordFile, under home, records the base device's filesystem. It is
// written (atomically) once the base device is complete: a base device
// without it was left half-made and is made again.
const baseRecordFile = "base.json"

// baseRecord is what base.json holds.
type baseRecord struct {
	Filesystem string `json:"filesystem"`
	UUID       string `json:"uuid"`
}

func (d *Driver) baseRecordPath() string { return filepath.Join(d.home, baseRecordFile) }

// readBaseRecord returns nil when the file does not exist.
func (d *Driver) readBaseRecord() (*baseRecord, error) {
	data, err := os.ReadFile(d.baseRecordPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("graphdriver: %w", err)
	}
	var r baseRecord
	if err := json.Unmarshal(data, &r); err != nil || r.UUID == "" {
		return nil, fmt.Errorf("graphdriver: %s is damaged (want {\"filesystem\":..., \"uuid\":...}): %q", d.baseRecordPath(), data)
	}
	return &r, nil
}

// writeBaseRecord replaces base.json atomically: a temporary file, fsync,
// rename, fsync of the directory.
func (d *Driver) writeBaseRecord(r baseRecord) error {
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return writeFileAtomic(d.baseRecordPath(), append(data, '\n'))
}

func writeFileAtomic(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return fmt.Errorf("graphdriver: %w", err)
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
		return fmt.Errorf("graphdriver: write %s: %w", path, err)
	}
	if err := os.Chmod(f.Name(), 0o600); err != nil {
		return fmt.Errorf("graphdriver: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("graphdriver: %w", err)
	}
	df, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("graphdriver: %w", err)
	}
	serr := df.Sync()
	if err := errors.Join(serr, df.Close()); err != nil {
		return fmt.Errorf("graphdriver: sync %s: %w", dir, err)
	}
	return nil
}

// setupBase makes the base device on first use, or checks that the one in
// the pool is the one base.json recorded, growing it if asked.
func (d *Driver) setupBase(ctx context.Context) error {
	rec, err := d.readBaseRecord()
	if err != nil {
		return err
	}
	base, err := d.pool.Get(baseDevice)
	exists := err == nil
	if err != nil && !errors.Is(err, thinpool.ErrNotFound) {
		return fmt.Errorf("graphdriver: base device: %w", err)
	}
	switch {
	case !exists && rec == nil:
		return d.createBase(ctx)
	case !exists:
		return fmt.Errorf("%w: %s records a base filesystem %s, but pool %q has no base device: "+
			"a different pool is behind this home (check dm.thinpooldev, dm.datadev, dm.metadatadev)",
			ErrBaseMismatch, d.baseRecordPath(), rec.UUID, d.pool.Name())
	case rec == nil:
		// Made by a run that stopped before recording it; start over,
		// unless layers were made from it (then base.json was lost).
		devs, err := d.pool.List()
		if err != nil {
			return fmt.Errorf("graphdriver: %w", err)
		}
		for _, dev := range devs {
			if _, ok := layerID(dev.Name); ok {
				return fmt.Errorf("%w: pool %q has layers but %s is missing; restore it or use a new home",
					ErrBaseMismatch, d.pool.Name(), d.baseRecordPath())
			}
		}
		d.log.Warn("base device left half-made by an earlier run: making it again")
		if err := d.pool.Delete(ctx, baseDevice, thinpool.DeleteOptions{}); err != nil {
			return fmt.Errorf("graphdriver: delete half-made base device: %w", err)
		}
		return d.createBase(ctx)
	}
	if d.cfg.BaseSize != 0 && d.cfg.BaseSize < base.Size {
		return fmt.Errorf("%w: dm.basesize=%s is smaller than the existing base device (%s); the base can grow, not shrink",
			ErrInvalidOptions, units.BytesSize(float64(d.cfg.BaseSize)), units.BytesSize(float64(base.Size)))
	}
	if rec.Filesystem != d.cfg.Filesystem {
		return fmt.Errorf("%w: dm.fs=%s but the base device was formatted %s", ErrInvalidOptions, d.cfg.Filesystem, rec.Filesystem)
	}
	return d.verifyBase(ctx, rec, base)
}

// createBase makes the base device, formats it, makes the rootfs directory
// on it and records its UUID. On error the half-made device is deleted.
func (d *Driver) createBase(ctx context.Context) (err error) {
	size := d.cfg.BaseSize
	if size == 0 {
		size = DefaultBaseSize
	}
	log := d.log.WithFields(logrus.Fields{"size": units.BytesSize(float64(size)), "filesystem": d.cfg.Filesystem})
	log.Info("making the base device")
	if _, err := d.pool.Create(ctx, baseDevice, size); err != nil {
		return fmt.Errorf("graphdriver: create base device: %w", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, d.pool.Delete(ctx, baseDevice, thinpool.DeleteOptions{}))
		}
	}()
	node, err := d.pool.Activate(ctx, baseDevice)
	if err != nil {
		return fmt.Errorf("graphdriver: activate base device: %w", err)
	}
	if err := ext4.Format(ctx, node, ext4.FormatOptions{ExtraArgs: d.cfg.MkfsArgs}); err != nil {
		return errors.Join(fmt.Errorf("graphdriver: format base device: %w", err), d.pool.Deactivate(ctx, baseDevice, false))
	}
	err = d.withBaseMounted(node, func(mp string) error {
		root := filepath.Join(mp, rootfsDir)
		if err := os.Mkdir(root, 0o755); err != nil {
			return err
		}
		// Exactly 0755 and root's, whatever the umask and the caller.
		return errors.Join(os.Chmod(root, 0o755), os.Lchown(root, 0, 0))
	})
	if err != nil {
		return errors.Join(fmt.Errorf("graphdriver: prepare base filesystem: %w", err), d.pool.Deactivate(ctx, baseDevice, false))
	}
	sb, err := ext4.ReadSuperblockFile(node)
	if err := errors.Join(err, d.pool.Deactivate(ctx, baseDevice, false)); err != nil {
		return fmt.Errorf("graphdriver: base device: %w", err)
	}
	if err := d.writeBaseRecord(baseRecord{Filesystem: d.cfg.Filesystem, UUID: sb.UUIDString()}); err != nil {
		return err
	}
	d.baseSize = size
	log.WithField("uuid", sb.UUIDString()).Info("base device ready")
	return nil
}

// verifyBase checks the base device's filesystem against base.json and grows
// it when dm.basesize asks for more (or when a grow was interrupted).
func (d *Driver) verifyBase(ctx context.Context, rec *baseRecord, base thinpool.Device) (err error) {
	node, err := d.pool.Activate(ctx, baseDevice)
	if err != nil {
		return fmt.Errorf("graphdriver: activate base device: %w", err)
	}
	defer func() { err = errors.Join(err, d.pool.Deactivate(ctx, baseDevice, false)) }()
	sb, err := ext4.ReadSuperblockFile(node)
	if errors.Is(err, ext4.ErrNotExt4) {
		return fmt.Errorf("%w: the base device of pool %q holds no %s filesystem, but %s records one (UUID %s): "+
			"a different pool is behind this home", ErrBaseMismatch, d.pool.Name(), rec.Filesystem, d.baseRecordPath(), rec.UUID)
	}
	if err != nil {
		return fmt.Errorf("graphdriver: base device: %w", err)
	}
	if got := sb.UUIDString(); got != rec.UUID {
		return fmt.Errorf("%w: the base filesystem of pool %q has UUID %s, but %s records %s: "+
			"a different pool is behind this home", ErrBaseMismatch, d.pool.Name(), got, d.baseRecordPath(), rec.UUID)
	}
	d.baseSize = base.Size
	if d.cfg.BaseSize > base.Size {
		d.log.WithFields(logrus.Fields{"from": units.BytesSize(float64(base.Size)), "to": units.BytesSize(float64(d.cfg.BaseSize))}).Info("growing the base device")
		if err := d.pool.Resize(ctx, baseDevice, d.cfg.BaseSize); err != nil {
			return fmt.Errorf("graphdriver: grow base device: %w", err)
		}
		d.baseSize = d.cfg.BaseSize
	}
	if int64(sb.Size()) < d.baseSize {
		if err := d.withBaseMounted(node, func(string) error { return ext4.Grow(ctx, node) }); err != nil {
			return fmt.Errorf("graphdriver: grow base filesystem: %w", err)
		}
	}
	return nil
}

// withBaseMounted mounts the base device on a temporary mount point under
// home while f runs.
func (d *Driver) withBaseMounted(node string, f func(mp string) error) (err error) {
	mp, err := os.MkdirTemp(d.home, ".base-mnt-")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, os.Remove(mp)) }()
	if err := mountDevice(node, mp, d.cfg.Filesystem, 0, ""); err != nil {
		return err
	}
	ferr := f(mp)
	return errors.Join(ferr, unmount(mp, false))
}
