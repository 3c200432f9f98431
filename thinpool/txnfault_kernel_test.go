package thinpool

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// failMessages makes pool messages starting with one of prefixes fail
// (once each, in order) before they reach the kernel.
func failMessages(p *Pool, prefixes ...string) error {
	injected := errors.New("injected message failure")
	p.messageFault = func(msg string) error {
		if len(prefixes) > 0 && strings.HasPrefix(msg, prefixes[0]) {
			prefixes = prefixes[1:]
			return injected
		}
		return nil
	}
	return injected
}

// onDisk reads name's record from the database itself, past the staged
// outcomes: what a crash right now would leave.
func onDisk(t *testing.T, p *Pool, name string) (*record, bool) {
	t.Helper()
	var r *record
	require.NoError(t, p.st.db.View(func(tx txn) error {
		var err error
		r, err = getRecord(tx, name)
		if errors.Is(err, ErrNotFound) {
			r, err = nil, nil
		}
		return err
	}))
	return r, r != nil
}

// TestTransactionFailurePaths drives every failure branch of runLocked on
// the kernel and checks after each that the pool and the records agree,
// that a failure is committed at once, and that the transaction ids keep
// going up.
func TestTransactionFailurePaths(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	_, err := tp.Create(ctx, "keep", 8*MiB)
	require.NoError(t, err)
	last := tp.issued
	moved := func(what string) {
		t.Helper()
		assert.Greater(t, tp.issued, last, "%s used a new transaction id", what)
		last = tp.issued
		assertPoolMatchesRecords(t, tp.Pool)
	}

	// The create message fails: nothing recorded, on disk too.
	injected := failMessages(tp.Pool, "create_thin")
	_, err = tp.Create(ctx, "a", 8*MiB)
	require.ErrorIs(t, err, injected)
	assert.True(t, notFound(tp.Get("a")))
	_, ok := onDisk(t, tp.Pool, "a")
	assert.False(t, ok, "the failed create's record is dropped durably")
	moved("failed create")

	// Delete: the message fails: still there, "deleting", on disk too;
	// retried.
	injected = failMessages(tp.Pool, "delete")
	err = tp.Delete(ctx, "keep", DeleteOptions{})
	require.ErrorIs(t, err, injected)
	d, err := tp.Lookup("keep")
	require.NoError(t, err)
	assert.Equal(t, StateDeleting, d.State)
	r, ok := onDisk(t, tp.Pool, "keep")
	require.True(t, ok)
	assert.Equal(t, StateDeleting, r.State)
	assertPoolMatchesRecords(t, tp.Pool)
	_, err = tp.Create(ctx, "keep2", 8*MiB)
	require.NoError(t, err)
	moved("create after a failed delete")
	require.NoError(t, tp.Delete(ctx, "keep", DeleteOptions{}))
	assert.True(t, notFound(tp.Get("keep")))
	assertPoolMatchesRecords(t, tp.Pool)

	// The pool refuses to move its transaction id: the change is done all
	// the same, and Close (which moves it) does not fail for it.
	tp.msgMu.Lock()
	tp.syncEvery = 1
	tp.msgMu.Unlock()
	failMessages(tp.Pool, "set_transaction_id")
	_, err = tp.Create(ctx, "c", 8*MiB)
	require.NoError(t, err)
	d, err = tp.Lookup("c")
	require.NoError(t, err)
	assert.Equal(t, StateReady, d.State)
	moved("create whose transaction id could not be moved")

	// All of it survives a reopen.
	tp.messageFault = nil
	_, err = tp.Create(ctx, "last", 8*MiB)
	require.NoError(t, err)
	require.NoError(t, tp.Close())
	p, err := Open(ctx, tp.opts)
	require.NoError(t, err)
	tp.Pool = p
	assertPoolMatchesRecords(t, p)
	assert.Equal(t, []string{"c", "keep2", "last"}, deviceNames(t, p))
}

// TestOneCommitPerChange: a create, a snapshot and a delete each send the
// pool one message (the kernel commits its metadata after each; no
// set_transaction_id on the way) and make one durable store commit (the
// outcome is staged and goes with the next commit). The pool's
// transaction id is moved at Close and every syncEvery changes.
func TestOneCommitPerChange(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	// Without the background flush (TestStagedOutcomesFlushedInBackground),
	// what is on disk below is what the changes' own commits wrote.
	tp.st.mu.Lock()
	tp.st.flushDelay = 0
	tp.st.mu.Unlock()
	var mu sync.Mutex
	var msgs []string
	tp.messageFault = func(msg string) error {
		mu.Lock()
		msgs = append(msgs, strings.Fields(msg)[0])
		mu.Unlock()
		return nil
	}
	count := func(what string, op func() error) {
		t.Helper()
		mu.Lock()
		msgs = nil
		mu.Unlock()
		tp.st.mu.Lock()
		before := tp.st.commits
		tp.st.mu.Unlock()
		require.NoError(t, op(), what)
		tp.st.mu.Lock()
		commits := tp.st.commits - before
		tp.st.mu.Unlock()
		mu.Lock()
		defer mu.Unlock()
		assert.Len(t, msgs, 1, "%s: pool messages %v", what, msgs)
		assert.Equal(t, 1, commits, "%s: durable store commits", what)
	}
	count("create", func() error { _, err := tp.Create(ctx, "a", 8*MiB); return err })
	count("snapshot", func() error { _, err := tp.Snapshot(ctx, "b", "a", 0); return err })
	count("delete", func() error { return tp.Delete(ctx, "a", DeleteOptions{}) })
	// Reads see the staged outcome of the last change.
	assert.True(t, notFound(tp.Get("a")))
	d, err := tp.Get("b")
	require.NoError(t, err)
	assert.Equal(t, StateReady, d.State)
	assert.Equal(t, []string{"b"}, deviceNames(t, tp.Pool))
	// On disk, a's record went with the delete's mark; b's outcome waits
	// (a crash now leaves it "creating", which recovery rolls forward).
	_, ok := onDisk(t, tp.Pool, "a")
	assert.True(t, ok, "a's drop is staged until the next commit")
	r, ok := onDisk(t, tp.Pool, "b")
	require.True(t, ok)
	assert.Equal(t, StateCreating, r.State, "b's outcome is not written by the commits after it")

	// Deleting a retired device (what layerstore's worker does after a
	// Remove) commits nothing of its own: the retire's commit is the one
	// durable change, and Open asks the pool about a retired record.
	_, err = tp.Create(ctx, "r", 8*MiB)
	require.NoError(t, err)
	count("retire, then delete the tombstone", func() error {
		d, err := tp.Retire(ctx, "r", RetireOptions{})
		if err != nil {
			return err
		}
		return tp.Delete(ctx, d.Name, DeleteOptions{})
	})

	// The transaction id moves at Close, to the last one issued, and the
	// staged outcome is committed.
	st, err := tp.Status(ctx)
	require.NoError(t, err)
	assert.Less(t, st.TransactionID, tp.issued, "no set_transaction_id on the way of a change")
	tp.messageFault = nil
	issued := tp.issued
	require.NoError(t, tp.Close())
	p, err := Open(ctx, tp.opts)
	require.NoError(t, err)
	tp.Pool = p
	st, err = p.Status(ctx)
	require.NoError(t, err)
	assert.Equal(t, issued, st.TransactionID, "Close moved the pool's transaction id")
	_, ok = onDisk(t, p, "a")
	assert.False(t, ok, "the delete's staged outcome was committed at Close")
	r, ok = onDisk(t, p, "b")
	require.True(t, ok)
	assert.Equal(t, StateReady, r.State, "b's staged outcome was committed at Close")

	// Every syncEvery-th change moves it on its way, and once flushAt
	// outcomes are staged the next commit writes them.
	p.msgMu.Lock()
	p.syncEvery = 2
	p.msgMu.Unlock()
	p.st.mu.Lock()
	p.st.flushAt = 2
	p.st.flushDelay = 0 // what is on disk is what the commits wrote
	p.st.mu.Unlock()
	for _, name := range []string{"c", "d"} {
		_, err := p.Create(ctx, name, 8*MiB)
		require.NoError(t, err)
	}
	st, err = p.Status(ctx)
	require.NoError(t, err)
	assert.Equal(t, p.issued, st.TransactionID, "the second change moved the pool's transaction id")
	r, ok = onDisk(t, p, "c")
	require.True(t, ok)
	assert.Equal(t, StateCreating, r.State)
	_, err = p.Create(ctx, "e", 8*MiB)
	require.NoError(t, err)
	for _, name := range []string{"c", "d"} {
		r, ok = onDisk(t, p, name)
		require.True(t, ok)
		assert.Equal(t, StateReady, r.State, "%s written with the commit after flushAt outcomes", name)
	}
	assertPoolMatchesRecords(t, p)
}
