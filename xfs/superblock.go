package xfs

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"math/bits"
	"os"
)

// Layout of the primary superblock, struct xfs_dsb in the kernel's
// fs/xfs/libxfs/xfs_format.h: big-endian, at byte 0 of the device, in the
// first sector.
const (
	magic       = 0x58465342 // "XFSB"
	minSectSize = 512
	maxSectSize = 32768
	minBlock    = 512
	maxBlock    = 65536

	offMagic          = 0
	offBlockSize      = 4
	offDBlocks        = 8
	offUUID           = 32
	offAGBlocks       = 84
	offAGCount        = 88
	offLogBlocks      = 96
	offVersion        = 100
	offSectSize       = 102
	offInodeSize      = 104
	offFname          = 108
	offBlockLog       = 120
	offInProgress     = 126
	offICount         = 128
	offIFree          = 136
	offFDBlocks       = 144
	offFeatIncompat   = 216
	offCRC            = 224
	offMetaUUID       = 248
	superblockMinSize = 264 // through sb_meta_uuid

	versionMask       = 0x000f // XFS_SB_VERSION_NUMBITS
	incompatMetaUUID  = 1 << 2 // XFS_SB_FEAT_INCOMPAT_META_UUID
	maxLabelLen       = 12     // sb_fname
	minAGBlocksOnGrow = 64     // XFS_MIN_AG_BLOCKS: a smaller last AG is not added
)

// castagnoli is the CRC32c table of v5 superblocks.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Superblock is the part of an XFS primary superblock that storage code
// needs: identity, geometry and usage.
//
// Read from a mounted filesystem it shows what the kernel last wrote: the
// free counts lag behind (statfs has the live numbers).
type Superblock struct {
	UUID [16]byte // sb_uuid, what blkid and mount show
	// MetaUUID is the UUID stamped in the metadata, when it differs from
	// UUID (xfs_admin -U changed UUID); zero otherwise.
	MetaUUID   [16]byte
	Label      string // sb_fname, at most 12 bytes
	Version    int    // 4, or 5 for a filesystem with metadata CRCs
	BlockSize  uint32 // bytes
	SectorSize uint16 // bytes
	InodeSize  uint16 // bytes
	DataBlocks uint64 // sb_dblocks: size of the data section in blocks
	AGBlocks   uint32 // blocks per allocation group
	AGCount    uint32
	LogBlocks  uint32 // internal log, in blocks (0 for an external log)
	InodeCount uint64 // allocated inodes
	FreeInodes uint64
	FreeBlocks uint64 // sb_fdblocks
}

// ReadSuperblock reads and checks the primary superblock from r (a device or
// an image, starting at byte 0). It returns an error wrapping ErrNotXFS
// when there is no XFS magic, ErrBadSuperblock when it cannot be trusted.
func ReadSuperblock(r io.ReaderAt) (*Superblock, error) {
	buf := make([]byte, minSectSize)
	if n, err := r.ReadAt(buf, 0); n < len(buf) {
		if err == io.EOF || err == nil {
			return nil, fmt.Errorf("%w: only %d bytes, a superblock needs %d", ErrNotXFS, n, len(buf))
		}
		return nil, fmt.Errorf("xfs: read superblock: %w", err)
	}
	if binary.BigEndian.Uint32(buf[offMagic:]) != magic {
		return nil, fmt.Errorf("%w: magic %#08x at byte 0, want %#08x (\"XFSB\")", ErrNotXFS, binary.BigEndian.Uint32(buf[offMagic:]), magic)
	}
	// The CRC covers the whole first sector, which may be bigger than 512.
	sect := int(binary.BigEndian.Uint16(buf[offSectSize:]))
	if sect > len(buf) && sect <= maxSectSize && bits.OnesCount(uint(sect)) == 1 {
		buf = make([]byte, sect)
		if n, err := r.ReadAt(buf, 0); n < len(buf) {
			if err == io.EOF || err == nil {
				return nil, fmt.Errorf("%w: only %d bytes, its sector holds %d", ErrBadSuperblock, n, sect)
			}
			return nil, fmt.Errorf("xfs: read superblock: %w", err)
		}
	}
	return parseSuperblock(buf)
}

// ReadSuperblockFile is ReadSuperblock on a device node or image file.
func ReadSuperblockFile(path string) (*Superblock, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("xfs: %w", err)
	}
	defer f.Close()
	sb, err := ReadSuperblock(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return sb, nil
}

// superblockCRC is the CRC32c of the sector with the sb_crc field taken as
// zero, as the kernel computes it (xfs_start_cksum/xfs_end_cksum).
func superblockCRC(sector []byte) uint32 {
	crc := crc32.Update(0, castagnoli, sector[:offCRC])
	crc = crc32.Update(crc, castagnoli, []byte{0, 0, 0, 0})
	return crc32.Update(crc, castagnoli, sector[offCRC+4:])
}

func parseSuperblock(buf []byte) (*Superblock, error) {
	be := binary.BigEndian
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrBadSuperblock}, a...)...)
	}
	sb := &Superblock{
		Version:    int(be.Uint16(buf[offVersion:]) & versionMask),
		BlockSize:  be.Uint32(buf[offBlockSize:]),
		SectorSize: be.Uint16(buf[offSectSize:]),
		InodeSize:  be.Uint16(buf[offInodeSize:]),
		DataBlocks: be.Uint64(buf[offDBlocks:]),
		AGBlocks:   be.Uint32(buf[offAGBlocks:]),
		AGCount:    be.Uint32(buf[offAGCount:]),
		LogBlocks:  be.Uint32(buf[offLogBlocks:]),
		InodeCount: be.Uint64(buf[offICount:]),
		FreeInodes: be.Uint64(buf[offIFree:]),
		FreeBlocks: be.Uint64(buf[offFDBlocks:]),
		Label:      string(bytes.TrimRight(buf[offFname:offFname+maxLabelLen], "\x00")),
	}
	copy(sb.UUID[:], buf[offUUID:])
	switch {
	case sb.Version != 4 && sb.Version != 5:
		return nil, bad("version %d, want 4 or 5", sb.Version)
	case sb.SectorSize < minSectSize || sb.SectorSize > maxSectSize || bits.OnesCount16(sb.SectorSize) != 1:
		return nil, bad("sector size %d", sb.SectorSize)
	case int(sb.SectorSize) > len(buf):
		return nil, bad("sector size %d, but only %d bytes given", sb.SectorSize, len(buf))
	}
	if sb.Version == 5 {
		stored := binary.LittleEndian.Uint32(buf[offCRC:])
		if got := superblockCRC(buf[:sb.SectorSize]); got != stored {
			return nil, bad("CRC %#08x, computed %#08x", stored, got)
		}
		if be.Uint32(buf[offFeatIncompat:])&incompatMetaUUID != 0 {
			copy(sb.MetaUUID[:], buf[offMetaUUID:])
		}
	}
	switch {
	case buf[offInProgress] != 0:
		return nil, bad("mkfs did not finish (sb_inprogress set)")
	case sb.BlockSize < minBlock || sb.BlockSize > maxBlock || bits.OnesCount32(sb.BlockSize) != 1:
		return nil, bad("block size %d", sb.BlockSize)
	case 1<<buf[offBlockLog] != sb.BlockSize:
		return nil, bad("block size %d but block log %d", sb.BlockSize, buf[offBlockLog])
	case sb.AGCount == 0 || sb.AGBlocks == 0:
		return nil, bad("%d allocation groups of %d blocks", sb.AGCount, sb.AGBlocks)
	case sb.DataBlocks > uint64(sb.AGCount)*uint64(sb.AGBlocks) || sb.DataBlocks <= uint64(sb.AGCount-1)*uint64(sb.AGBlocks):
		return nil, bad("%d data blocks do not make %d allocation groups of %d", sb.DataBlocks, sb.AGCount, sb.AGBlocks)
	}
	return sb, nil
}

// Size is the size of the data section in bytes.
func (s *Superblock) Size() uint64 { return s.DataBlocks * uint64(s.BlockSize) }

// UUIDString formats UUID the way blkid and xfs_admin -u print it.
func (s *Superblock) UUIDString() string { return formatUUID(s.UUID) }

func formatUUID(u [16]byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// GrowsTo is the size in bytes the data section would have after Grow on a
// device of deviceSize bytes: the device's whole blocks, less a last
// allocation group the kernel would not add because it would hold fewer
// than 64 blocks (xfs_growfs_data_private). It is Size when the
// filesystem cannot grow there (XFS does not shrink here).
func (s *Superblock) GrowsTo(deviceSize int64) uint64 {
	if deviceSize <= 0 {
		return s.Size()
	}
	nb := uint64(deviceSize) / uint64(s.BlockSize)
	if mod := nb % uint64(s.AGBlocks); mod != 0 && mod < minAGBlocksOnGrow {
		nb -= mod
	}
	if nb <= s.DataBlocks {
		return s.Size()
	}
	return nb * uint64(s.BlockSize)
}
