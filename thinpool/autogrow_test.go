package thinpool

import (
	"strings"
	"testing"

	"github.com/docker/go-units"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmthin/dmthin/devmapper"
)

func TestAutoGrowNextSize(t *testing.T) {
	g := AutoGrow{ThresholdPercent: 80, StepPercent: 20}
	const bs = 64 * units.KiB
	cases := []struct {
		name string
		f    fileSpace
		want int64
	}{
		{"below threshold", fileSpace{size: 100 * units.MiB, used: 79 * units.MiB, total: 100 * units.MiB, limit: units.GiB, unit: bs}, 0},
		{"at threshold", fileSpace{size: 100 * units.MiB, used: 80 * units.MiB, total: 100 * units.MiB, limit: units.GiB, unit: bs},
			120 * units.MiB},
		{"full", fileSpace{size: 100 * units.MiB, used: 100 * units.MiB, total: 100 * units.MiB, limit: units.GiB, unit: bs},
			120 * units.MiB},
		{"capped by the limit", fileSpace{size: 100 * units.MiB, used: 90 * units.MiB, total: 100 * units.MiB, limit: 110 * units.MiB, unit: bs},
			110 * units.MiB},
		{"limit rounded down to a block", fileSpace{size: 100 * units.MiB, used: 90 * units.MiB, total: 100 * units.MiB,
			limit: 110*units.MiB + 1000, unit: bs}, 110 * units.MiB},
		{"at the limit", fileSpace{size: 100 * units.MiB, used: 90 * units.MiB, total: 100 * units.MiB, limit: 100 * units.MiB, unit: bs}, 0},
		{"less than a block of room", fileSpace{size: 100 * units.MiB, used: 90 * units.MiB, total: 100 * units.MiB,
			limit: 100*units.MiB + bs - 1, unit: bs}, 0},
		{"step at least one unit", fileSpace{size: 2 * units.MiB, used: 2 * units.MiB, total: 2 * units.MiB, limit: units.GiB, unit: units.MiB},
			3 * units.MiB},
		{"no space known", fileSpace{size: 100 * units.MiB, limit: units.GiB, unit: bs}, 0},
	}
	for _, tc := range cases {
		assert.Equal(t, tc.want, g.nextSize(tc.f), tc.name)
	}
	big := AutoGrow{ThresholdPercent: 50, StepPercent: 300}
	assert.Equal(t, int64(400*units.MiB), big.nextSize(fileSpace{size: 100 * units.MiB, used: 50 * units.MiB, total: 100 * units.MiB,
		limit: units.GiB, unit: bs}))
}

func TestAutoGrowValidate(t *testing.T) {
	o := Options{Root: "/r", LoopDataSize: units.GiB, LowWaterMark: units.MiB, AutoGrow: &AutoGrow{
		ThresholdPercent: 100, StepPercent: -1, MaxDataSize: 512 * units.MiB, MaxMetadataSize: 17 * units.GiB,
	}}
	err := o.Validate()
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrInvalidOptions)
	msg := err.Error()
	for _, want := range []string{"ThresholdPercent 100", "StepPercent -1", "MaxDataSize 512MiB is below the data file's initial size 1GiB",
		"MaxMetadataSize 17GiB", "LowWaterMark cannot be set with AutoGrow"} {
		assert.Contains(t, msg, want)
	}
	assert.Equal(t, 5, strings.Count(msg, "\n")+1, msg)

	// The default data size counts when LoopDataSize is 0.
	o = Options{Root: "/r", AutoGrow: &AutoGrow{MaxDataSize: 10 * units.GiB}}
	assert.ErrorContains(t, o.Validate(), "below the data file's initial size 100GiB")

	o = Options{Root: "/r", DataDevice: "/dev/a", MetadataDevice: "/dev/b", AutoGrow: &AutoGrow{}}
	assert.ErrorContains(t, o.Validate(), "AutoGrow.needs a loopback pool")

	for _, ok := range []*AutoGrow{{}, {ThresholdPercent: 1, StepPercent: MaxAutoGrowStep}, {ThresholdPercent: 99, MaxDataSize: 200 * units.GiB,
		MaxMetadataSize: MaxMetadataSize}} {
		o := Options{Root: "/r", AutoGrow: ok}
		assert.NoError(t, o.Validate(), "%+v", ok)
	}
	d := AutoGrow{}.withDefaults()
	assert.Equal(t, AutoGrow{ThresholdPercent: 80, StepPercent: 20, MaxMetadataSize: MaxMetadataSize}, d)
}

// An external pool's table is its maker's: every table option is refused
// with it, each named.
func TestExternalRefusesTableOptions(t *testing.T) {
	o := Options{Root: "/r", PoolDevice: "vg-pool", LowWaterMark: units.MiB, SkipBlockZeroing: true, IgnoreDiscard: true,
		NoDiscardPassdown: true, QueueIfNoSpace: true, AutoGrow: &AutoGrow{}}
	err := o.Validate()
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrInvalidOptions)
	for _, name := range []string{"LowWaterMark", "SkipBlockZeroing", "IgnoreDiscard", "NoDiscardPassdown", "QueueIfNoSpace", "AutoGrow"} {
		assert.Contains(t, err.Error(), name+" cannot be set with PoolDevice")
	}
	o = Options{Root: "/r", PoolDevice: "vg-pool", MinFreeSpacePercent: new(int)}
	assert.NoError(t, o.Validate(), "the free-space check is dmthin's own, not the table's")
}

func TestPoolTableFeatures(t *testing.T) {
	md, dd := devmapper.Dev{Major: 253, Minor: 1}, devmapper.Dev{Major: 7}
	p := &Pool{opts: Options{BlockSize: 64 * units.KiB, SkipBlockZeroing: true, NoDiscardPassdown: true}}
	tab := p.poolTable(md, dd, 100*units.MiB, 128)
	assert.Equal(t, "0 204800 thin-pool 253:1 7:0 128 16 3 skip_block_zeroing no_discard_passdown error_if_no_space\n", tab.String())

	p = &Pool{opts: Options{BlockSize: 64 * units.KiB, IgnoreDiscard: true, QueueIfNoSpace: true, LowWaterMark: 10 * units.MiB}}
	assert.Equal(t, "0 204800 thin-pool 253:1 7:0 128 160 1 ignore_discard\n", p.poolTable(md, dd, 100*units.MiB, 128).String())

	// AutoGrow: the low-water mark is the threshold; the pool queues
	// while it can grow and errors once it cannot.
	p = &Pool{opts: Options{BlockSize: 64 * units.KiB}, grow: &autoGrower{cfg: AutoGrow{ThresholdPercent: 75}, queue: true}}
	assert.Equal(t, "0 204800 thin-pool 253:1 7:0 128 400 0\n", p.poolTable(md, dd, 100*units.MiB, 128).String())
	p.grow.queue = false
	assert.Equal(t, "0 204800 thin-pool 253:1 7:0 128 400 1 error_if_no_space\n", p.poolTable(md, dd, 100*units.MiB, 128).String())
}
