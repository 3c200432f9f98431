package thinpool

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestStoreRecordsAndIDs(t *testing.T) {
	s, err := openStore(filepath.Join(t.TempDir(), "m.db"))
	require.NoError(t, err)
	defer s.close()
	var ids []uint32
	for _, name := range []string{"a", "b", "c"} {
		require.NoError(t, s.update(func(tx txn) error {
			id, err := allocID(tx)
			if err != nil {
				return err
			}
			ids = append(ids, id)
			return putRecord(tx, &record{Name: name, ID: id, Size: 1 << 20, State: StateReady})
		}))
	}
	assert.Equal(t, []uint32{0, 1, 2}, ids)
	r, err := s.get("b")
	require.NoError(t, err)
	require.NoError(t, s.update(func(tx txn) error { return deleteRecord(tx, r) }))
	_, err = s.get("b")
	assert.ErrorIs(t, err, ErrNotFound)
	// Freed ids are not handed out again until the id space wraps.
	require.NoError(t, s.update(func(tx txn) error {
		id, err := allocID(tx)
		assert.Equal(t, uint32(3), id)
		return err
	}))
	all, err := s.all()
	require.NoError(t, err)
	assert.Len(t, all, 2)
}

func TestAllocIDWrapsAndSkipsUsed(t *testing.T) {
	s, err := openStore(filepath.Join(t.TempDir(), "m.db"))
	require.NoError(t, err)
	defer s.close()
	require.NoError(t, s.update(func(tx txn) error {
		if err := putU64(tx.Bucket(bucketMeta), keyNextID, 1<<24-1); err != nil {
			return err
		}
		if err := putRecord(tx, &record{Name: "last", ID: 1<<24 - 1}); err != nil {
			return err
		}
		return putRecord(tx, &record{Name: "zero", ID: 0})
	}))
	require.NoError(t, s.update(func(tx txn) error {
		id, err := allocID(tx)
		assert.Equal(t, uint32(1), id, "skips the used last id and 0 after wrapping")
		return err
	}))
}

func TestStoreLockedBySecondOpener(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.db")
	s, err := openStore(path)
	require.NoError(t, err)
	defer s.close()
	start := time.Now()
	_, err = openStore(path)
	assert.ErrorIs(t, err, ErrLocked)
	assert.Less(t, time.Since(start), 5*time.Second)
}

func TestRetryBusy(t *testing.T) {
	calls := 0
	err := retryBusy(context.Background(), 4, time.Millisecond, func() error {
		calls++
		if calls < 3 {
			return unix.EBUSY
		}
		return nil
	})
	assert.NoError(t, err)
	assert.Equal(t, 3, calls)

	calls = 0
	err = retryBusy(context.Background(), 4, time.Millisecond, func() error { calls++; return unix.EBUSY })
	assert.ErrorIs(t, err, unix.EBUSY)
	assert.Equal(t, 4, calls, "bounded")

	calls = 0
	err = retryBusy(context.Background(), 4, time.Millisecond, func() error { calls++; return unix.EIO })
	assert.ErrorIs(t, err, unix.EIO)
	assert.Equal(t, 1, calls, "other errors are not retried")

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = retryBusy(ctx, 4, time.Hour, func() error { return unix.EBUSY })
	assert.ErrorIs(t, err, context.Canceled)
	assert.ErrorIs(t, err, unix.EBUSY)
}

// TestIDIndex: the thin ids in use are kept in memory from the records: a
// transaction that fails leaves the index alone, a reopened store derives
// it from the records, and an older store's ids bucket is dropped.
func TestIDIndex(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.db")
	s, err := openStore(path)
	require.NoError(t, err)
	failed := errors.New("fail the transaction")
	err = s.update(func(tx txn) error {
		id, err := allocID(tx)
		require.NoError(t, err)
		require.NoError(t, putRecord(tx, &record{Name: "gone", ID: id}))
		return failed
	})
	require.ErrorIs(t, err, failed)
	s.mu.Lock()
	assert.Empty(t, s.ids, "a failed transaction adds no id")
	s.mu.Unlock()
	require.NoError(t, s.update(func(tx txn) error {
		if _, err := tx.CreateBucket(bucketIDs); err != nil { // as an older store had
			return err
		}
		return putRecord(tx, &record{Name: "a", ID: 5})
	}))
	require.NoError(t, s.close())

	s, err = openStore(path)
	require.NoError(t, err)
	defer s.close()
	require.NoError(t, s.db.View(func(tx txn) error {
		assert.Nil(t, tx.Bucket(bucketIDs), "the old ids bucket is dropped")
		return nil
	}))
	require.NoError(t, s.update(func(tx txn) error {
		if err := putU64(tx.Bucket(bucketMeta), keyNextID, 5); err != nil {
			return err
		}
		id, err := allocID(tx)
		assert.Equal(t, uint32(6), id, "id 5 is used by a")
		return err
	}))
	r, err := s.get("a")
	require.NoError(t, err)
	require.NoError(t, s.update(func(tx txn) error { return deleteRecord(tx, r) }))
	require.NoError(t, s.update(func(tx txn) error {
		if err := putU64(tx.Bucket(bucketMeta), keyNextID, 5); err != nil {
			return err
		}
		id, err := allocID(tx)
		assert.Equal(t, uint32(5), id, "5 is free once a is gone")
		return err
	}))
}
