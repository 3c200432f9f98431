package devmapper

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A status parsed from a real kernel line marshals with snake_case keys and
// the kernel's words, and reads back the same.
func TestStatusJSON(t *testing.T) {
	st, err := ParseThinPoolStatus("1 141/4096 3/16384 - rw no_discard_passdown error_if_no_space needs_check 1024")
	require.NoError(t, err)
	b, err := json.Marshal(st)
	require.NoError(t, err)
	assert.JSONEq(t, `{"mode":"rw","transaction_id":1,"used_metadata_blocks":141,"total_metadata":4096,
		"used_data_blocks":3,"total_data_blocks":16384,"held_metadata_root":null,"discard_passdown":false,"discard_ignored":false,
		"no_space":"error_if_no_space","needs_check":true,"metadata_low_watermark":1024}`, string(b))
	var back ThinPoolStatus
	require.NoError(t, json.Unmarshal(b, &back))
	assert.Equal(t, st, back)

	for _, m := range poolModes {
		b, err := json.Marshal(m)
		require.NoError(t, err)
		var back PoolMode
		require.NoError(t, json.Unmarshal(b, &back))
		assert.Equal(t, m, back)
	}
	_, err = json.Marshal(PoolMode(42))
	assert.ErrorIs(t, err, ErrBadStatus)
	assert.ErrorIs(t, json.Unmarshal([]byte(`"sideways"`), new(PoolMode)), ErrBadStatus)
	assert.ErrorIs(t, json.Unmarshal([]byte(`"maybe"`), new(NoSpacePolicy)), ErrBadStatus)

	ts, err := ParseThinStatus("2048 4095")
	require.NoError(t, err)
	b, err = json.Marshal(ts)
	require.NoError(t, err)
	assert.JSONEq(t, `{"failed":false,"mapped_sectors":2048,"highest_mapped":4095}`, string(b))

	b, err = json.Marshal(Info{Name: "p", Dev: Dev{Major: 254, Minor: 3}, LiveTable: true})
	require.NoError(t, err)
	assert.JSONEq(t, `{"name":"p","uuid":"","dev":"254:3","open_count":0,"event_nr":0,"target_count":0,
		"suspended":false,"read_only":false,"live_table":true,"inactive_table":false,"deferred_remove":false}`, string(b))
	var info Info
	require.NoError(t, json.Unmarshal(b, &info))
	assert.Equal(t, Dev{Major: 254, Minor: 3}, info.Dev)
	assert.ErrorIs(t, json.Unmarshal([]byte(`{"dev":"254"}`), &info), ErrBadTable)
}
