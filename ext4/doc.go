// Package ext4 makes, inspects, grows and checks the ext4 filesystems that
// live on thin devices.
//
// It is for:
//   - Format: mkfs.ext4 with defaults suited to thin provisioning (no
//     discard at mkfs, inode tables and journal initialised at once so that
//     snapshots do not each get rewritten by the kernel's lazy initialiser,
//     no periodic fsck), plus the user's own mkfs arguments;
//   - ReadSuperblock / ReadSuperblockFile: the primary superblock read in
//     pure Go (UUID, label, geometry, free space, features, state, times),
//     with the metadata_csum checksum verified;
//   - Grow: resize2fs to the size of the device, offline or online;
//   - Check: a read-only e2fsck.
//
// The e2fsprogs programs (mkfs.ext4, tune2fs, resize2fs, e2fsck) are looked
// up in $PATH, then /usr/sbin and /sbin; when one is missing the error
// satisfies errors.Is(err, ErrToolMissing). A failed run is an *ExecError
// with the command line, the exit status and what the program printed. Every
// run honours its context: cancelling it kills the program.
//
// It is not for: mounting (the caller mounts, with the options it chooses),
// anything about devices (see devmapper, loopback, thinpool), reading files
// or directories inside a filesystem, repairing one (Check never writes; Grow
// repairs only what e2fsck -p considers safe, and only when resize2fs would
// otherwise refuse), or filesystems other than ext2/3/4.
package ext4
