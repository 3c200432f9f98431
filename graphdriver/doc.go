// Package graphdriver is the storage driver a container engine plugs in: the
// devicemapper driver of Docker, over dmthin's thin pool.
//
// It is an adapter: the device logic (base device, snapshots, mounts and
// their adoption, removal, crash recovery) is package layerstore's, shared
// with the other engine adapters. This package translates Docker's names
// and semantics: dm.* options, layer ids, CreateOpts, mount options and
// SELinux labels, the "rootfs" directory Get returns, Status's text, and
// the diff methods.
//
// Every layer is a thin snapshot. A "base" thin device is formatted once,
// with ext4 or (dm.fs=xfs) xfs, whose layer mounts then all carry nouuid,
// and holds an empty directory rootfs (mode 0755, owned by root); an image
// layer is a snapshot of its parent layer, or of the base device when
// it has none, and a container's read-write layer is a snapshot of its image.
// Snapshots share every block they have not written, so a layer costs what
// changed in it, not the size of its filesystem.
//
// Init takes Docker's dm.* option strings (dm.basesize=20G, dm.loopdatasize,
// dm.thinpooldev, dm.mountopt, ...; see ParseOptions); New takes a Config
// built in Go. dm.directlvm_device=/dev/sdX (alias dm.directdev) gives a
// whole disk to dmthin, which lays it out itself without LVM and grows the
// pool when the disk grows. The methods follow Docker's graphdriver interface: Create,
// CreateReadWrite, Remove, Get, Put, Exists, Status, GetMetadata, Cleanup,
// and the diff methods Diff, Changes, ApplyDiff and DiffSize, which compare
// two mounted layers with github.com/moby/go-archive (tar streams with OCI
// ".wh." whiteouts).
//
// On disk, under the home directory given to Init:
//
//	metadata.db, lock        the thin pool's records (package thinpool)
//	devicemapper/data        the loopback pool's sparse files, unless
//	devicemapper/metadata    dm.datadev/dm.metadatadev, dm.directlvm_device
//	                         or dm.thinpooldev
//	base.json                filesystem type and UUID of the base device
//	mnt/<id>/                where layer id is mounted; Get returns
//	                         mnt/<id>/rootfs, so lost+found is never seen
//
// A loopback pool can grow itself: dm.thinp_autoextend_threshold and
// dm.thinp_autoextend_percent (Docker's names; it handed them to LVM) with
// dm.loopdatasize_max and dm.loopmetadatasize_max make the driver grow the
// sparse files when the pool fills up, up to the maximum and never past the
// free space of their filesystem; past it, writes fail with ENOSPC at once.
// dm.low_water_mark, dm.block_zeroing, dm.discards and dm.no_space set the
// pool's table (refused with dm.thinpooldev, whose table is its maker's).
//
// Get mounts a layer on first use and counts references; Put unmounts at the
// last one, and a background worker deactivates the device once it has
// been idle for a second. Remove refuses (ErrBusy) a layer with a Get not
// yet Put: the engine Puts first. Remove is asynchronous by default: it
// returns once the removal is durable (the device retired under a
// tombstone name, so the id is free for Create at once), and the worker
// discards and deletes the device; dm.sync_remove=true makes Remove wait
// for that, for callers that need the space back before it returns. Drain
// waits for the worker; Cleanup makes one last attempt and Init finishes
// what is left. Calls for different layer ids run concurrently; calls for
// one id are serialised.
//
// After a crash, Init settles what was cut short: a layer whose creation
// did not finish is rolled back (it never existed), a removal that was
// decided is finished, temporary mounts are undone, only the driver's own
// layer mounts under mnt/ are adopted, and devices left active without a
// mount are deactivated.
//
// It is not for: managing images or containers (the engine does), sharing a
// home between two processes at once (the pool's lock refuses the second),
// overlay-style union mounts, or filesystems other than ext4 and xfs.
package graphdriver
