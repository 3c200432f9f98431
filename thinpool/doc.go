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
// helper (txn.go) that follows the same protocol:
//
//  1. the intended change is committed to the store (state "creating" or
//     "deleting", with the pool transaction id it will produce, which is
//     never handed out again);
//  2. the pool is sent its message (create_thin, create_snap, delete) and
//     then set_transaction_id old new;
//  3. the store commits the outcome and the new transaction id.
//
// A failure at any step commits what is true (a create that did not happen
// is forgotten, a delete that did not happen stays "deleting" and is
// retried) and closes the pool's transaction. Deleting is committed before
// anything is destroyed (discard included).
//
// Open settles every unfinished record: a "creating" record is rolled
// forward when the pool got as far as its transaction id and has the thin
// id, rolled back otherwise; a "deleting" record is finished and dropped
// only once the pool has no such thin id. A ready record whose thin id the
// kernel lost in a power cut (its transaction id is beyond the pool's) is
// probed. What cannot be settled is marked faulty with the reason
// (Status.FaultyDevices) and Open goes on; only a failed pool or an
// unreadable store fail it. Device-mapper devices carrying the pool's
// prefix that no record explains are removed.
//
// The pool's table (low-water mark, block zeroing, discards, what writes do
// when it is full) follows Options; Open reloads an existing pool device
// whose table differs. A loopback pool with Options.AutoGrow grows its own
// files while it is open, on the kernel's low-water event, up to a maximum
// and within the free space of the filesystem holding them (autogrow.go).
//
// It is not for: filesystems (see ext4), layers (see graphdriver), or
// sharing one pool between processes at the same time (a lock file under
// Root refuses a second opener).
package thinpool
