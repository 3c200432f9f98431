// Package devlabel reads and writes the label dmthin puts at the start of a
// block device it is given whole (thinpool.Options.Device), and plans the
// device's layout: where the pool's metadata area and data area lie.
//
// The label is one 4 KiB block at offset 0: a magic, a format version, the
// pool's UUID, the block size, the offsets and lengths of the two areas, a
// sequence number bumped at every rewrite, and a CRC-32C of the whole block.
// It is written with O_DIRECT and O_DSYNC, then fsynced, so that once Write
// returns the label is on the device, not in a cache.
//
// Layout, from the start of the device:
//
//	[0, 4 KiB)             the label
//	[1 MiB, 1 MiB + M)     metadata area (M: 1% of the device, 2 MiB to ~15.9 GiB)
//	[D, D + L)             data area, D aligned to 1 MiB and to the block size,
//	                       L a multiple of the block size
//
// The data area is last so that it alone grows when the device grows.
//
// It is not for: the pool itself (thinpool maps the areas with linear
// device-mapper devices), nor for any other on-disk format.
package devlabel
