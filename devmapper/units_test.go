package devmapper

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestSectorsBytes(t *testing.T) {
	assert.Equal(t, uint64(1<<20), Sectors(2048).Bytes())
	s, err := SectorsFromBytes(1 << 20)
	require.NoError(t, err)
	assert.Equal(t, Sectors(2048), s)
	_, err = SectorsFromBytes(1000)
	assert.ErrorIs(t, err, ErrBadTable, "not a whole number of sectors")
}

func TestTableLength(t *testing.T) {
	tab := Table{
		{Start: 0, Length: 8, Params: RawParams{Type: "zero"}},
		{Start: 8, Length: 24, Params: RawParams{Type: "error"}},
	}
	assert.Equal(t, Sectors(32), tab.Length())
	assert.Equal(t, Sectors(0), Table(nil).Length())
}

func TestPoolModeString(t *testing.T) {
	// The names are the kernel's own words in the status line.
	for m, want := range map[PoolMode]string{
		PoolReadWrite: "rw", PoolReadOnly: "ro", PoolOutOfDataSpace: "out_of_data_space",
		PoolFailed: "Fail", PoolError: "Error", PoolMode(42): "PoolMode(42)",
	} {
		assert.Equal(t, want, m.String())
	}
}

func TestErrorWithoutName(t *testing.T) {
	err := &Error{Op: "DM_LIST_DEVICES", Errno: unix.ENOMEM}
	assert.Equal(t, "devmapper: DM_LIST_DEVICES: cannot allocate memory", err.Error())
	assert.ErrorIs(t, err, unix.ENOMEM)
}

func TestVersionAtLeast(t *testing.T) {
	v := Version{4, 47, 0}
	for _, c := range []struct {
		o    Version
		want bool
	}{
		{Version{4, 47, 0}, true}, {Version{4, 46, 9}, true}, {Version{3, 99, 99}, true},
		{Version{4, 47, 1}, false}, {Version{4, 48, 0}, false}, {Version{5, 0, 0}, false},
	} {
		assert.Equal(t, c.want, v.AtLeast(c.o), "%s >= %s", v, c.o)
	}
}
