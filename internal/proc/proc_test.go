package proc

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseLockHolders(t *testing.T) {
	// /proc/locks of a 6.1 kernel: the store's flock held by 4242, a
	// waiter for it, and others' locks.
	locks := `1: FLOCK  ADVISORY  WRITE 4242 00:2a:5678 0 EOF
1: -> FLOCK  ADVISORY  WRITE 4343 00:2a:5678 0 EOF
2: POSIX  ADVISORY  WRITE 77 fe:01:5678 0 EOF
3: FLOCK  ADVISORY  READ 88 00:2a:9999 0 EOF
4: OFDLCK ADVISORY  READ -1 00:2a:5678 0 EOF
`
	pids, err := parseLockHolders(strings.NewReader(locks), 0, 0x2a, 5678)
	require.NoError(t, err)
	assert.Equal(t, []int{4242}, pids)
}

func TestStatusDying(t *testing.T) {
	live := "Name:\tdmthin\nState:\tS (sleeping)\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\n"
	assert.False(t, statusDying(live))
	assert.True(t, statusDying("State:\tD (disk sleep)\nSigPnd:\t0000000000000100\nShdPnd:\t0000000000000000\n"), "SIGKILL pending in the thread")
	assert.True(t, statusDying("State:\tD (disk sleep)\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000100\n"), "SIGKILL pending for the process")
	assert.True(t, statusDying("State:\tZ (zombie)\n"))
	assert.False(t, statusDying("State:\tD (disk sleep)\nSigPnd:\t0000000000004000\n"), "SIGTERM is not fatal for sure")
}
