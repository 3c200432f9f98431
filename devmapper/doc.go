// Package devmapper is a client for the Linux device-mapper ioctl interface
// (/dev/mapper/control), written in Go without cgo: what libdevmapper does
// for dmsetup, for the parts a thin-provisioning storage driver needs.
//
// It is for:
//   - the device life cycle: create, load a table, suspend, resume, clear,
//     rename, remove (synchronous or deferred), list, info;
//   - reading tables and status lines and sending target messages
//     (create_thin, create_snap, delete, set_transaction_id, ...);
//   - waiting for device events;
//   - typed values for the targets the library uses (thin-pool, thin,
//     linear) and parsers for their status lines, so that kernel text is made
//     and read in one place;
//   - block device nodes: no udev is assumed, the client makes and removes
//     the node of every device it creates or removes (NodeDir, /dev/mapper by
//     default). Tables refer to other devices by MAJ:MIN.
//
// It is not for: deciding what to create (see thinpool), locking between
// processes, retries (callers decide; errors keep the errno so that
// errors.Is(err, unix.EBUSY) works), or anything about filesystems.
package devmapper
