package devlabel

import (
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

const (
	MiB = 1 << 20
	GiB = 1 << 30
)

var testUUID = UUID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}

func TestPlan(t *testing.T) {
	for _, tc := range []struct {
		name             string
		size, block      int64
		meta, dataOff    int64
		dataLen          int64
		wantErrSubstring string
	}{
		// 1% of 256 MiB is 2.56 MiB, rounded up to 3 MiB.
		{name: "256MiB", size: 256 * MiB, block: 64 << 10, meta: 3 * MiB, dataOff: 4 * MiB, dataLen: 252 * MiB},
		// Below 200 MiB, 1% is under the 2 MiB minimum.
		{name: "64MiB", size: 64 * MiB, block: 64 << 10, meta: 2 * MiB, dataOff: 3 * MiB, dataLen: 61 * MiB},
		{name: "100GiB", size: 100 * GiB, block: 64 << 10, meta: 1024 * MiB, dataOff: 1025 * MiB, dataLen: 100*GiB - 1025*MiB},
		// The data area starts on a block boundary: 1 MiB + 2 MiB rounds up to 4 MiB for 4 MiB blocks.
		{name: "4MiB blocks", size: 128 * MiB, block: 4 * MiB, meta: 2 * MiB, dataOff: 4 * MiB, dataLen: 124 * MiB},
		// A tail smaller than a block or a sector is left out.
		{name: "ragged", size: 64*MiB + 1000, block: 64 << 10, meta: 2 * MiB, dataOff: 3 * MiB, dataLen: 61 * MiB},
		// The metadata area stops at what the kernel can use.
		{name: "4PiB", size: 4 << 50, block: 1 << 20, meta: MaxMetadataSize, dataOff: Align + MaxMetadataSize, dataLen: 4<<50 - Align - MaxMetadataSize},
		{name: "too small", size: 3*MiB + 15*(64<<10), block: 64 << 10, wantErrSubstring: "too small"},
		{name: "bad block size", size: GiB, block: 96 << 10, wantErrSubstring: "block size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := Plan(testUUID, tc.size, tc.block)
			if tc.wantErrSubstring != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.wantErrSubstring)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, int64(Align), l.MetaOffset)
			assert.Equal(t, tc.meta, l.MetaLength, "metadata length")
			assert.Equal(t, tc.dataOff, l.DataOffset, "data offset")
			assert.Equal(t, tc.dataLen, l.DataLength, "data length")
			assert.Zero(t, l.DataOffset%tc.block, "data area block-aligned")
			assert.LessOrEqual(t, l.DataEnd(), tc.size)
			assert.Equal(t, testUUID, l.UUID)
		})
	}
}

func TestEncodeDecode(t *testing.T) {
	l, err := Plan(testUUID, 10*GiB, 64<<10)
	require.NoError(t, err)
	l.Seq = 7
	b, err := l.Encode()
	require.NoError(t, err)
	require.Len(t, b, Size)
	assert.Equal(t, Magic[:], b[:8])
	got, err := Decode(b)
	require.NoError(t, err)
	assert.Equal(t, l, got)
	// Trailing bytes beyond the block are ignored (a read of more).
	got, err = Decode(append(b, 1, 2, 3))
	require.NoError(t, err)
	assert.Equal(t, l, got)
}

func TestDecodeRefuses(t *testing.T) {
	l, err := Plan(testUUID, GiB, 64<<10)
	require.NoError(t, err)
	good, err := l.Encode()
	require.NoError(t, err)
	mod := func(f func(b []byte)) []byte {
		b := append([]byte(nil), good...)
		f(b)
		return b
	}
	// reseal recomputes the checksum, to reach the checks behind it.
	reseal := func(f func(b []byte)) []byte {
		return mod(func(b []byte) {
			f(b)
			sum := crc32Of(b)
			b[offChecksum], b[offChecksum+1], b[offChecksum+2], b[offChecksum+3] = byte(sum), byte(sum>>8), byte(sum>>16), byte(sum>>24)
		})
	}
	for _, tc := range []struct {
		name string
		b    []byte
		want error
		text string
	}{
		{"zeroes", make([]byte, Size), ErrNoLabel, ""},
		{"short", good[:100], ErrNoLabel, "100 bytes"},
		{"ext4-like", mod(func(b []byte) { copy(b, "\x53\xef garbage") }), ErrNoLabel, ""},
		{"flipped bit in the data length", mod(func(b []byte) { b[offDataLen] ^= 1 }), ErrCorrupt, "checksum"},
		{"flipped bit in the checksum", mod(func(b []byte) { b[offChecksum] ^= 0x80 }), ErrCorrupt, "checksum"},
		{"future version", reseal(func(b []byte) { b[offVersion] = 9 }), ErrVersion, "version 9"},
		{"overlapping areas", reseal(func(b []byte) { b[offDataOff] = 0; b[offDataOff+1] = 0; b[offDataOff+2] = 0x10 }), ErrCorrupt, "overlaps the metadata"},
		{"past the device", reseal(func(b []byte) { b[offDevSize+3]-- }), ErrCorrupt, "past the device size"},
		{"no uuid", reseal(func(b []byte) { copy(b[offUUID:offUUID+16], make([]byte, 16)) }), ErrCorrupt, "no uuid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode(tc.b)
			require.ErrorIs(t, err, tc.want)
			assert.Contains(t, err.Error(), tc.text)
		})
	}
}

func crc32Of(b []byte) uint32 { return crc32.Checksum(b[:offChecksum], castagnoli) }

func TestGrow(t *testing.T) {
	l, err := Plan(testUUID, 256*MiB, 64<<10)
	require.NoError(t, err)
	same, ok, err := l.Grow(256*MiB + 1000)
	require.NoError(t, err)
	assert.False(t, ok, "less than a block more")
	assert.Equal(t, l, same)

	g, ok, err := l.Grow(1 * GiB)
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, l.MetaOffset, g.MetaOffset)
	assert.Equal(t, l.MetaLength, g.MetaLength, "metadata stays")
	assert.Equal(t, l.DataOffset, g.DataOffset)
	assert.Equal(t, int64(GiB)-l.DataOffset, g.DataLength)
	assert.Equal(t, int64(GiB), g.DeviceSize)
	assert.Equal(t, l.Seq+1, g.Seq)

	_, _, err = g.Grow(512 * MiB)
	assert.ErrorContains(t, err, "must not shrink")
}

func TestUUID(t *testing.T) {
	u, err := ParseUUID(testUUID.String())
	require.NoError(t, err)
	assert.Equal(t, testUUID, u)
	_, err = ParseUUID("abc")
	assert.Error(t, err)
	assert.True(t, UUID{}.IsZero())
}

// TestWriteRead writes and reads a label through O_DIRECT on a file. The
// kernel tests do the same on a loop device.
func TestWriteRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dev")
	require.NoError(t, os.WriteFile(path, make([]byte, 2*Size), 0o600))
	if fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECT, 0); errors.Is(err, unix.EINVAL) {
		t.Skipf("skipped: the filesystem of %s has no O_DIRECT (the kernel tests run this on a loop device)", path)
	} else {
		require.NoError(t, err)
		unix.Close(fd)
	}
	_, err := Read(path)
	assert.ErrorIs(t, err, ErrNoLabel)
	l, err := Plan(testUUID, GiB, 64<<10)
	require.NoError(t, err)
	require.NoError(t, Write(path, l))
	got, err := Read(path)
	require.NoError(t, err)
	assert.Equal(t, l, got)
}
