package devlabel

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
)

// Size is the label's length on disk: one 4 KiB block at offset 0.
const Size = 4096

// Version is the format this package writes.
const Version = 1

// Magic starts the label.
var Magic = [8]byte{'D', 'M', 'T', 'H', 'I', 'N', 'D', 'L'}

// Errors Decode and Read return; test with errors.Is.
var (
	// ErrNoLabel: the block does not start with Magic.
	ErrNoLabel = errors.New("devlabel: no dmthin label")
	// ErrCorrupt: the block starts with Magic but its checksum or its
	// layout is wrong.
	ErrCorrupt = errors.New("devlabel: corrupt dmthin label")
	// ErrVersion: a label of a format version this package does not know.
	ErrVersion = errors.New("devlabel: unsupported dmthin label version")
)

// UUID identifies one pool's device; the store under the pool's root keeps
// it to recognise the device.
type UUID [16]byte

func (u UUID) String() string { return hex.EncodeToString(u[:]) }

// IsZero reports whether u is all zeroes (no UUID).
func (u UUID) IsZero() bool { return u == UUID{} }

// ParseUUID reads what String prints.
func ParseUUID(s string) (UUID, error) {
	var u UUID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(u) {
		return u, fmt.Errorf("devlabel: uuid %q: want %d hex digits", s, 2*len(u))
	}
	copy(u[:], b)
	return u, nil
}

// Label is the decoded label. Offsets and lengths are in bytes.
type Label struct {
	UUID UUID
	// Seq is bumped at every rewrite.
	Seq uint64
	// DeviceSize is the device's size when the layout was last planned.
	DeviceSize int64
	// BlockSize is the pool's data block size.
	BlockSize  int64
	MetaOffset int64
	MetaLength int64
	DataOffset int64
	DataLength int64
}

// Byte offsets of the fields in the encoded block.
const (
	offMagic    = 0
	offVersion  = 8
	offUUID     = 16
	offSeq      = 32
	offDevSize  = 40
	offBlock    = 48
	offMetaOff  = 56
	offMetaLen  = 64
	offDataOff  = 72
	offDataLen  = 80
	offChecksum = Size - 4
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Encode returns the label's 4 KiB block. It checks the layout first.
func (l Label) Encode() ([]byte, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	b := make([]byte, Size)
	copy(b[offMagic:], Magic[:])
	le := binary.LittleEndian
	le.PutUint32(b[offVersion:], Version)
	copy(b[offUUID:], l.UUID[:])
	le.PutUint64(b[offSeq:], l.Seq)
	for _, f := range []struct {
		off int
		v   int64
	}{{offDevSize, l.DeviceSize}, {offBlock, l.BlockSize}, {offMetaOff, l.MetaOffset}, {offMetaLen, l.MetaLength}, {offDataOff, l.DataOffset}, {offDataLen, l.DataLength}} {
		le.PutUint64(b[f.off:], uint64(f.v))
	}
	le.PutUint32(b[offChecksum:], crc32.Checksum(b[:offChecksum], castagnoli))
	return b, nil
}

// Decode reads a label from the first Size bytes of b.
func Decode(b []byte) (Label, error) {
	if len(b) < Size {
		return Label{}, fmt.Errorf("%w: %d bytes, want %d", ErrNoLabel, len(b), Size)
	}
	b = b[:Size]
	if [8]byte(b[offMagic:offMagic+8]) != Magic {
		return Label{}, ErrNoLabel
	}
	le := binary.LittleEndian
	if want, got := le.Uint32(b[offChecksum:]), crc32.Checksum(b[:offChecksum], castagnoli); want != got {
		return Label{}, fmt.Errorf("%w: checksum %#08x, label says %#08x", ErrCorrupt, got, want)
	}
	if v := le.Uint32(b[offVersion:]); v != Version {
		return Label{}, fmt.Errorf("%w: version %d, this dmthin reads version %d", ErrVersion, v, Version)
	}
	var l Label
	copy(l.UUID[:], b[offUUID:])
	l.Seq = le.Uint64(b[offSeq:])
	for _, f := range []struct {
		off int
		v   *int64
	}{{offDevSize, &l.DeviceSize}, {offBlock, &l.BlockSize}, {offMetaOff, &l.MetaOffset}, {offMetaLen, &l.MetaLength}, {offDataOff, &l.DataOffset}, {offDataLen, &l.DataLength}} {
		u := le.Uint64(b[f.off:])
		if u > 1<<62 {
			return Label{}, fmt.Errorf("%w: field at byte %d is %d", ErrCorrupt, f.off, u)
		}
		*f.v = int64(u)
	}
	if err := l.Validate(); err != nil {
		return Label{}, err
	}
	return l, nil
}

// Validate checks the layout: areas aligned to sectors, after the label, in
// order, not overlapping, within DeviceSize, big enough for a pool. Each
// problem wraps ErrCorrupt.
func (l Label) Validate() error {
	var errs []error
	bad := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, a...)...))
	}
	if l.UUID.IsZero() {
		bad("no uuid")
	}
	if l.BlockSize < MinBlockSize || l.BlockSize > MaxBlockSize || l.BlockSize%MinBlockSize != 0 {
		bad("block size %d: want a multiple of %d between %d and %d", l.BlockSize, MinBlockSize, MinBlockSize, MaxBlockSize)
	}
	for _, f := range []struct {
		name string
		v    int64
	}{{"metadata offset", l.MetaOffset}, {"metadata length", l.MetaLength}, {"data offset", l.DataOffset}, {"data length", l.DataLength}, {"device size", l.DeviceSize}} {
		if f.v%sector != 0 {
			bad("%s %d is not a multiple of %d", f.name, f.v, sector)
		}
	}
	if l.MetaOffset < Size {
		bad("metadata area at %d overlaps the label", l.MetaOffset)
	}
	if l.MetaLength < MinMetadataSize || l.MetaLength > MaxMetadataSize {
		bad("metadata length %d: want %d to %d", l.MetaLength, MinMetadataSize, MaxMetadataSize)
	}
	if l.DataOffset < l.MetaOffset+l.MetaLength {
		bad("data area at %d overlaps the metadata area [%d, %d)", l.DataOffset, l.MetaOffset, l.MetaOffset+l.MetaLength)
	}
	if l.BlockSize > 0 && (l.DataLength < MinDataBlocks*l.BlockSize || l.DataLength%l.BlockSize != 0) {
		bad("data length %d: want a multiple of the block size %d, at least %d blocks", l.DataLength, l.BlockSize, MinDataBlocks)
	}
	if l.DataEnd() > l.DeviceSize {
		bad("data area ends at %d, past the device size %d", l.DataEnd(), l.DeviceSize)
	}
	return errors.Join(errs...)
}

// DataEnd is the first byte after the data area.
func (l Label) DataEnd() int64 { return l.DataOffset + l.DataLength }
