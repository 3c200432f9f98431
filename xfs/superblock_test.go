package xfs

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Superblocks written by mkfs.xfs 6.1 (testdata/*.sb, the first sector)
// against what xfs_db printed for them (testdata/*.xfs_db).
func TestReadSuperblockTestdata(t *testing.T) {
	for _, name := range []string{"v5-320m-label", "v4-1k"} {
		t.Run(name, func(t *testing.T) {
			raw, db := readTestdata(t, name)
			sb, err := ReadSuperblock(bytes.NewReader(raw))
			require.NoError(t, err)
			assertMatchesXfsDB(t, sb, db)
		})
	}
	raw, _ := readTestdata(t, "v5-320m-label")
	sb, err := ReadSuperblock(bytes.NewReader(raw))
	require.NoError(t, err)
	assert.Equal(t, "5b2d3c8e-6f0a-4c2e-9d51-0a1b2c3d4e5f", sb.UUIDString())
	assert.Equal(t, "dmthin-test", sb.Label)
	assert.Equal(t, uint64(320<<20), sb.Size())
	assert.Equal(t, 5, sb.Version)
}

func TestReadSuperblockRefuses(t *testing.T) {
	raw, _ := readTestdata(t, "v5-320m-label")
	v4, _ := readTestdata(t, "v4-1k")
	mod := func(src []byte, f func(b []byte)) []byte {
		b := bytes.Clone(src)
		f(b)
		return b
	}
	tests := []struct {
		name string
		data []byte
		want error
		msg  string
	}{
		{"empty", nil, ErrNotXFS, "only 0 bytes"},
		{"short", raw[:100], ErrNotXFS, "only 100 bytes"},
		{"zeros", make([]byte, 512), ErrNotXFS, "magic 0x00000000"},
		{"ext4 is not xfs", mod(raw, func(b []byte) { copy(b, "\x00\x00\x00\x00") }), ErrNotXFS, "magic"},
		{"flipped bit", mod(raw, func(b []byte) { b[offFDBlocks+7] ^= 1 }), ErrBadSuperblock, "CRC"},
		{"flipped bit in the sector's tail", mod(raw, func(b []byte) { b[500] ^= 1 }), ErrBadSuperblock, "CRC"},
		// v4 has no CRC: the geometry checks catch nonsense.
		{"block size", mod(v4, func(b []byte) { b[offBlockSize+2] = 3 }), ErrBadSuperblock, "block size"},
		{"block log", mod(v4, func(b []byte) { b[offBlockLog] = 12 }), ErrBadSuperblock, "block log"},
		{"no AGs", mod(v4, func(b []byte) { copy(b[offAGCount:], []byte{0, 0, 0, 0}) }), ErrBadSuperblock, "allocation groups"},
		{"dblocks beyond AGs", mod(v4, func(b []byte) { b[offDBlocks] = 1 }), ErrBadSuperblock, "data blocks"},
		{"mkfs in progress", mod(v4, func(b []byte) { b[offInProgress] = 1 }), ErrBadSuperblock, "did not finish"},
		{"version", mod(v4, func(b []byte) { b[offVersion+1] = 0xa3 }), ErrBadSuperblock, "version 3"},
		{"sector size", mod(v4, func(b []byte) { b[offSectSize+1] = 0x01 }), ErrBadSuperblock, "sector size"},
		{"sector bigger than input", mod(raw, func(b []byte) { b[offSectSize] = 0x10; b[offSectSize+1] = 0 }), ErrBadSuperblock, "only 512 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadSuperblock(bytes.NewReader(tt.data))
			require.ErrorIs(t, err, tt.want)
			assert.Contains(t, err.Error(), tt.msg)
		})
	}
}

// A superblock whose UUID xfs_admin -U changed keeps the original in
// sb_meta_uuid, with the META_UUID incompat bit set.
func TestReadSuperblockMetaUUID(t *testing.T) {
	requireXfsprogs(t, "xfs_admin")
	path := sparseFile(t, MinSize)
	require.NoError(t, Format(t.Context(), path, FormatOptions{}))
	before, err := ReadSuperblockFile(path)
	require.NoError(t, err)
	require.NoError(t, finder().Run(t.Context(), "xfs_admin", nil, "-U", "11111111-2222-3333-4444-555555555555", path))
	after, err := ReadSuperblockFile(path)
	require.NoError(t, err)
	assert.Equal(t, "11111111-2222-3333-4444-555555555555", after.UUIDString())
	assert.Equal(t, before.UUID, after.MetaUUID)
	assertMatchesXfsDB(t, after, xfsDB(t, path))
}

func TestGrowsTo(t *testing.T) {
	sb := &Superblock{BlockSize: 4096, DataBlocks: 76800, AGBlocks: 19200, AGCount: 4} // a 300 MiB mkfs
	const mib = 1 << 20
	tests := []struct {
		name   string
		device int64
		want   uint64
	}{
		{"same size", 300 * mib, 300 * mib},
		{"smaller device: no shrink", 200 * mib, 300 * mib},
		{"unknown size", 0, 300 * mib},
		{"whole AGs", 600 * mib, 600 * mib},
		{"partial last AG of 64 blocks or more is added", 600*mib + 64*4096, 600*mib + 64*4096},
		{"a last AG under 64 blocks is not", 600*mib + 63*4096, 600 * mib},
		{"a device's partial block is not used", 600*mib + 64*4096 + 1000, 600*mib + 64*4096},
		{"under 64 blocks more than now: nothing", 300*mib + 10*4096, 300 * mib},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, sb.GrowsTo(tt.device))
		})
	}
}
