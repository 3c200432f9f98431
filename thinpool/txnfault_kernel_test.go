package thinpool

import (
	"context"
	"errors"
	"strings"
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

// TestTransactionFailurePaths drives every failure branch of runLocked on
// the kernel and checks after each that the pool and the records agree
// and that the transaction ids keep going up.
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

	// The create message fails: nothing recorded, transaction closed.
	injected := failMessages(tp.Pool, "create_thin")
	_, err = tp.Create(ctx, "a", 8*MiB)
	require.ErrorIs(t, err, injected)
	assert.True(t, notFound(tp.Get("a")))
	st, err := tp.Status(ctx)
	require.NoError(t, err)
	assert.Equal(t, tp.issued, st.TransactionID, "the pool's transaction was closed")
	moved("failed create")

	// The thin device is made but the transaction id does not move: the
	// create is undone.
	injected = failMessages(tp.Pool, "set_transaction_id")
	_, err = tp.Create(ctx, "b", 8*MiB)
	require.ErrorIs(t, err, injected)
	assert.True(t, notFound(tp.Get("b")))
	moved("undone create")

	// Neither the transaction id nor the undo go through: a tombstone
	// stays, and ProcessDeferred deletes the thin id.
	injected = failMessages(tp.Pool, "set_transaction_id", "delete")
	_, err = tp.Create(ctx, "c", 8*MiB)
	require.ErrorIs(t, err, injected)
	d, err := tp.Lookup("c")
	require.NoError(t, err)
	assert.Equal(t, StateDeleting, d.State)
	require.NoError(t, tp.ProcessDeferred(ctx))
	assert.True(t, notFound(tp.Get("c")))
	moved("tombstoned create")

	// Delete: the message fails: still there, "deleting"; retried.
	injected = failMessages(tp.Pool, "delete")
	err = tp.Delete(ctx, "keep", DeleteOptions{})
	require.ErrorIs(t, err, injected)
	d, err = tp.Lookup("keep")
	require.NoError(t, err)
	assert.Equal(t, StateDeleting, d.State)
	moved("failed delete")
	_, err = tp.Create(ctx, "keep2", 8*MiB)
	require.NoError(t, err)
	moved("create after a failed delete")
	require.NoError(t, tp.Delete(ctx, "keep", DeleteOptions{}))
	moved("delete retried")

	// Delete done but the transaction id does not move: the record goes,
	// the error is reported.
	injected = failMessages(tp.Pool, "set_transaction_id")
	err = tp.Delete(ctx, "keep2", DeleteOptions{})
	require.ErrorIs(t, err, injected)
	assert.True(t, notFound(tp.Get("keep2")))
	moved("delete without its transaction id")

	// All of it survives a reopen.
	tp.messageFault = nil
	_, err = tp.Create(ctx, "last", 8*MiB)
	require.NoError(t, err)
	require.NoError(t, tp.Close())
	p, err := Open(ctx, tp.opts)
	require.NoError(t, err)
	tp.Pool = p
	assertPoolMatchesRecords(t, p)
	_, err = p.Get("last")
	require.NoError(t, err)
}
