package devmapper

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseThinPoolStatus(t *testing.T) {
	root := uint64(1234)
	cases := []struct {
		in   string
		want ThinPoolStatus
	}{
		// Verbatim from Debian's 6.1 kernel in the test VM (note the
		// trailing space).
		{"1 419/4096 0/4096 - rw discard_passdown error_if_no_space - 1024 ",
			ThinPoolStatus{Mode: PoolReadWrite, TransactionID: 1, UsedMetadataBlocks: 419, TotalMetadata: 4096,
				TotalDataBlocks: 4096, DiscardPassdown: true, NoSpace: ErrorIfNoSpace, MetadataLowWatermark: 1024}},
		{"0 141/4096 0/16384 - rw discard_passdown queue_if_no_space - 1024",
			ThinPoolStatus{Mode: PoolReadWrite, UsedMetadataBlocks: 141, TotalMetadata: 4096, TotalDataBlocks: 16384,
				DiscardPassdown: true, NoSpace: QueueIfNoSpace, MetadataLowWatermark: 1024}},
		{"7 200/4096 16384/16384 - out_of_data_space discard_passdown error_if_no_space - 1024",
			ThinPoolStatus{Mode: PoolOutOfDataSpace, TransactionID: 7, UsedMetadataBlocks: 200, TotalMetadata: 4096,
				UsedDataBlocks: 16384, TotalDataBlocks: 16384, DiscardPassdown: true, NoSpace: ErrorIfNoSpace, MetadataLowWatermark: 1024}},
		{"3 10/4096 5/16384 1234 ro no_discard_passdown error_if_no_space needs_check 1024",
			ThinPoolStatus{Mode: PoolReadOnly, TransactionID: 3, UsedMetadataBlocks: 10, TotalMetadata: 4096,
				UsedDataBlocks: 5, TotalDataBlocks: 16384, HeldMetadataRoot: &root, NoSpace: ErrorIfNoSpace,
				NeedsCheck: true, MetadataLowWatermark: 1024}},
		// A pool made with ignore_discard says so where the passdown
		// goes (6.1's pool_status).
		{"2 141/4096 0/16384 - rw ignore_discard error_if_no_space - 1024",
			ThinPoolStatus{Mode: PoolReadWrite, TransactionID: 2, UsedMetadataBlocks: 141, TotalMetadata: 4096, TotalDataBlocks: 16384,
				DiscardIgnored: true, NoSpace: ErrorIfNoSpace, MetadataLowWatermark: 1024}},
		// Older kernels print neither needs_check nor the watermark.
		{"1 10/4096 5/16384 - rw discard_passdown queue_if_no_space",
			ThinPoolStatus{Mode: PoolReadWrite, TransactionID: 1, UsedMetadataBlocks: 10, TotalMetadata: 4096,
				UsedDataBlocks: 5, TotalDataBlocks: 16384, DiscardPassdown: true}},
		{"Fail", ThinPoolStatus{Mode: PoolFailed}},
		{"Error", ThinPoolStatus{Mode: PoolError}},
	}
	for _, c := range cases {
		got, err := ParseThinPoolStatus(c.in)
		require.NoError(t, err, c.in)
		assert.Equal(t, c.want, got, c.in)
	}
}

func TestParseThinPoolStatusErrorsNameField(t *testing.T) {
	cases := map[string]string{
		"x 1/2 1/2 - rw":          "transaction id",
		"0 1-2 1/2 - rw":          "metadata blocks",
		"0 1/2 3/2 - rw":          "data blocks",
		"0 1/2 1/2 q rw":          "held metadata root",
		"0 1/2 1/2 - sideways":    "mode",
		"0 1/2 1/2 - rw frobnite": "field 5",
		"0 1/2":                   "want at least 5",
		"0 x/2 1/2 - rw":          "metadata blocks",
		"0 1/y 1/2 - rw":          "metadata blocks",
		"0 1/2 1/2 - rw discard_passdown queue_if_no_space - lots": "metadata low watermark",
	}
	for in, field := range cases {
		_, err := ParseThinPoolStatus(in)
		require.ErrorIs(t, err, ErrBadStatus, in)
		assert.Contains(t, err.Error(), field, in)
	}
}

func TestParseThinStatus(t *testing.T) {
	got, err := ParseThinStatus("2048 4095")
	require.NoError(t, err)
	require.NotNil(t, got.HighestMapped)
	assert.Equal(t, Sectors(2048), got.MappedSectors)
	assert.Equal(t, Sectors(4095), *got.HighestMapped)

	got, err = ParseThinStatus("0 -")
	require.NoError(t, err)
	assert.Nil(t, got.HighestMapped)

	got, err = ParseThinStatus("Fail")
	require.NoError(t, err)
	assert.True(t, got.Failed)

	for _, in := range []string{"", "1", "a 2", "1 b"} {
		_, err := ParseThinStatus(in)
		assert.ErrorIs(t, err, ErrBadStatus, in)
	}
}

func FuzzParseThinPoolStatus(f *testing.F) {
	f.Add("0 141/4096 0/16384 - rw discard_passdown queue_if_no_space - 1024")
	f.Add("Fail")
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = ParseThinPoolStatus(s) // must not panic
		_, _ = ParseThinStatus(s)
		_, _ = ParseTable(s)
	})
}
