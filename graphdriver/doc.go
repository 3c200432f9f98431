// Package graphdriver is the storage driver a container engine plugs in: the
// devicemapper driver of Docker, over dmthin's thin pool.
//
// Every layer is a thin snapshot. A "base" thin device is formatted with ext4
// once, holding an empty directory rootfs (mode 0755, owned by root); an
// image layer is a snapshot of its parent layer, or of the base device when
// it has none, and a container's read-write layer is a snapshot of its image.
// Snapshots share every block they have not written, so a layer costs what
// changed in it, not the size of its filesystem.
//
// Init takes Docker's dm.* option strings (dm.basesize=20G, dm.loopdatasize,
// dm.thinpooldev, dm.mountopt, ...; see ParseOptions); New takes a Config
// built in Go. The methods follow Docker's graphdriver interface: Create,
// CreateReadWrite, Remove, Get, Put, Exists, Status, GetMetadata, Cleanup,
// and the diff methods Diff, Changes, ApplyDiff and DiffSize, which compare
// two mounted layers with github.com/moby/go-archive (tar streams with OCI
// ".wh." whiteouts).
//
// On disk, under the home directory given to Init:
//
//	metadata.db, lock        the thin pool's records (package thinpool)
//	devicemapper/data        the loopback pool's sparse files, unless
//	devicemapper/metadata    dm.datadev/dm.metadatadev or dm.thinpooldev
//	base.json                filesystem type and UUID of the base device
//	mnt/<id>/                where layer id is mounted; Get returns
//	                         mnt/<id>/rootfs, so lost+found is never seen
//
// Get mounts a layer on first use and counts references; Put unmounts at the
// last one and deactivates the device. Calls for different layer ids run
// concurrently; calls for one id are serialised.
//
// It is not for: managing images or containers (the engine does), sharing a
// home between two processes at once (the pool's lock refuses the second),
// overlay-style union mounts, or filesystems other than ext4.
package graphdriver
