package devmapper

import (
	"fmt"
	"strconv"
	"strings"
)

// Target is one line of a table: a range of the device and the target that
// maps it.
type Target struct {
	Start, Length Sectors
	Params        TargetParams
}

// TargetParams is a target type with its parameters. String prints exactly
// the parameter text the kernel takes (and prints back in DM_TABLE_STATUS
// with the table flag).
type TargetParams interface {
	TargetType() string
	String() string
}

// Table is a device's table, in order of Start.
type Table []Target

// String prints the table as dmsetup would show it: one
// "start length type params" line per target.
func (t Table) String() string {
	var b strings.Builder
	for _, tg := range t {
		fmt.Fprintf(&b, "%d %d %s %s\n", tg.Start, tg.Length, tg.Params.TargetType(), tg.Params.String())
	}
	return b.String()
}

// Length returns the table's total length.
func (t Table) Length() Sectors {
	var n Sectors
	for _, tg := range t {
		n += tg.Length
	}
	return n
}

// ParseTable reads the text form printed by Table.String (and dmsetup table).
func ParseTable(text string) (Table, error) {
	var t Table
	for i, line := range strings.Split(strings.TrimSpace(text), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		f := strings.SplitN(line, " ", 4)
		if len(f) < 3 {
			return nil, fmt.Errorf("%w: line %d %q: want start length type params", ErrBadTable, i+1, line)
		}
		start, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%w: line %d: start: %w", ErrBadTable, i+1, err)
		}
		length, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%w: line %d: length: %w", ErrBadTable, i+1, err)
		}
		params := ""
		if len(f) == 4 {
			params = f[3]
		}
		p, err := ParseTargetParams(f[2], params)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
		t = append(t, Target{Start: Sectors(start), Length: Sectors(length), Params: p})
	}
	return t, nil
}

// ParseTargetParams types the parameters of a known target; other target
// types come back as RawParams.
func ParseTargetParams(typ, params string) (TargetParams, error) {
	switch typ {
	case "thin-pool":
		return ParseThinPoolParams(params)
	case "thin":
		return ParseThinParams(params)
	case "linear":
		return ParseLinearParams(params)
	default:
		return RawParams{Type: typ, Params: params}, nil
	}
}

// RawParams is the escape hatch for targets this package does not type
// (error, zero, flakey, delay, ...).
type RawParams struct {
	Type   string
	Params string
}

func (r RawParams) TargetType() string { return r.Type }
func (r RawParams) String() string     { return r.Params }

// LinearParams maps onto a range of another device.
type LinearParams struct {
	Device Dev
	Offset Sectors
}

func (LinearParams) TargetType() string { return "linear" }
func (l LinearParams) String() string   { return fmt.Sprintf("%s %d", l.Device, l.Offset) }

// ParseLinearParams reads "MAJ:MIN offset".
func ParseLinearParams(s string) (LinearParams, error) {
	f := strings.Fields(s)
	if len(f) != 2 {
		return LinearParams{}, fmt.Errorf("%w: linear %q: want device offset", ErrBadTable, s)
	}
	d, err := ParseDev(f[0])
	if err != nil {
		return LinearParams{}, fmt.Errorf("linear device: %w", err)
	}
	off, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return LinearParams{}, fmt.Errorf("%w: linear offset %q: %w", ErrBadTable, f[1], err)
	}
	return LinearParams{Device: d, Offset: Sectors(off)}, nil
}

// ThinParams maps a thin device of a pool, optionally with an external
// read-only origin.
type ThinParams struct {
	Pool   Dev
	ID     ThinID
	Origin *Dev // external origin, nil for none
}

func (ThinParams) TargetType() string { return "thin" }
func (t ThinParams) String() string {
	if t.Origin != nil {
		return fmt.Sprintf("%s %s %s", t.Pool, t.ID, *t.Origin)
	}
	return fmt.Sprintf("%s %s", t.Pool, t.ID)
}

// ParseThinParams reads "pool_dev dev_id [external_origin_dev]".
func ParseThinParams(s string) (ThinParams, error) {
	f := strings.Fields(s)
	if len(f) != 2 && len(f) != 3 {
		return ThinParams{}, fmt.Errorf("%w: thin %q: want pool id [origin]", ErrBadTable, s)
	}
	pool, err := ParseDev(f[0])
	if err != nil {
		return ThinParams{}, fmt.Errorf("thin pool: %w", err)
	}
	v, err := strconv.ParseUint(f[1], 10, 32)
	if err != nil {
		return ThinParams{}, fmt.Errorf("%w: thin id %q: %w", ErrBadTable, f[1], err)
	}
	id, err := NewThinID(v)
	if err != nil {
		return ThinParams{}, err
	}
	out := ThinParams{Pool: pool, ID: id}
	if len(f) == 3 {
		o, err := ParseDev(f[2])
		if err != nil {
			return ThinParams{}, fmt.Errorf("thin origin: %w", err)
		}
		out.Origin = &o
	}
	return out, nil
}

// ThinPoolFeatures are the optional feature arguments of a thin-pool table.
type ThinPoolFeatures struct {
	SkipBlockZeroing  bool // skip_block_zeroing
	IgnoreDiscard     bool // ignore_discard
	NoDiscardPassdown bool // no_discard_passdown
	ReadOnly          bool // read_only
	ErrorIfNoSpace    bool // error_if_no_space
}

func (f ThinPoolFeatures) args() []string {
	var a []string
	if f.SkipBlockZeroing {
		a = append(a, "skip_block_zeroing")
	}
	if f.IgnoreDiscard {
		a = append(a, "ignore_discard")
	}
	if f.NoDiscardPassdown {
		a = append(a, "no_discard_passdown")
	}
	if f.ReadOnly {
		a = append(a, "read_only")
	}
	if f.ErrorIfNoSpace {
		a = append(a, "error_if_no_space")
	}
	return a
}

// ThinPoolParams are the parameters of a thin-pool target:
// "metadata_dev data_dev data_block_size low_water_mark #features features...".
type ThinPoolParams struct {
	Metadata, Data Dev
	BlockSize      Sectors // data block size: 128 (64 KiB) to 2097152 (1 GiB), multiple of 128
	LowWaterMark   uint64  // in data blocks
	Features       ThinPoolFeatures
}

// Block size limits of the thin-pool target, in sectors.
const (
	MinPoolBlockSize Sectors = 128
	MaxPoolBlockSize Sectors = 2097152
)

// Validate checks what the kernel would refuse.
func (p ThinPoolParams) Validate() error {
	if p.BlockSize < MinPoolBlockSize || p.BlockSize > MaxPoolBlockSize || p.BlockSize%MinPoolBlockSize != 0 {
		return fmt.Errorf("%w: thin-pool block size %d sectors: want a multiple of %d between %d and %d",
			ErrBadTable, p.BlockSize, MinPoolBlockSize, MinPoolBlockSize, MaxPoolBlockSize)
	}
	if p.Metadata.IsZero() || p.Data.IsZero() {
		return fmt.Errorf("%w: thin-pool needs metadata and data devices", ErrBadTable)
	}
	return nil
}

func (ThinPoolParams) TargetType() string { return "thin-pool" }
func (p ThinPoolParams) String() string {
	a := p.Features.args()
	s := fmt.Sprintf("%s %s %d %d %d", p.Metadata, p.Data, p.BlockSize, p.LowWaterMark, len(a))
	if len(a) > 0 {
		s += " " + strings.Join(a, " ")
	}
	return s
}

// ParseThinPoolParams reads the text printed by String.
func ParseThinPoolParams(s string) (ThinPoolParams, error) {
	f := strings.Fields(s)
	if len(f) < 5 {
		return ThinPoolParams{}, fmt.Errorf("%w: thin-pool %q: want meta data blocksize lowwater #features", ErrBadTable, s)
	}
	var p ThinPoolParams
	var err error
	if p.Metadata, err = ParseDev(f[0]); err != nil {
		return p, fmt.Errorf("thin-pool metadata: %w", err)
	}
	if p.Data, err = ParseDev(f[1]); err != nil {
		return p, fmt.Errorf("thin-pool data: %w", err)
	}
	bs, err := strconv.ParseUint(f[2], 10, 64)
	if err != nil {
		return p, fmt.Errorf("%w: thin-pool block size %q: %w", ErrBadTable, f[2], err)
	}
	p.BlockSize = Sectors(bs)
	if p.LowWaterMark, err = strconv.ParseUint(f[3], 10, 64); err != nil {
		return p, fmt.Errorf("%w: thin-pool low water mark %q: %w", ErrBadTable, f[3], err)
	}
	n, err := strconv.Atoi(f[4])
	if err != nil || n < 0 || n != len(f)-5 {
		return p, fmt.Errorf("%w: thin-pool feature count %q does not match %d arguments", ErrBadTable, f[4], len(f)-5)
	}
	for _, a := range f[5:] {
		switch a {
		case "skip_block_zeroing":
			p.Features.SkipBlockZeroing = true
		case "ignore_discard":
			p.Features.IgnoreDiscard = true
		case "no_discard_passdown":
			p.Features.NoDiscardPassdown = true
		case "read_only":
			p.Features.ReadOnly = true
		case "error_if_no_space":
			p.Features.ErrorIfNoSpace = true
		default:
			return p, fmt.Errorf("%w: thin-pool feature %q unknown", ErrBadTable, a)
		}
	}
	return p, nil
}
