package devmapper

import (
	"encoding/binary"
	"errors"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestParseTableRoundTrip(t *testing.T) {
	// Lines as `dmsetup table` printed them on Debian's 6.1 kernel.
	cases := []struct {
		line string
		want TargetParams
	}{
		{"0 2097152 thin-pool 7:1 7:0 128 32768 1 skip_block_zeroing",
			ThinPoolParams{Metadata: Dev{7, 1}, Data: Dev{7, 0}, BlockSize: 128, LowWaterMark: 32768,
				Features: ThinPoolFeatures{SkipBlockZeroing: true}}},
		{"0 2097152 thin-pool 7:1 7:0 128 0 2 no_discard_passdown error_if_no_space",
			ThinPoolParams{Metadata: Dev{7, 1}, Data: Dev{7, 0}, BlockSize: 128,
				Features: ThinPoolFeatures{NoDiscardPassdown: true, ErrorIfNoSpace: true}}},
		{"0 2097152 thin-pool 7:1 7:0 2097152 10 0",
			ThinPoolParams{Metadata: Dev{7, 1}, Data: Dev{7, 0}, BlockSize: 2097152, LowWaterMark: 10}},
		{"0 20971520 thin 254:0 7", ThinParams{Pool: Dev{254, 0}, ID: 7}},
		{"0 20971520 thin 254:0 16777215 7:3", ThinParams{Pool: Dev{254, 0}, ID: MaxThinID, Origin: &Dev{7, 3}}},
		{"0 8 linear 8:16 2048", LinearParams{Device: Dev{8, 16}, Offset: 2048}},
		{"0 100 flakey 7:0 0 1 1", RawParams{Type: "flakey", Params: "7:0 0 1 1"}},
		{"0 100 error", RawParams{Type: "error"}},
		{"0 2097152 thin-pool 7:1 7:0 128 0 2 ignore_discard read_only",
			ThinPoolParams{Metadata: Dev{7, 1}, Data: Dev{7, 0}, BlockSize: 128,
				Features: ThinPoolFeatures{IgnoreDiscard: true, ReadOnly: true}}},
	}
	for _, c := range cases {
		t.Run(c.line, func(t *testing.T) {
			tab, err := ParseTable(c.line)
			require.NoError(t, err)
			require.Len(t, tab, 1)
			assert.Equal(t, c.want, tab[0].Params)
			got := tab.String()
			if c.want.String() == "" {
				assert.Equal(t, c.line+" \n", got)
			} else {
				assert.Equal(t, c.line+"\n", got)
			}
		})
	}
}

func TestParseTableErrors(t *testing.T) {
	for _, line := range []string{
		"0 x thin 254:0 1",
		"0 10",
		"0 10 thin 254:0",
		"0 10 thin 254 1",
		"0 10 thin 254:0 16777216",
		"0 10 thin-pool 7:1 7:0 128 0 2 skip_block_zeroing",
		"0 10 thin-pool 7:1 7:0 128 0 1 bogus_feature",
		"0 10 linear 8:0",
		"0 10 linear 8x0 0",
		"0 10 linear 8:0 -1",
		"0 10 thin 254:0 one",
		"0 10 thin 254:0 1 7:x",
		"0 10 thin-pool 7:1 7:0 128 0",
		"0 10 thin-pool 7 7:0 128 0 0",
		"0 10 thin-pool 7:1 x:0 128 0 0",
		"0 10 thin-pool 7:1 7:0 big 0 0",
		"0 10 thin-pool 7:1 7:0 128 low 0",
		"x 10 error",
		"0 10 thin 254:0 1\n\n0 10 linear 8:0",
	} {
		_, err := ParseTable(line)
		assert.ErrorIs(t, err, ErrBadTable, line)
	}
}

func TestThinPoolValidate(t *testing.T) {
	ok := ThinPoolParams{Metadata: Dev{7, 1}, Data: Dev{7, 0}, BlockSize: 128}
	assert.NoError(t, ok.Validate())
	for _, bs := range []Sectors{0, 64, 192 + 1, 4194304} {
		p := ok
		p.BlockSize = bs
		assert.ErrorIs(t, p.Validate(), ErrBadTable, "block size %d", bs)
	}
	p := ok
	p.Data = Dev{}
	assert.ErrorIs(t, p.Validate(), ErrBadTable)
}

func TestNewThinID(t *testing.T) {
	id, err := NewThinID(MaxThinID)
	require.NoError(t, err)
	assert.Equal(t, "16777215", id.String())
	_, err = NewThinID(1 << 24)
	assert.ErrorIs(t, err, ErrBadTable)
}

func TestDevEncoding(t *testing.T) {
	for _, d := range []Dev{{7, 0}, {254, 3}, {259, 1048575}, {4095, 255}} {
		assert.Equal(t, d, DecodeDev(d.Encode()))
		p, err := ParseDev(d.String())
		require.NoError(t, err)
		assert.Equal(t, d, p)
	}
	// The kernel's huge_encode_dev for 254:300.
	assert.Equal(t, uint64(300&0xff|254<<8|(300&^0xff)<<12), Dev{254, 300}.Encode())
}

func TestEncodeTableLayout(t *testing.T) {
	tab := Table{
		{Start: 0, Length: 100, Params: LinearParams{Device: Dev{7, 0}, Offset: 0}},
		{Start: 100, Length: 50, Params: RawParams{Type: "zero"}},
	}
	data, err := encodeTable(tab)
	require.NoError(t, err)
	// first spec: 40 bytes + "7:0 0\0" = 46, aligned to 48
	spec := (*unix.DmTargetSpec)(unsafe.Pointer(&data[0]))
	assert.Equal(t, uint64(0), spec.Sector_start)
	assert.Equal(t, uint64(100), spec.Length)
	assert.Equal(t, uint32(48), spec.Next, "next is relative to this spec, 8-byte aligned")
	assert.Equal(t, "linear", cString(spec.Target_type[:]))
	assert.Equal(t, "7:0 0", cString(data[40:]))
	spec2 := (*unix.DmTargetSpec)(unsafe.Pointer(&data[48]))
	assert.Equal(t, uint64(100), spec2.Sector_start)
	assert.Equal(t, uint32(0), spec2.Next)
	assert.Equal(t, "zero", cString(spec2.Target_type[:]))
	assert.Len(t, data, 48+40+8)
	assert.Zero(t, len(data)%8)

	_, err = encodeTable(Table{{Length: 1, Params: RawParams{Type: "a-very-long-target-type"}}})
	assert.ErrorIs(t, err, ErrBadTable)
}

func TestDecodeTargets(t *testing.T) {
	// Build a reply the way the kernel does: next is an offset from the
	// start of the data area.
	var data []byte
	add := func(start, length uint64, typ, params string) {
		rec := make([]byte, align8(targetSpecSize+len(params)+1))
		s := (*unix.DmTargetSpec)(unsafe.Pointer(&rec[0]))
		s.Sector_start, s.Length = start, length
		setCString(s.Target_type[:], typ)
		copy(rec[targetSpecSize:], params)
		data = append(data, rec...)
		s2 := (*unix.DmTargetSpec)(unsafe.Pointer(&data[len(data)-len(rec)]))
		s2.Next = uint32(len(data))
	}
	add(0, 10, "thin", "1 2")
	add(10, 20, "linear", "7:0 5")
	got, err := decodeTargets(data, 2)
	require.NoError(t, err)
	assert.Equal(t, []rawTarget{{0, 10, "thin", "1 2"}, {10, 20, "linear", "7:0 5"}}, got)

	_, err = decodeTargets(data[:30], 1)
	assert.ErrorIs(t, err, ErrBadTable)
}

func TestParseNameList(t *testing.T) {
	rec := func(dev uint64, name string, last bool) []byte {
		n := align8(12 + len(name) + 1 + 8)
		b := make([]byte, n)
		binary.NativeEndian.PutUint64(b, dev)
		if !last {
			binary.NativeEndian.PutUint32(b[8:], uint32(n))
		}
		copy(b[12:], name)
		return b
	}
	data := append(rec(Dev{254, 0}.Encode(), "pool", false), rec(Dev{254, 1}.Encode(), "thin-1", true)...)
	got, err := parseNameList(data)
	require.NoError(t, err)
	assert.Equal(t, []ListEntry{{"pool", Dev{254, 0}}, {"thin-1", Dev{254, 1}}}, got)

	empty, err := parseNameList(make([]byte, 16))
	require.NoError(t, err)
	assert.Empty(t, empty)
}

func TestErrorUnwrapsErrno(t *testing.T) {
	var err error = &Error{Op: "DM_DEV_REMOVE", Name: "x", Errno: unix.EBUSY}
	wrapped := errors.Join(errors.New("other"), fmtWrap(err))
	assert.ErrorIs(t, wrapped, unix.EBUSY)
	assert.True(t, IsBusy(wrapped))
	assert.False(t, IsNotFound(wrapped))
	var de *Error
	require.ErrorAs(t, wrapped, &de)
	assert.Equal(t, "x", de.Name)
	assert.Contains(t, err.Error(), "DM_DEV_REMOVE")
	assert.Contains(t, err.Error(), "device or resource busy")
}

func fmtWrap(err error) error { return errors.Join(err) }

func TestCheckName(t *testing.T) {
	assert.NoError(t, checkName("dmthin-pool"))
	for _, n := range []string{"a/b", ".", "..", string(make([]byte, 128))} {
		assert.ErrorIs(t, checkName(n), ErrBadName, "%q", n)
	}
}

func TestParseDMMajor(t *testing.T) {
	// Shortened from the test VM's /proc/devices (Debian 6.1).
	procDevices := "Character devices:\n  1 mem\n 10 misc\n254 gpiochip\n\nBlock devices:\n  7 loop\n  8 sd\n253 virtblk\n254 device-mapper\n259 blkext\n"
	m, err := parseDMMajor(procDevices)
	require.NoError(t, err)
	assert.Equal(t, uint32(254), m)
	_, err = parseDMMajor("Character devices:\n 10 misc\n\nBlock devices:\n  7 loop\n")
	assert.ErrorIs(t, err, ErrUnsupported)
}
