package devmapper

import (
	"fmt"
	"strconv"
	"strings"
)

// PoolMode is the operating mode a thin pool reports.
type PoolMode int

const (
	// PoolReadWrite is normal operation ("rw").
	PoolReadWrite PoolMode = iota
	// PoolReadOnly: metadata can no longer be changed ("ro").
	PoolReadOnly
	// PoolOutOfDataSpace: no free data blocks ("out_of_data_space").
	PoolOutOfDataSpace
	// PoolFailed: the pool failed; its status line is just "Fail".
	PoolFailed
	// PoolError: the kernel could not read the pool's statistics ("Error").
	PoolError
)

func (m PoolMode) String() string {
	switch m {
	case PoolReadWrite:
		return "rw"
	case PoolReadOnly:
		return "ro"
	case PoolOutOfDataSpace:
		return "out_of_data_space"
	case PoolFailed:
		return "Fail"
	case PoolError:
		return "Error"
	}
	return fmt.Sprintf("PoolMode(%d)", int(m))
}

// NoSpacePolicy is what a pool does with writes when it runs out of space.
type NoSpacePolicy int

const (
	// QueueIfNoSpace holds writes until space is added (or a timeout).
	QueueIfNoSpace NoSpacePolicy = iota
	// ErrorIfNoSpace fails writes with ENOSPC at once.
	ErrorIfNoSpace
)

// ThinPoolStatus is the parsed status line of a thin-pool target.
type ThinPoolStatus struct {
	Mode               PoolMode      `json:"mode"`
	TransactionID      uint64        `json:"transaction_id"`
	UsedMetadataBlocks uint64        `json:"used_metadata_blocks"` // 4 KiB metadata blocks
	TotalMetadata      uint64        `json:"total_metadata"`
	UsedDataBlocks     uint64        `json:"used_data_blocks"` // data blocks of the pool's block size
	TotalDataBlocks    uint64        `json:"total_data_blocks"`
	HeldMetadataRoot   *uint64       `json:"held_metadata_root"` // nil when no metadata snapshot is held
	DiscardPassdown    bool          `json:"discard_passdown"`
	NoSpace            NoSpacePolicy `json:"no_space"`
	NeedsCheck         bool          `json:"needs_check"`
	// MetadataLowWatermark is 0 on kernels that do not print it.
	MetadataLowWatermark uint64 `json:"metadata_low_watermark"`

	// DiscardIgnored: the pool was made with ignore_discard (then
	// DiscardPassdown is false too).
	DiscardIgnored bool `json:"discard_ignored"`
}

// MetadataBlockSize is the thin pool metadata block size in bytes.
const MetadataBlockSize = 4096

// ParseThinPoolStatus reads a thin-pool status line. "Fail" and "Error" are
// valid statuses (Mode PoolFailed / PoolError), not parse errors.
func ParseThinPoolStatus(s string) (ThinPoolStatus, error) {
	s = strings.TrimSpace(s)
	switch s {
	case "Fail":
		return ThinPoolStatus{Mode: PoolFailed}, nil
	case "Error":
		return ThinPoolStatus{Mode: PoolError}, nil
	}
	f := strings.Fields(s)
	if len(f) < 5 {
		return ThinPoolStatus{}, fmt.Errorf("%w: thin-pool %q: %d fields, want at least 5", ErrBadStatus, s, len(f))
	}
	var st ThinPoolStatus
	var err error
	if st.TransactionID, err = strconv.ParseUint(f[0], 10, 64); err != nil {
		return st, fmt.Errorf("%w: thin-pool transaction id %q: %w", ErrBadStatus, f[0], err)
	}
	if st.UsedMetadataBlocks, st.TotalMetadata, err = parseRatio(f[1]); err != nil {
		return st, fmt.Errorf("%w: thin-pool metadata blocks: %w", ErrBadStatus, err)
	}
	if st.UsedDataBlocks, st.TotalDataBlocks, err = parseRatio(f[2]); err != nil {
		return st, fmt.Errorf("%w: thin-pool data blocks: %w", ErrBadStatus, err)
	}
	if f[3] != "-" {
		v, err := strconv.ParseUint(f[3], 10, 64)
		if err != nil {
			return st, fmt.Errorf("%w: thin-pool held metadata root %q: %w", ErrBadStatus, f[3], err)
		}
		st.HeldMetadataRoot = &v
	}
	switch f[4] {
	case "rw":
		st.Mode = PoolReadWrite
	case "ro":
		st.Mode = PoolReadOnly
	case "out_of_data_space":
		st.Mode = PoolOutOfDataSpace
	default:
		return st, fmt.Errorf("%w: thin-pool mode %q unknown", ErrBadStatus, f[4])
	}
	st.DiscardPassdown = true
	for i, a := range f[5:] {
		switch {
		case a == "discard_passdown":
			st.DiscardPassdown = true
		case a == "no_discard_passdown":
			st.DiscardPassdown = false
		case a == "ignore_discard":
			st.DiscardPassdown = false
			st.DiscardIgnored = true
		case a == "error_if_no_space":
			st.NoSpace = ErrorIfNoSpace
		case a == "queue_if_no_space":
			st.NoSpace = QueueIfNoSpace
		case a == "needs_check":
			st.NeedsCheck = true
		case a == "-" && i+5 == 7:
			// needs_check's place when the pool needs none.
		case i+5 == 8:
			v, err := strconv.ParseUint(a, 10, 64)
			if err != nil {
				return st, fmt.Errorf("%w: thin-pool metadata low watermark %q: %w", ErrBadStatus, a, err)
			}
			st.MetadataLowWatermark = v
		default:
			return st, fmt.Errorf("%w: thin-pool field %d %q unknown", ErrBadStatus, i+5, a)
		}
	}
	return st, nil
}

func parseRatio(s string) (uint64, uint64, error) {
	a, b, ok := strings.Cut(s, "/")
	if !ok {
		return 0, 0, fmt.Errorf("%q is not used/total", s)
	}
	u, err := strconv.ParseUint(a, 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("used %q: %w", a, err)
	}
	t, err := strconv.ParseUint(b, 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("total %q: %w", b, err)
	}
	if u > t {
		return 0, 0, fmt.Errorf("used %d exceeds total %d", u, t)
	}
	return u, t, nil
}

// ThinStatus is the parsed status line of a thin target.
type ThinStatus struct {
	Failed        bool    `json:"failed"`
	MappedSectors Sectors `json:"mapped_sectors"`
	// HighestMapped is the last mapped sector; nil when nothing is mapped.
	HighestMapped *Sectors `json:"highest_mapped"`
}

// ParseThinStatus reads "<mapped sectors> <highest mapped sector|->" or
// "Fail".
func ParseThinStatus(s string) (ThinStatus, error) {
	s = strings.TrimSpace(s)
	if s == "Fail" {
		return ThinStatus{Failed: true}, nil
	}
	f := strings.Fields(s)
	if len(f) != 2 {
		return ThinStatus{}, fmt.Errorf("%w: thin %q: want mapped highest", ErrBadStatus, s)
	}
	m, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil {
		return ThinStatus{}, fmt.Errorf("%w: thin mapped sectors %q: %w", ErrBadStatus, f[0], err)
	}
	st := ThinStatus{MappedSectors: Sectors(m)}
	if f[1] != "-" {
		h, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			return ThinStatus{}, fmt.Errorf("%w: thin highest mapped sector %q: %w", ErrBadStatus, f[1], err)
		}
		hs := Sectors(h)
		st.HighestMapped = &hs
	}
	return st, nil
}
