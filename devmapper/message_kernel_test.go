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

// TestMessageWithLongAnswerRunsOnce: "@stats_print_clear" prints a stats
// region and clears its counters. With an answer longer than the buffer, a
// client that sends it again would print the counters the first send
// cleared (all zero). The message must run once; the answer comes back cut,
// with ErrTruncated.
func TestMessageWithLongAnswerRunsOnce(t *testing.T) {
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

	out, err := c.Message(name, 0, "@stats_print_clear "+id)
	require.Error(t, err, "an answer of %d areas does not fit the first buffer", areas)
	assert.True(t, errors.Is(err, devmapper.ErrTruncated), "%v", err)
	first, _, _ := strings.Cut(out, "\n")
	t.Logf("first line of a cut answer of %d bytes: %q", len(out), first)
	f1 := strings.Fields(first)
	require.GreaterOrEqual(t, len(f1), 2, "a counters line")
	assert.NotEqual(t, "0", f1[1], "reads completed in the first area: counters from the one and only print_clear")

	// The counters were cleared exactly once: nothing read since.
	out, err = c.Message(name, 0, "@stats_print "+id+" 0 1")
	require.NoError(t, err)
	f2 := strings.Fields(out)
	require.GreaterOrEqual(t, len(f2), 2)
	assert.Equal(t, "0", f2[1], "cleared by print_clear")
	_, err = c.Message(name, 0, "@stats_delete "+id)
	require.NoError(t, err)
}
