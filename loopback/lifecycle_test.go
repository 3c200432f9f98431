package loopback

import (
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestDetachBusy detaches a device that someone else holds open (a mount or
// a device-mapper table in real use; here an open node, or a handle from
// Find): the holder keeps a working device, the kernel marks it autoclear,
// and it is unbound at the holder's last close. Kernels that refuse instead
// must answer EBUSY, with the device left bound.
func TestDetachBusy(t *testing.T) {
	testenv.RequireRoot(t)
	type holder struct {
		readAt func(b []byte, off int64) error
		status func() (Status, error) // nil: the holder cannot tell
		close  func() error
	}
	for _, tc := range []struct {
		name string
		hold func(t *testing.T, d *Device) holder
	}{
		{"open node", func(t *testing.T, d *Device) holder {
			f, err := os.Open(d.Path())
			require.NoError(t, err)
			return holder{
				readAt: func(b []byte, off int64) error { _, err := f.ReadAt(b, off); return err },
				close:  f.Close,
			}
		}},
		{"handle from Find", func(t *testing.T, d *Device) holder {
			f, err := Find(d.BackingFile())
			require.NoError(t, err)
			require.Equal(t, d.Number(), f.Number())
			return holder{
				readAt: func(b []byte, off int64) error {
					_, err := unix.Pread(f.fd, b, off)
					return err
				},
				status: f.Status,
				close:  f.Close,
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := newBacking(t, "busy", 4*MiB)
			writeAt(t, path, []byte("still readable"), 0)
			d := attachT(t, path, Options{}, useConfigure)
			n := d.Number()
			h := tc.hold(t, d)
			held := true
			defer func() {
				if held {
					h.close()
				}
			}()

			err := d.Detach()
			_, serr := d.Size()
			assert.ErrorIs(t, serr, ErrClosed, "Detach closes the handle whatever the outcome")
			if errors.Is(err, unix.EBUSY) {
				var le *Error
				require.ErrorAs(t, err, &le)
				assert.Equal(t, "LOOP_CLR_FD", le.Op)
				assert.True(t, boundTo(t, n, path), "a refused Detach unbound loop%d", n)
				return
			}
			require.NoError(t, err)
			assert.True(t, boundTo(t, n, path), "loop%d unbound while still held", n)
			assert.Equal(t, "1", mustSysfs(t, n, "loop/autoclear"), "Detach of a held device marks it autoclear")
			got := make([]byte, len("still readable"))
			require.NoError(t, h.readAt(got, 0), "the holder's device stopped working")
			assert.Equal(t, "still readable", string(got))
			if h.status != nil {
				st, err := h.status()
				require.NoError(t, err)
				assert.True(t, st.Flags.Has(FlagAutoclear), "flags %v", st.Flags)
			}

			held = false
			require.NoError(t, h.close())
			waitUnbound(t, n, path)
			_, err = Find(path)
			assert.ErrorIs(t, err, ErrNotFound)
		})
	}
}

// TestFindLowestOfSeveral: a file bound to two devices is found on the
// lower-numbered one, and on the other once that one is detached.
func TestFindLowestOfSeveral(t *testing.T) {
	testenv.RequireRoot(t)
	path := newBacking(t, "twice", 4*MiB)
	a := attachT(t, path, Options{}, useConfigure)
	b := attachT(t, path, Options{}, useConfigure)
	require.NotEqual(t, a.Number(), b.Number())
	low, high := a, b
	if b.Number() < a.Number() {
		low, high = b, a
	}

	f, err := Find(path)
	require.NoError(t, err)
	assert.Equal(t, low.Number(), f.Number())
	require.NoError(t, f.Close())

	n := low.Number()
	require.NoError(t, low.Detach())
	waitUnbound(t, n, path)
	f, err = Find(path)
	require.NoError(t, err)
	assert.Equal(t, high.Number(), f.Number())
	require.NoError(t, f.Close())
}

// TestAutoclearHeldByFind: a handle from Find keeps an autoclear device bound
// after the attacher closes its own, and the device goes with the last
// handle.
func TestAutoclearHeldByFind(t *testing.T) {
	testenv.RequireRoot(t)
	path := newBacking(t, "autoclear-find", 4*MiB)
	d := attachT(t, path, Options{Autoclear: true}, useConfigure)
	n := d.Number()
	f, err := Find(path)
	require.NoError(t, err)
	defer f.Close()
	require.Equal(t, n, f.Number())

	require.NoError(t, d.Close())
	st, err := f.Status()
	require.NoError(t, err, "the device was unbound while Find's handle held it")
	assert.True(t, st.sameFile(ptr(statT(t, path))))
	size, err := f.Size()
	require.NoError(t, err)
	assert.Equal(t, int64(4*MiB), size)
	assert.True(t, boundTo(t, n, path))

	require.NoError(t, f.Close())
	waitUnbound(t, n, path)
	_, err = Find(path)
	assert.ErrorIs(t, err, ErrNotFound)
}

// TestHandleDetachRace: calls on a handle racing with its Detach either see
// the bound device or ErrClosed, never a closed or reused descriptor (EBADF,
// or ENXIO from a device that is no longer this one).
func TestHandleDetachRace(t *testing.T) {
	testenv.RequireRoot(t)
	path := newBacking(t, "race-handle", 4*MiB)
	d := attachT(t, path, Options{}, useConfigure)
	n := d.Number()
	want := statT(t, path)

	const workers = 4
	var wg sync.WaitGroup
	var mu sync.Mutex
	var bad []error
	calls := make([]int, workers)
	started := make(chan struct{}, workers)
	for i := range workers {
		wg.Go(func() {
			started <- struct{}{}
			for {
				var err error
				if i%2 == 0 {
					var size int64
					size, err = d.Size()
					if err == nil && size != 4*MiB {
						err = errors.New("wrong size")
					}
				} else {
					var st Status
					st, err = d.Status()
					if err == nil && !st.sameFile(&want) {
						err = errors.New("status of another file")
					}
				}
				if errors.Is(err, ErrClosed) {
					return
				}
				calls[i]++
				if err != nil {
					mu.Lock()
					bad = append(bad, err)
					mu.Unlock()
					return
				}
			}
		})
	}
	for range workers {
		<-started
	}
	time.Sleep(20 * time.Millisecond)
	require.NoError(t, d.Detach())
	wg.Wait()
	assert.Empty(t, bad)
	for i, c := range calls {
		assert.Positive(t, c, "worker %d never reached the device before Detach", i)
	}
	waitUnbound(t, n, path)
}
