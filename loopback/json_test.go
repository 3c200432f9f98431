package loopback

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestStatusJSON(t *testing.T) {
	b, err := json.Marshal(Status{Number: 3, BackingMajor: 254, BackingMinor: 1, BackingInode: 12, FileName: "/var/lib/x/data"})
	require.NoError(t, err)
	assert.JSONEq(t, `{"number":3,"backing_major":254,"backing_minor":1,"backing_inode":12,"offset":0,
		"size_limit":0,"flags":0,"file_name":"/var/lib/x/data"}`, string(b))
}
