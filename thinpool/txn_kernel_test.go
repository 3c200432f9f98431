package thinpool

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/devmapper"
	"github.com/dmthin/dmthin/internal/testenv"
)

// assertPoolMatchesRecords compares the thin ids in the live pool's metadata
// (thin_dump of a metadata snapshot) with the store's records: no thin id
// without a record, no record without a thin id (faulty records, whose thin
// id the pool lost, excepted).
func assertPoolMatchesRecords(t *testing.T, p *Pool) {
	t.Helper()
	recs, err := p.st.all()
	require.NoError(t, err)
	var want []uint32
	for _, r := range recs {
		if r.State != StateFaulty {
			want = append(want, r.ID)
		}
	}
	sort.Slice(want, func(i, j int) bool { return want[i] < want[j] })
	assert.Equal(t, want, liveThinIDs(t, p), "thin ids in the pool vs records")
}

// liveThinIDs lists the thin ids of a live pool: it reserves a metadata
// snapshot, thin_dumps it and releases it.
func liveThinIDs(t *testing.T, p *Pool) []uint32 {
	t.Helper()
	require.NoError(t, p.commitMetadata())
	_, err := p.dm.Message(p.name, 0, "reserve_metadata_snap")
	require.NoError(t, err)
	meta := p.metaPath
	if meta == "" {
		// An external pool: a node for the metadata device of its table.
		tab, err := p.dm.Table(p.name)
		require.NoError(t, err)
		md := tab[0].Params.(devmapper.ThinPoolParams).Metadata
		meta = filepath.Join(t.TempDir(), "metadata")
		require.NoError(t, unix.Mknod(meta, unix.S_IFBLK|0o600, int(unix.Mkdev(md.Major, md.Minor))))
	}
	ids := testenv.ThinIDs(t, "--metadata-snap", meta)
	_, err = p.dm.Message(p.name, 0, "release_metadata_snap")
	require.NoError(t, err)
	return ids
}

// holdThin maps the thin id of device name into a dm device outside the
// pool's prefix and opens it, so that the pool refuses to delete the id
// (EBUSY) until release is called.
func holdThin(t *testing.T, p *Pool, name string) (release func()) {
	t.Helper()
	rec, err := p.st.get(name)
	require.NoError(t, err)
	// A client of its own: the pool may be closed before release.
	c, err := devmapper.Open(devmapper.Options{})
	require.NoError(t, err)
	hold := fmt.Sprintf("%s-hold-%d", testenv.Suffix(t), rec.ID)
	_, err = c.Activate(hold, "", p.thinTable(rec), false)
	require.NoError(t, err)
	f, err := os.Open(c.NodePath(hold))
	require.NoError(t, err)
	done := false
	release = func() {
		if done {
			return
		}
		done = true
		assert.NoError(t, f.Close())
		assert.NoError(t, c.Remove(hold, devmapper.RemoveOptions{}))
		assert.NoError(t, c.Close())
	}
	t.Cleanup(release)
	return release
}

// TestFailedDeleteDoesNotReuseTxID: a delete whose message fails stays
// "deleting" and the next operation gets a new transaction id; the next
// Open finishes the delete instead of dropping the record and leaking the
// thin id (issue item 8).
func TestFailedDeleteDoesNotReuseTxID(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	_, err := tp.Create(ctx, "victim", 8*MiB)
	require.NoError(t, err)
	release := holdThin(t, tp.Pool, "victim")

	err = tp.Delete(ctx, "victim", DeleteOptions{})
	require.Error(t, err, "the pool refuses to delete an open thin id")
	t.Logf("delete of a held thin id: %v", err)
	before := tp.issued
	_, err = tp.Create(ctx, "next", 8*MiB)
	require.NoError(t, err)
	assert.Greater(t, tp.issued, before)
	release()

	require.NoError(t, tp.Close())
	p, err := Open(ctx, tp.opts)
	require.NoError(t, err)
	tp.Pool = p
	_, err = p.Get("victim")
	assert.ErrorIs(t, err, ErrNotFound, "the pending delete was finished at open")
	assertPoolMatchesRecords(t, p)
}

// TestOpenMarksUnsettledFaulty: a record recovery cannot settle (a pending
// delete whose thin id is held open) does not stop Open; the device is
// marked faulty with the reason, and a later Delete finishes it.
func TestOpenMarksUnsettledFaulty(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	_, err := tp.Create(ctx, "stuck", 8*MiB)
	require.NoError(t, err)
	_, err = tp.Create(ctx, "fine", 8*MiB)
	require.NoError(t, err)
	release := holdThin(t, tp.Pool, "stuck")
	require.Error(t, tp.Delete(ctx, "stuck", DeleteOptions{}))
	require.NoError(t, tp.Close())

	p, err := Open(ctx, tp.opts)
	require.NoError(t, err, "one unsettled device must not stop Open")
	tp.Pool = p
	d, err := p.Get("stuck")
	require.NoError(t, err)
	assert.Equal(t, StateFaulty, d.State)
	d, err = p.Get("fine")
	require.NoError(t, err)
	assert.Equal(t, StateReady, d.State)
	_, err = p.Activate(ctx, "stuck")
	assert.ErrorIs(t, err, ErrFaulty)
	checkFaultyStatus(t, p, "stuck")

	release()
	require.NoError(t, p.Delete(ctx, "stuck", DeleteOptions{}))
	assertPoolMatchesRecords(t, p)
}

// checkFaultyStatus asserts that Status lists name as faulty, with a reason.
func checkFaultyStatus(t *testing.T, p *Pool, name string) {
	t.Helper()
	st, err := p.Status(context.Background())
	require.NoError(t, err)
	for _, f := range st.FaultyDevices {
		if f.Name == name {
			assert.NotEmpty(t, f.Reason, "reason for faulty %s", name)
			t.Logf("faulty %s: %s", name, f.Reason)
			return
		}
	}
	t.Errorf("Status.FaultyDevices %v does not list %s", st.FaultyDevices, name)
}

// TestCloseEndsWaitEvent: Close must not wait for a WaitEvent that has no
// event coming (issue item 11); the waiter gets ErrClosed.
func TestCloseEndsWaitEvent(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	st, err := tp.Status(ctx)
	require.NoError(t, err)
	waitErr := make(chan error, 1)
	go func() {
		_, err := tp.WaitEvent(ctx, st.EventNr) // no deadline, no event
		waitErr <- err
	}()
	time.Sleep(300 * time.Millisecond) // let it reach poll
	closed := make(chan error, 1)
	start := time.Now()
	go func() { closed <- tp.Close() }()
	select {
	case err := <-closed:
		require.NoError(t, err)
		t.Logf("Close returned after %s", time.Since(start))
	case <-time.After(5 * time.Second):
		t.Fatal("Close blocked behind WaitEvent")
	}
	select {
	case err := <-waitErr:
		assert.ErrorIs(t, err, ErrClosed)
	case <-time.After(5 * time.Second):
		t.Fatal("WaitEvent did not return after Close")
	}
}

// TestOpenReportsBusyStray: a dm device with the pool's prefix that no
// record explains and that is held open cannot be removed; Open reports it
// and opens anyway.
func TestOpenReportsBusyStray(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	stray := tp.dmName("stray")
	_, err := tp.dm.Activate(stray, "", devmapper.Table{{Length: 8, Params: devmapper.RawParams{Type: "zero"}}}, false)
	require.NoError(t, err)
	f, err := os.Open(tp.dm.NodePath(stray))
	require.NoError(t, err)
	require.NoError(t, tp.Close())

	p, err := Open(ctx, tp.opts)
	require.NoError(t, err, "a busy stray must not stop Open")
	tp.Pool = p
	checkFaultyStatus(t, p, stray)
	require.NoError(t, f.Close())
	require.NoError(t, p.dm.Remove(stray, devmapper.RemoveOptions{}))
}
