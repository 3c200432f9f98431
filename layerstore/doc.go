// Package layerstore is the layer engine under dmthin's container-engine
// adapters: graphdriver (Docker's graph driver interface) today, a
// containerd snapshotter next. It holds what both need and what must not
// be written twice:
//
//   - a base thin device, formatted once with ext4 or xfs (through the
//     one interface of package fsys), verified at every Open
//     by the UUID recorded in base.json, and grown when Options.BaseSize
//     asks for more;
//   - layers: a layer is a thin snapshot of its parent (or of the base),
//     optionally bigger, its filesystem grown to the new size;
//   - mounts with reference counts (Get/Put), and adoption at Open of the
//     mounts a previous process of this store left behind;
//   - removal: asynchronous by default (the device retired at once, so the
//     name is free, and deleted by a background worker that also
//     deactivates the devices of layers Put left idle), synchronous with
//     Options.SyncRemove, deferred until the device is closed with
//     DeferredDeletion;
//   - crash safety: every multi-step change records its progress in the
//     thin device's own record in thinpool (labels), so one store holds
//     the truth, and Open settles whatever a crash left half-done.
//
// Names are the caller's (Docker layer ids, containerd snapshot keys):
// layer name N is thin device "l-N", mounted at Root/mnt/N. Callers that
// keep their files in a subdirectory of the filesystem (Docker's "rootfs",
// which hides lost+found) set Options.RootfsDir; the base gets that
// directory, owned by root with mode 0755, when it is formatted.
//
// On disk, under Options.Root:
//
//	metadata.db, lock        the thin pool's records (package thinpool)
//	devicemapper/            the loopback pool's sparse files, if any
//	base.json                filesystem type and UUID of the base device
//	mnt/<name>/              where layer name is mounted
//	.base-mnt-*              temporary mount of the base while it is
//	                         formatted or grown (removed by Open if a
//	                         crash left one)
//
// It is not for: option strings, ids or diff formats of an engine (the
// adapters translate those), union mounts, or filesystems other than ext4
// and xfs.
package layerstore
