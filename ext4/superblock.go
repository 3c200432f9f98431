package ext4

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"time"
)

// Layout of the primary superblock (see the kernel's
// Documentation/filesystems/ext4/super.rst).
const (
	superblockOffset = 1024   // byte offset of the primary superblock
	superblockSize   = 1024   // bytes
	magic            = 0xEF53 // s_magic
	checksumCRC32C   = 1      // s_checksum_type for crc32c

	maxLogBlockSize = 6 // 64 KiB blocks, the kernel's limit (0 is 1 KiB)
)

// Byte offsets of the fields read, inside the superblock.
const (
	offInodesCount      = 0x00
	offBlocksCountLo    = 0x04
	offRBlocksCountLo   = 0x08
	offFreeBlocksLo     = 0x0C
	offFreeInodes       = 0x10
	offFirstDataBlock   = 0x14
	offLogBlockSize     = 0x18
	offBlocksPerGroup   = 0x20
	offInodesPerGroup   = 0x28
	offMtime            = 0x2C
	offWtime            = 0x30
	offMntCount         = 0x34
	offMaxMntCount      = 0x36
	offMagic            = 0x38
	offState            = 0x3A
	offErrors           = 0x3C
	offLastCheck        = 0x40
	offCheckInterval    = 0x44
	offRevLevel         = 0x4C
	offInodeSize        = 0x58
	offFeatureCompat    = 0x5C
	offFeatureIncompat  = 0x60
	offFeatureROCompat  = 0x64
	offUUID             = 0x68
	offVolumeName       = 0x78
	offLastMounted      = 0x88
	offMkfsTime         = 0x108
	offBlocksCountHi    = 0x150
	offRBlocksCountHi   = 0x154
	offFreeBlocksHi     = 0x158
	offChecksumType     = 0x175
	offKBytesWritten    = 0x178
	offErrorCount       = 0x194
	offWtimeHi          = 0x274
	offMtimeHi          = 0x275
	offMkfsTimeHi       = 0x276
	offLastCheckHi      = 0x277
	offChecksum         = 0x3FC
	goodOldRev          = 0   // s_rev_level of the original ext2: fixed 128-byte inodes, no features
	goodOldInodeSize    = 128 // inode size for goodOldRev
	checksumCoveredSize = offChecksum
)

// Superblock is the part of an ext2/3/4 primary superblock that storage code
// needs: identity, geometry, usage, features and health. Times that were
// never set are the zero time.Time.
//
// Read from a mounted filesystem it shows what the kernel last wrote: the
// free counts lag behind (statfs has the live numbers), a journaled
// filesystem has IncompatRecover set, and one without a journal lacks
// StateValid.
type Superblock struct {
	UUID          [16]byte
	Label         string // s_volume_name, at most 16 bytes
	LastMountedOn string // directory where it was last mounted, if the kernel recorded it

	BlockSize      uint32 // bytes, 1024 to 65536
	BlockCount     uint64 // includes the high half when the 64bit feature is set
	FreeBlocks     uint64
	ReservedBlocks uint64 // blocks reserved for the superuser
	FirstDataBlock uint32 // 1 for 1 KiB blocks, else 0
	BlocksPerGroup uint32

	InodeCount     uint32
	FreeInodes     uint32
	InodesPerGroup uint32
	InodeSize      uint16

	RevLevel        uint32 // 0: original ext2 (no features), 1: dynamic
	FeatureCompat   CompatFeatures
	FeatureIncompat IncompatFeatures
	FeatureROCompat ROCompatFeatures

	State         State
	Errors        ErrorBehavior
	ErrorCount    uint32 // errors the kernel recorded since the last e2fsck
	MountCount    uint16 // mounts since the last check
	MaxMountCount int16  // mounts before a forced check; -1 or 0: never
	CheckInterval time.Duration
	KBytesWritten uint64 // lifetime writes in KiB, as the kernel accounts them

	Created   time.Time // s_mkfs_time
	LastMount time.Time // s_mtime
	LastWrite time.Time // s_wtime
	LastCheck time.Time // s_lastcheck

	// Checksum is s_checksum; ReadSuperblock has verified it when
	// FeatureROCompat has ROCompatMetadataCsum, it is 0 otherwise.
	Checksum uint32
}

// ReadSuperblock reads the primary superblock at byte 1024 of r.
//
// It returns an error wrapping ErrNotExt4 when r is too short or lacks the
// magic number, and one wrapping ErrBadSuperblock when the magic is there but
// the checksum (metadata_csum) or the geometry is wrong. Read errors are
// returned as they are. ext2 and ext3 filesystems are read too: check the
// features to tell them apart.
func ReadSuperblock(r io.ReaderAt) (*Superblock, error) {
	buf := make([]byte, superblockSize)
	n, err := r.ReadAt(buf, superblockOffset)
	if n < superblockSize {
		if err == nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w: only %d bytes at offset %d, a superblock needs %d",
				ErrNotExt4, n, superblockOffset, superblockSize)
		}
		return nil, fmt.Errorf("ext4: read superblock: %w", err)
	}
	return parseSuperblock(buf)
}

// ReadSuperblockFile reads the primary superblock of a block device or an
// image file. See ReadSuperblock for the errors.
func ReadSuperblockFile(path string) (*Superblock, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("ext4: %w", err)
	}
	defer f.Close()
	sb, err := ReadSuperblock(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return sb, nil
}

// Size returns the filesystem size in bytes: BlockCount*BlockSize.
func (s *Superblock) Size() uint64 { return s.BlockCount * uint64(s.BlockSize) }

// UUIDString returns the UUID in its usual form, e.g.
// "2ea26daf-2847-4843-81c9-48620ed0efd9".
func (s *Superblock) UUIDString() string {
	u := s.UUID
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// Features returns all feature names, compat then incompat then read-only
// compat, the order dumpe2fs prints them in.
func (s *Superblock) Features() []string {
	out := s.FeatureCompat.Names()
	out = append(out, s.FeatureIncompat.Names()...)
	return append(out, s.FeatureROCompat.Names()...)
}

// PeriodicCheck reports whether e2fsck will force a full check after some
// number of mounts or some time (tune2fs -c / -i).
func (s *Superblock) PeriodicCheck() bool { return s.MaxMountCount > 0 || s.CheckInterval > 0 }

// checkedSinceMount reports what resize2fs requires before resizing an
// unmounted filesystem: cleanly unmounted, no errors, and checked by e2fsck
// since it was last mounted.
func (s *Superblock) checkedSinceMount() bool {
	return s.State.Clean() && !s.LastCheck.Before(s.LastMount)
}

// superblockChecksum is the metadata_csum checksum: crc32c, seed ~0, no final
// inversion, over the superblock up to the checksum field.
func superblockChecksum(buf []byte) uint32 {
	return ^crc32.Checksum(buf[:checksumCoveredSize], castagnoli)
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func parseSuperblock(buf []byte) (*Superblock, error) {
	le := binary.LittleEndian
	u16 := func(off int) uint16 { return le.Uint16(buf[off:]) }
	u32 := func(off int) uint32 { return le.Uint32(buf[off:]) }
	if m := u16(offMagic); m != magic {
		return nil, fmt.Errorf("%w: magic number is %#04x, want %#04x", ErrNotExt4, m, magic)
	}
	s := &Superblock{
		InodeCount:      u32(offInodesCount),
		FreeInodes:      u32(offFreeInodes),
		FirstDataBlock:  u32(offFirstDataBlock),
		BlocksPerGroup:  u32(offBlocksPerGroup),
		InodesPerGroup:  u32(offInodesPerGroup),
		MountCount:      u16(offMntCount),
		MaxMountCount:   int16(u16(offMaxMntCount)),
		State:           State(u16(offState)),
		Errors:          ErrorBehavior(u16(offErrors)),
		CheckInterval:   time.Duration(u32(offCheckInterval)) * time.Second,
		RevLevel:        u32(offRevLevel),
		FeatureCompat:   CompatFeatures(u32(offFeatureCompat)),
		FeatureIncompat: IncompatFeatures(u32(offFeatureIncompat)),
		FeatureROCompat: ROCompatFeatures(u32(offFeatureROCompat)),
		Label:           cString(buf[offVolumeName : offVolumeName+16]),
		LastMountedOn:   cString(buf[offLastMounted : offLastMounted+64]),
		KBytesWritten:   le.Uint64(buf[offKBytesWritten:]),
		ErrorCount:      u32(offErrorCount),
		Created:         timestamp(u32(offMkfsTime), buf[offMkfsTimeHi]),
		LastMount:       timestamp(u32(offMtime), buf[offMtimeHi]),
		LastWrite:       timestamp(u32(offWtime), buf[offWtimeHi]),
		LastCheck:       timestamp(u32(offLastCheck), buf[offLastCheckHi]),
	}
	copy(s.UUID[:], buf[offUUID:offUUID+16])

	if s.FeatureROCompat.Has(ROCompatMetadataCsum) {
		if t := buf[offChecksumType]; t != checksumCRC32C {
			return nil, fmt.Errorf("%w: unknown checksum type %d", ErrBadSuperblock, t)
		}
		s.Checksum = u32(offChecksum)
		if sum := superblockChecksum(buf); sum != s.Checksum {
			return nil, fmt.Errorf("%w: checksum is %#08x, computed %#08x", ErrBadSuperblock, s.Checksum, sum)
		}
	}

	logBlock := u32(offLogBlockSize)
	if logBlock > maxLogBlockSize {
		return nil, fmt.Errorf("%w: log block size %d is out of range", ErrBadSuperblock, logBlock)
	}
	s.BlockSize = 1024 << logBlock
	s.BlockCount = uint64(u32(offBlocksCountLo))
	s.ReservedBlocks = uint64(u32(offRBlocksCountLo))
	s.FreeBlocks = uint64(u32(offFreeBlocksLo))
	if s.FeatureIncompat.Has(Incompat64Bit) {
		s.BlockCount |= uint64(u32(offBlocksCountHi)) << 32
		s.ReservedBlocks |= uint64(u32(offRBlocksCountHi)) << 32
		s.FreeBlocks |= uint64(u32(offFreeBlocksHi)) << 32
	}
	if s.RevLevel == goodOldRev {
		s.InodeSize = goodOldInodeSize
	} else {
		s.InodeSize = u16(offInodeSize)
	}
	if err := s.checkGeometry(); err != nil {
		return nil, err
	}
	return s, nil
}

// checkGeometry rejects values no mkfs writes, so that callers can do
// arithmetic with the fields (Size cannot overflow, groups are not empty).
func (s *Superblock) checkGeometry() error {
	switch {
	case s.BlockCount == 0:
		return fmt.Errorf("%w: block count is 0", ErrBadSuperblock)
	case s.BlockCount > (1<<64-1)/uint64(s.BlockSize):
		return fmt.Errorf("%w: block count %d overflows a 64-bit byte size", ErrBadSuperblock, s.BlockCount)
	case s.BlocksPerGroup == 0 || s.InodesPerGroup == 0:
		return fmt.Errorf("%w: %d blocks and %d inodes per group", ErrBadSuperblock, s.BlocksPerGroup, s.InodesPerGroup)
	case s.InodeSize < goodOldInodeSize || s.InodeSize&(s.InodeSize-1) != 0 || uint32(s.InodeSize) > s.BlockSize:
		return fmt.Errorf("%w: inode size %d", ErrBadSuperblock, s.InodeSize)
	}
	return nil
}

// timestamp combines a 32-bit seconds field with its 8-bit high part; zero
// means never set.
func timestamp(lo uint32, hi byte) time.Time {
	sec := int64(hi)<<32 | int64(lo)
	if sec == 0 {
		return time.Time{}
	}
	return time.Unix(sec, 0)
}

// cString returns b up to its first NUL.
func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}
