package thinpool

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestOptionsValidateReportsEverything(t *testing.T) {
	neg := -1
	o := Options{
		DataDevice:          "/dev/sdb",
		PoolDevice:          "x",
		BlockSize:           100 << 10,
		LoopDataSize:        -5,
		LoopMetadataSize:    1 << 10,
		MinFreeSpacePercent: &neg,
	}
	err := o.Validate()
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrInvalidOptions)
	msg := err.Error()
	for _, want := range []string{"Root is required", "go together", "PoolDevice excludes", "BlockSize", "negative", "MinFreeSpacePercent"} {
		assert.Contains(t, msg, want)
	}
	assert.GreaterOrEqual(t, strings.Count(msg, "\n")+1, 6, "one line per problem: %s", msg)
}

func TestOptionsValidateAccepts(t *testing.T) {
	zero := 0
	for _, o := range []Options{
		{Root: "/r"},
		{Root: "/r", BlockSize: 64 << 10},
		{Root: "/r", BlockSize: 1 << 30, MinFreeSpacePercent: &zero},
		{Root: "/r", DataDevice: "/dev/a", MetadataDevice: "/dev/b"},
		{Root: "/r", PoolDevice: "vg-pool"},
		{Root: "/r", LoopDataSize: 1 << 30, LoopMetadataSize: 2 << 20},
	} {
		assert.NoError(t, o.Validate(), "%+v", o)
	}
}

func TestOptionsDefaults(t *testing.T) {
	o := Options{Root: "/r"}.withDefaults()
	assert.Equal(t, int64(DefaultLoopDataSize), o.LoopDataSize)
	assert.Equal(t, int64(DefaultLoopMetadataSize), o.LoopMetadataSize)
	assert.Equal(t, int64(64<<10), o.BlockSize)
	assert.Equal(t, 10, *o.MinFreeSpacePercent)
	assert.NotNil(t, o.Logger)
	ext := Options{Root: "/r", PoolDevice: "p"}.withDefaults()
	assert.Zero(t, ext.LoopDataSize, "no loop files for an external pool")
}

func TestCheckName(t *testing.T) {
	p := &Pool{prefix: "dmthin-0123abcd"}
	for _, ok := range []string{"base", "a1b2", strings.Repeat("f", 64), "my.layer-1_x"} {
		assert.NoError(t, p.checkName(ok), ok)
	}
	for _, bad := range []string{"", ".", "..", "../x", "a/b", "x..y", "pool", "probe-1", "retired-7", "a\x00b", strings.Repeat("f", 120)} {
		err := p.checkName(bad)
		assert.ErrorIs(t, err, ErrInvalidName, "%q", bad)
	}
}

func TestSpaceErrorIsPoolFull(t *testing.T) {
	var err error = &SpaceError{What: "data", Free: 1 << 20, Total: 100 << 20, MinFree: 10 << 20}
	wrapped := errors.Join(errors.New("create"), err)
	assert.ErrorIs(t, wrapped, ErrPoolFull)
	var se *SpaceError
	require.ErrorAs(t, wrapped, &se)
	assert.Equal(t, "data", se.What)
	assert.Contains(t, err.Error(), "data space low: 1MiB free of 100MiB, minimum free is 10MiB")
}
