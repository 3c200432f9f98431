// Package changes lists what a snapshot layer changed relative to the
// layer it was made from, without walking both trees in full.
//
// A thin snapshot starts as a block-for-block copy of its origin, so an
// inode the layer never touched keeps the ctime it had in the origin:
// older than the moment the snapshot was taken. The kernel sets ctime to
// the current time on every change a tree comparison can see (contents,
// size, mode, owner, times, xattrs, link count) and on the inode moved by
// a rename or given a new name by link(2); users cannot set it. So
// Since walks the layer's tree, takes an entry whose ctime is older than
// the snapshot as unchanged without looking at the parent, and reads the
// parent only for entries that are newer (to compare them) and for
// directories that are newer (to find what was deleted from them).
//
// What it returns is what github.com/moby/go-archive's ChangesDirs returns
// for the same two trees, in path order, under these conditions, which
// the caller must ensure:
//   - the layer began as a copy of the parent at created or later (the
//     driver records the time before it takes the snapshot), and the
//     parent has not changed since (layers with children are read-only);
//   - the system clock did not step back by more than Slack between the
//     snapshot and a change in the layer;
//   - the filesystem updates ctime as Linux's ext4 and xfs do.
//
// It is not a general tree comparison: for two unrelated trees use
// go-archive's ChangesDirs.
package changes
