package layerstore

import (
	"fmt"

	"github.com/docker/go-units"

	"github.com/dmthin/dmthin/fsys"
)

// filesystem is the fsys.Filesystem the options ask for.
func (o *Options) filesystem() (fsys.Filesystem, error) {
	return fsys.New(o.Filesystem, fsys.Options{NoSpaceMaxRetries: o.XFSNoSpaceMaxRetries})
}

// validateFilesystem reports what Validate finds wrong with the
// filesystem options: an unknown filesystem, an option it does not take,
// mkfs arguments it refuses, a base size below what it can be made on.
func (o *Options) validateFilesystem() []error {
	fs, err := o.filesystem()
	if err != nil {
		return []error{fmt.Errorf("%w: filesystem: %w", ErrInvalidOptions, err)}
	}
	var errs []error
	if err := fs.ValidateMkfsArgs(o.MkfsArgs); err != nil {
		errs = append(errs, fmt.Errorf("%w: mkfs arguments: %w", ErrInvalidOptions, err))
	}
	if o.BaseSize >= MinBaseSize && o.BaseSize < fs.MinSize() { // below MinBaseSize: Validate says so
		errs = append(errs, fmt.Errorf("%w: base size %s is below the %s that %s needs", ErrInvalidOptions,
			units.BytesSize(float64(o.BaseSize)), units.BytesSize(float64(fs.MinSize())), fs.Type()))
	}
	return errs
}

// MountData is the filesystem data every mount of a layer needs ("nouuid"
// for xfs, whose snapshots share their origin's UUID; "" for ext4). Get
// adds it; a caller that mounts layers itself (containerd) must too.
func (s *Store) MountData() string { return s.fs.MountData() }
