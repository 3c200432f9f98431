package graphdriver

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Lines as the kernel writes them (a 6.1 kernel; the last one has a space
// in its mount point and optional fields).
const mountinfoSample = `22 27 0:21 / /proc rw,relatime - proc proc rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334524k,nr_inodes=3083631,mode=755
61 27 253:3 / /var/lib/dmthin/mnt/os rw,nodev,noatime - ext4 /dev/mapper/dmthin-1a2b3c4d-l-os rw,discard
62 27 253:4 / /var/lib/dmthin/mnt/app rw,relatime shared:40 master:1 - ext4 /dev/mapper/dmthin-1a2b3c4d-l-app rw
63 27 253:5 / /var/lib/dmthin/mnt/with\040space rw,relatime - ext4 /dev/dm-5 rw
64 61 0:50 / /var/lib/dmthin/mnt/os/rootfs/proc rw - proc proc rw
`

func TestParseMountInfo(t *testing.T) {
	entries, err := parseMountInfo(strings.NewReader(mountinfoSample))
	require.NoError(t, err)
	require.Len(t, entries, 6)
	assert.Equal(t, mountEntry{MountPoint: "/var/lib/dmthin/mnt/os", Options: "rw,nodev,noatime", FSType: "ext4",
		Source: "/dev/mapper/dmthin-1a2b3c4d-l-os", SuperOptions: "rw,discard"}, entries[2])
	assert.Equal(t, "ext4", entries[3].FSType, "optional fields are skipped")
	assert.Equal(t, "/dev/mapper/dmthin-1a2b3c4d-l-app", entries[3].Source)
	assert.Equal(t, "/var/lib/dmthin/mnt/with space", entries[4].MountPoint)

	_, err = parseMountInfo(strings.NewReader("1 2 3\n"))
	assert.Error(t, err)
	_, err = parseMountInfo(strings.NewReader("22 27 0:21 / /proc rw,relatime proc proc rw\n"))
	assert.Error(t, err, "no separator")
}

func TestUnescapeMountPath(t *testing.T) {
	assert.Equal(t, "a b\tc\\d", unescapeMountPath(`a\040b\011c\134d`))
	assert.Equal(t, `plain`, unescapeMountPath(`plain`))
	assert.Equal(t, `trailing\04`, unescapeMountPath(`trailing\04`))
}

// mountsUnder on the live mountinfo: /proc is mounted directly under /.
func TestMountsUnderLive(t *testing.T) {
	m, err := mountsUnder("/")
	require.NoError(t, err)
	assert.Contains(t, m, "proc")
	assert.Equal(t, "proc", m["proc"].FSType)
}
