// Package thinpool manages one device-mapper thin pool and the named thin
// devices in it, with metadata that survives crashes.
//
// A Pool is built over loopback files (the default: sparse data and
// metadata files under Options.Root, attached to loop devices), over given
// data and metadata block devices, on one block device given whole
// (Options.Device: a label, a metadata and a data area, mapped by two
// linear devices, the data area growing with the device; see direct.go),
// or over an existing thin-pool device made by someone else (which it uses
// but never tears down).
//
// Every thin device has a caller-chosen name, a 24-bit thin id the package
// allocates, a size, an optional parent and caller labels. The records
// live in a bbolt database under Root. Every change goes through one
// helper (txn.go) that follows the same protocol, at one durable store
// commit and one pool metadata commit per change:
//
//  1. the intended change is committed to the store (state "creating",
//     stamped with a transaction id never handed out again, or
//     "deleting");
//  2. the pool is sent its message (create_thin, create_snap, delete),
//     after which the kernel commits the pool's metadata;
//  3. the outcome is staged in memory, seen by every read at once, and
//     committed with a later store commit (or at Close).
//
// A failure commits what is true at once (a create that did not happen is
// forgotten, a delete that did not happen stays "deleting" and is
// retried). Deleting is committed before anything is destroyed (discard
// included). The pool's transaction id is moved up to the last id handed
// out at Open, at Close and every 64 changes, not on every change.
//
// Open settles every unfinished record by asking the pool: a "creating"
// record is rolled forward when the pool has its thin id and forgotten
// otherwise; a "deleting" record is finished and dropped once the pool has
// no such thin id. A ready record made since the pool's transaction id
// last moved is probed, so one whose thin id the kernel lost in a power
// cut is found. What cannot be settled is marked faulty with the reason
// (Status.FaultyDevices) and Open goes on; only a failed pool or an
// unreadable store fail it. Device-mapper devices carrying the pool's
// prefix that no record explains are removed.
//
// The pool's table (low-water mark, block zeroing, discards, what writes do
// when it is full) follows Options; Open reloads an existing pool device
// whose table differs. A loopback pool with Options.AutoGrow grows its own
// files while it is open, on the kernel's low-water event, up to a maximum
// and within the free space of the filesystem holding them (autogrow.go).
// Creates are refused while the pool is not writable or has less than
// Options.MinFreeSpacePercent free; the pool's own events keep that check
// current without reading the pool's status for every create (space.go).
//
// It is not for: filesystems (see ext4), layers (see graphdriver), or
// sharing one pool between processes at the same time (a lock file under
// Root refuses a second opener).
package thinpool
