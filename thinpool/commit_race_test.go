package thinpool

import (
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Two commits that overlap must not write a staged outcome out of order.
// Here one commit (a label change of device "y", which holds only y's lock)
// picks up the staged drop of "x" and is held before it writes; meanwhile
// "x" is made again and its intent committed. When the first commit then
// writes, the old drop must not delete the new record of "x".
func TestOverlappingCommitsKeepStagedOrder(t *testing.T) {
	st, err := openStore(filepath.Join(t.TempDir(), "metadata.db"))
	require.NoError(t, err)
	defer st.close()
	st.flushDelay = 0 // no background flush: the two commits below are the only ones
	require.NoError(t, st.update(func(tx txn) error {
		return putRecord(tx, &record{Name: "x", ID: 1, State: StateReady})
	}))
	// x was deleted: its drop is staged, not committed.
	st.stage(&record{Name: "x", ID: 1, State: StateDeleting}, "")

	picked := make(chan struct{})
	resume := make(chan struct{})
	commitPause = func() {
		commitPause = nil // only the first commit pauses
		close(picked)
		<-resume
	}
	defer func() { commitPause = nil }()

	var wg sync.WaitGroup
	wg.Add(2)
	var errY, errX error
	go func() {
		defer wg.Done()
		errY = st.update(func(tx txn) error { return putRecord(tx, &record{Name: "y", ID: 2, State: StateReady}) })
	}()
	<-picked
	go func() {
		defer wg.Done()
		// x made again, with a new thin id.
		errX = st.update(func(tx txn) error { return putRecord(tx, &record{Name: "x", ID: 3, State: StateCreating}) })
	}()
	time.Sleep(100 * time.Millisecond) // let x's commit run (or wait) while y's is held
	close(resume)
	wg.Wait()
	require.NoError(t, errY)
	require.NoError(t, errX)

	recs, err := st.all()
	require.NoError(t, err)
	byName := map[string]*record{}
	for _, r := range recs {
		byName[r.Name] = r
	}
	require.Contains(t, byName, "x", "the new record of x survives the old drop")
	assert.Equal(t, uint32(3), byName["x"].ID)
	assert.Equal(t, StateCreating, byName["x"].State)
	assert.Contains(t, byName, "y")

	// And on disk, not only in memory.
	require.NoError(t, st.db.View(func(tx txn) error {
		r, err := getRecord(tx, "x")
		require.NoError(t, err, "x is on disk")
		assert.Equal(t, uint32(3), r.ID)
		return nil
	}))
}

// Staged outcomes reach the disk in a background commit soon after they
// were staged, not at the caller's next change: readers of the file (the
// dmthin command) see a create as done. Callers' commits are not counted
// for it.
func TestStagedOutcomesFlushedInBackground(t *testing.T) {
	st, err := openStore(filepath.Join(t.TempDir(), "metadata.db"))
	require.NoError(t, err)
	defer st.close()
	require.NoError(t, st.update(func(tx txn) error {
		return putRecord(tx, &record{Name: "x", ID: 1, State: StateCreating})
	}))
	st.mu.Lock()
	commits := st.commits
	st.mu.Unlock()
	st.stage(&record{Name: "x", ID: 1, State: StateCreating}, StateReady)
	onDisk := func() State {
		var s State
		require.NoError(t, st.db.View(func(tx txn) error {
			r, err := getRecord(tx, "x")
			if err == nil {
				s = r.State
			}
			return err
		}))
		return s
	}
	// The flush is counted, and its outcomes unstaged, just after its
	// transaction is on disk: wait for the count, not for the record (a
	// check between the two saw the record written and nothing counted).
	flushed := func() bool {
		st.mu.Lock()
		defer st.mu.Unlock()
		return st.flushes > 0
	}
	assert.Eventually(t, flushed, 2*time.Second, 5*time.Millisecond,
		"the staged outcome is written within about %s", stagedFlushDelay)
	assert.Equal(t, StateReady, onDisk())
	st.mu.Lock()
	defer st.mu.Unlock()
	assert.Equal(t, commits, st.commits, "no caller's commit")
	assert.Equal(t, 1, st.flushes)
	assert.Empty(t, st.staged)
}
