package layerstore

import (
	"fmt"
	"strings"

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
		return []error{&FieldError{Field: "Filesystem", Value: o.Filesystem, Err: err}}
	}
	var errs []error
	if err := fs.ValidateMkfsArgs(o.MkfsArgs); err != nil {
		errs = append(errs, &FieldError{Field: "MkfsArgs", Value: strings.Join(o.MkfsArgs, " "), Err: err})
	}
	if o.BaseSize >= MinBaseSize && o.BaseSize < fs.MinSize() { // below MinBaseSize: Validate says so
		errs = append(errs, &FieldError{Field: "BaseSize", Value: units.BytesSize(float64(o.BaseSize)),
			Err: fmt.Errorf("below the %s that %s needs", units.BytesSize(float64(fs.MinSize())), fs.Type())})
	}
	return errs
}

// MountData is the filesystem data every mount of a layer needs ("nouuid"
// for xfs, whose snapshots share their origin's UUID; "" for ext4). Get
// adds it; a caller that mounts layers itself (containerd) must too.
func (s *Store) MountData() string { return s.fs.MountData() }
