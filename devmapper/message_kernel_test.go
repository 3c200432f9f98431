package devmapper_test

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/devmapper"
)

// TestLongMessageAnswerIsNotResent: a target message is sent once, even
// when its answer does not fit the buffer: it fails with ErrTruncated
// instead of being sent again (a pool message would run twice). dm-stats gives a long answer: "@stats_print" of a region
// of 2000 areas, one line each. (The kernel's own "@stats_print_clear"
// leaves the counters alone when the answer overflows, precisely so that
// userspace can send it again; a thin-pool message has no such guard.)
func TestLongMessageAnswerIsNotResent(t *testing.T) {
	c := client(t)
	name := devName(t, "stats")
	removeOnCleanup(t, c, name)
	const areas = 2000
	_, err := c.Activate(name, "", devmapper.Table{{Length: areas * 8, Params: devmapper.RawParams{Type: "zero"}}}, false)
	require.NoError(t, err)
	id, err := c.Message(name, 0, "@stats_create - /2000")
	require.NoError(t, err)
	id = strings.TrimSpace(id)

	// One read in the first area.
	f, err := os.OpenFile(c.NodePath(name), os.O_RDONLY|unix.O_DIRECT, 0)
	require.NoError(t, err)
	buf, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	require.NoError(t, err)
	defer unix.Munmap(buf)
	_, err = f.ReadAt(buf, 0)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	out, err := c.Message(name, 0, "@stats_print "+id)
	require.Error(t, err, "an answer of %d areas does not fit the first buffer", areas)
	assert.True(t, errors.Is(err, devmapper.ErrTruncated), "%v", err)
	// The kernel copies back only the header when the answer overflowed
	// (data_size stays at the header), so nothing of it arrives.
	t.Logf("answer %q; error: %v", out, err)
	assert.Empty(t, out)

	// A short answer is whole, and shows the one read.
	out, err = c.Message(name, 0, "@stats_print "+id+" 0 1")
	require.NoError(t, err)
	f1 := strings.Fields(out)
	require.GreaterOrEqual(t, len(f1), 2, "a counters line: %q", out)
	assert.Equal(t, "1", f1[1], "one read completed in the first area")
	_, err = c.Message(name, 0, "@stats_delete "+id)
	require.NoError(t, err)
}
