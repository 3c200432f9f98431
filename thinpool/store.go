package thinpool

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// State is where a device's record stands in its life cycle.
type State string

const (
	// StateCreating: the record is committed, the create message may or
	// may not have reached the pool.
	StateCreating State = "creating"
	// StateReady: the thin device exists.
	StateReady State = "ready"
	// StateDeleting: the delete message may or may not have reached the
	// pool.
	StateDeleting State = "deleting"
	// StateDeferredDelete: deletion waits for the device to be closed.
	StateDeferredDelete State = "deferred-delete"
	// StateRetired: the device's name was freed (Retire); its record is
	// kept under a tombstone name until Delete deletes the thin device.
	StateRetired State = "retired"
	// StateFaulty: Open could not settle the record (the thin device was
	// lost, or a half-done change could not be finished); Fault says why.
	StateFaulty State = "faulty"
)

// record is what the store keeps per device.
type record struct {
	Name    string    `json:"name"`
	ID      uint32    `json:"id"`
	Size    int64     `json:"size"`
	Parent  string    `json:"parent,omitempty"`
	State   State     `json:"state"`
	TxID    uint64    `json:"txid"` // the pool transaction id of the last change
	Created time.Time `json:"created"`
	// Fault says why a faulty record could not be settled.
	Fault string `json:"fault,omitempty"`
	// Retired is the name a retired device had.
	Retired string `json:"retired,omitempty"`
	// Labels are the caller's, stored with the record.
	Labels map[string]string `json:"labels,omitempty"`
}

var (
	bucketDevices = []byte("devices") // name -> record JSON
	bucketIDs     = []byte("ids")     // thin id (big endian) -> name
	bucketMeta    = []byte("meta")
	keyTxID       = []byte("txid")        // last transaction id both sides agree on
	keyTxIssued   = []byte("txid-issued") // last transaction id handed to a change
	keyNextID     = []byte("next-id")     // where id allocation resumes
	keyPrefix     = []byte("prefix")      // device-mapper name prefix
	keyPoolName   = []byte("pool")        // pool device name
	keyBlockSize  = []byte("blocksize")   // data block size in bytes
)

// txn is a store transaction.
type txn = *bolt.Tx

// store wraps the bbolt database.
type store struct {
	db *bolt.DB
}

func openStore(path string) (*store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("%w: %s", ErrLocked, path)
		}
		return nil, fmt.Errorf("thinpool: open metadata %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketDevices, bucketIDs, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("thinpool: init metadata: %w", err), db.Close())
	}
	return &store{db: db}, nil
}

func (s *store) close() error { return s.db.Close() }

func idKey(id uint32) []byte {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], id)
	return b[:]
}

func u64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

func putU64(b *bolt.Bucket, k []byte, v uint64) error {
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], v)
	return b.Put(k, buf[:])
}

func getRecord(tx *bolt.Tx, name string) (*record, error) {
	v := tx.Bucket(bucketDevices).Get([]byte(name))
	if v == nil {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	var r record
	if err := json.Unmarshal(v, &r); err != nil {
		return nil, fmt.Errorf("thinpool: record %q: %w", name, err)
	}
	return &r, nil
}

func putRecord(tx *bolt.Tx, r *record) error {
	v, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := tx.Bucket(bucketDevices).Put([]byte(r.Name), v); err != nil {
		return err
	}
	return tx.Bucket(bucketIDs).Put(idKey(r.ID), []byte(r.Name))
}

func deleteRecord(tx *bolt.Tx, r *record) error {
	if err := tx.Bucket(bucketDevices).Delete([]byte(r.Name)); err != nil {
		return err
	}
	return tx.Bucket(bucketIDs).Delete(idKey(r.ID))
}

// allocID finds a free thin id, starting after the last one handed out, so
// ids are reused only after the id space wrapped.
func allocID(tx *bolt.Tx) (uint32, error) {
	meta := tx.Bucket(bucketMeta)
	ids := tx.Bucket(bucketIDs)
	next := uint32(u64(meta.Get(keyNextID)))
	const space = 1 << 24
	for i := 0; i < space; i++ {
		id := (next + uint32(i)) % space
		if ids.Get(idKey(id)) == nil {
			return id, putU64(meta, keyNextID, uint64((id+1)%space))
		}
	}
	return 0, fmt.Errorf("%w: all %d thin ids are in use", ErrPoolFull, space)
}

func (s *store) get(name string) (*record, error) {
	var r *record
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		r, err = getRecord(tx, name)
		return err
	})
	return r, err
}

func (s *store) all() ([]*record, error) {
	var out []*record
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDevices).ForEach(func(k, v []byte) error {
			var r record
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("thinpool: record %q: %w", k, err)
			}
			out = append(out, &r)
			return nil
		})
	})
	return out, err
}

// txIDs returns the last transaction id both sides agreed on and the last
// one handed to a change.
func (s *store) txIDs() (agreed, issued uint64, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		agreed, issued = u64(meta.Get(keyTxID)), u64(meta.Get(keyTxIssued))
		return nil
	})
	return agreed, issued, err
}

func (s *store) metaString(key []byte) (string, error) {
	var v string
	err := s.db.View(func(tx *bolt.Tx) error {
		v = string(tx.Bucket(bucketMeta).Get(key))
		return nil
	})
	return v, err
}

func (s *store) update(fn func(tx *bolt.Tx) error) error { return s.db.Update(fn) }
