// Package thinpool manages one device-mapper thin pool and the named thin
// devices in it, with metadata that survives crashes.
//
// A Pool is built over loopback files (the default: sparse data and
// metadata files under Options.Root, attached to loop devices), over given
// data and metadata block devices, or over an existing thin-pool device
// made by someone else (which it uses but never tears down).
//
// Every thin device has a caller-chosen name, a 24-bit thin id the package
// allocates, a size and an optional parent. The records live in a bbolt
// database under Root. Each change follows the same protocol:
//
//  1. the intended change is committed to the store (state "creating" or
//     "deleting", with the pool transaction id it will produce);
//  2. the pool is sent its message (create_thin, create_snap, delete) and
//     then set_transaction_id old new;
//  3. the store commits the outcome and the new transaction id.
//
// Open compares every unfinished record with the pool's transaction id and
// settles it: rolled forward when the kernel got as far as the new
// transaction id, rolled back (the half-made thin id deleted) otherwise. A
// record whose thin id the kernel lost in a power cut (its transaction id is
// beyond the pool's) is probed and marked faulty if the device is gone.
// Device-mapper devices carrying the pool's prefix that no record explains
// are removed.
//
// It is not for: filesystems (see ext4), layers (see graphdriver), or
// sharing one pool between processes at the same time (a lock file under
// Root refuses a second opener).
package thinpool
