// Package fsys is the one interface through which layerstore formats,
// identifies, grows and mounts the filesystem of its base device and
// layers: ext4 and xfs are two implementations of Filesystem, not two code
// paths in the layer engine.
//
// New picks the implementation by name ("ext4", the default, or "xfs");
// each one only translates to its package (ext4, xfs), which runs the
// tools and reads the superblocks.
//
// It is not for: mounting (the caller mounts, adding MountData to its
// options), engine option syntax (dm.fs, fs_type: the adapters map those
// to a name), or filesystems that cannot be grown online or offline to
// fill a bigger thin device.
package fsys
