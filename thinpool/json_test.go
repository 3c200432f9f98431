package thinpool

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmthin/dmthin/devmapper"
)

// Status and Device marshal with snake_case keys, the pool mode and state
// in the kernel's and the store's words, and read back the same.
func TestStatusDeviceJSON(t *testing.T) {
	st := Status{Name: "dmthin-1-pool", BlockSize: 65536, DataUsed: 1 << 20, DataTotal: 1 << 30,
		Mode: devmapper.PoolOutOfDataSpace, TransactionID: 7, Devices: 3, External: true, EventNr: 2}
	b, err := json.Marshal(st)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(b, &m))
	assert.Equal(t, "out_of_data_space", m["mode"])
	assert.EqualValues(t, 65536, m["block_size"])
	assert.EqualValues(t, 7, m["transaction_id"])
	assert.Equal(t, true, m["external"])
	for _, k := range []string{"name", "data_used", "data_total", "data_available", "metadata_used", "metadata_total",
		"metadata_available", "needs_check", "devices", "deferred_deletes", "retired", "faulty", "data_file", "metadata_file",
		"data_device", "metadata_device", "min_free_space_percent", "event_nr", "error_if_no_space"} {
		assert.Contains(t, m, k)
	}
	assert.Len(t, m, 23)
	var back Status
	require.NoError(t, json.Unmarshal(b, &back))
	assert.Equal(t, st, back)

	dev := Device{Name: "l-a", ID: 4, Size: 1 << 30, Parent: "base", State: StateDeferredDelete,
		Active: true, Path: "/dev/dm-4", OpenCount: 1, Created: time.Date(2026, 11, 26, 7, 0, 0, 0, time.UTC)}
	b, err = json.Marshal(dev)
	require.NoError(t, err)
	assert.JSONEq(t, `{"name":"l-a","id":4,"size":1073741824,"parent":"base","state":"deferred-delete",
		"active":true,"path":"/dev/dm-4","open_count":1,"mapped_bytes":0,"deferred_delete":false,
		"created":"2026-11-26T07:00:00Z"}`, string(b))
}
