// Package xfs makes, inspects and grows the XFS filesystems that live on
// thin devices: the second filesystem dmthin offers besides ext4.
//
// It is for:
//   - Format: mkfs.xfs with defaults suited to thin provisioning (no
//     discard at mkfs: a thin device reads back zeros where nothing was
//     written), plus the user's own mkfs arguments;
//   - ReadSuperblock / ReadSuperblockFile: the primary superblock read in
//     pure Go (UUID, label, geometry, free space), with the v5 CRC verified;
//   - Grow: xfs_growfs of a mounted filesystem to the size of its device
//     (XFS grows only while mounted);
//   - SetNoSpaceMaxRetries: how often a mounted filesystem retries a
//     metadata write that failed for lack of space (Docker's
//     dm.xfs_nospace_max_retries), through /sys/fs/xfs.
//
// Facts a caller must mind: mkfs.xfs refuses devices smaller than MinSize
// (300 MiB); every snapshot of a filesystem carries its UUID, and XFS
// refuses to mount a second filesystem with a UUID already mounted unless
// the mount has the "nouuid" option (MountOptions); a new filesystem has no
// lost+found directory.
//
// The xfsprogs programs (mkfs.xfs, xfs_growfs) are looked up in $PATH, then
// /usr/sbin and /sbin; when one is missing the error satisfies
// errors.Is(err, ErrToolMissing). A failed run is an *ExecError with the
// command line, the exit status and what the program printed. Every run
// honours its context: cancelling it kills the program.
//
// It is not for: mounting (the caller mounts, with the options it chooses),
// anything about devices (see devmapper, loopback, thinpool), checking or
// repairing a filesystem, or filesystems other than XFS.
package xfs
