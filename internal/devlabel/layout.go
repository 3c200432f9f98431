package devlabel

import (
	"fmt"
)

// Limits of a layout.
const (
	sector = 512
	// Align is where the metadata area starts, and what the data area's
	// offset is rounded up to (as partitioning tools align).
	Align = 1 << 20
	// MinBlockSize and MaxBlockSize bound the pool's data block size.
	MinBlockSize = 64 << 10
	MaxBlockSize = 1 << 30
	// MinMetadataSize is the smallest metadata area a thin pool accepts.
	MinMetadataSize = 2 << 20
	// MaxMetadataSize is what the kernel's thin-pool uses at most
	// (THIN_METADATA_MAX_SECTORS, 255 * 2^14 metadata blocks of 4 KiB):
	// a bigger area would be wasted.
	MaxMetadataSize = 255 * (1 << 14) * 4096
	// MetadataPercent of the device goes to metadata: Docker's
	// direct-lvm setup gives the metadata volume 1% of the disk. LVM's
	// own rule (64 bytes per data block) needs 0.1% at 64 KiB blocks, so
	// 1% leaves room for the device to grow about tenfold.
	MetadataPercent = 1
	// MinDataBlocks is the smallest data area, in blocks.
	MinDataBlocks = 16
)

// Plan lays out a device of deviceSize bytes for a pool of blockSize-byte
// data blocks.
func Plan(uuid UUID, deviceSize, blockSize int64) (Label, error) {
	if blockSize < MinBlockSize || blockSize > MaxBlockSize || blockSize%MinBlockSize != 0 {
		return Label{}, fmt.Errorf("devlabel: block size %d: want a multiple of %d between %d and %d", blockSize, MinBlockSize, MinBlockSize, MaxBlockSize)
	}
	meta := roundUp(deviceSize*MetadataPercent/100, Align)
	meta = min(max(meta, MinMetadataSize), MaxMetadataSize)
	dataOff := roundUp(roundUp(Align+meta, Align), blockSize)
	l := Label{
		UUID: uuid, DeviceSize: deviceSize - deviceSize%sector, BlockSize: blockSize,
		MetaOffset: Align, MetaLength: meta,
		DataOffset: dataOff,
	}
	if avail := l.DeviceSize - dataOff; avail > 0 {
		l.DataLength = avail - avail%blockSize
	}
	if l.DataLength < MinDataBlocks*blockSize {
		return Label{}, fmt.Errorf("devlabel: a device of %d bytes is too small: after the label and %d bytes of metadata it has room for %d data blocks of %d bytes, want at least %d",
			deviceSize, meta, l.DataLength/blockSize, blockSize, MinDataBlocks)
	}
	return l, l.Validate()
}

// Grow returns the label for the device grown to deviceSize bytes: the data
// area takes the new room (whole blocks); the metadata area stays. ok is
// false when there is not a whole block to gain. A device smaller than the
// label's data area is an error: shrinking would cut off data the pool may
// use.
func (l Label) Grow(deviceSize int64) (grown Label, ok bool, err error) {
	if deviceSize < l.DataEnd() {
		return l, false, fmt.Errorf("devlabel: the device has %d bytes, its label says the data area ends at %d: a device must not shrink", deviceSize, l.DataEnd())
	}
	avail := deviceSize - deviceSize%sector - l.DataOffset
	length := avail - avail%l.BlockSize
	if length <= l.DataLength {
		return l, false, nil
	}
	l.DataLength = length
	l.DeviceSize = deviceSize - deviceSize%sector
	l.Seq++
	return l, true, l.Validate()
}

func roundUp(v, to int64) int64 { return (v + to - 1) / to * to }
