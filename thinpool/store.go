package thinpool

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
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
	// bucketIDs was thin id -> name; the id index lives in memory now
	// (store.ids), and openStore drops the bucket of older stores.
	bucketIDs    = []byte("ids")
	bucketMeta   = []byte("meta")
	keyTxID      = []byte("txid")        // last transaction id both sides agree on
	keyTxIssued  = []byte("txid-issued") // last transaction id handed to a change
	keyNextID    = []byte("next-id")     // where id allocation resumes
	keyPrefix    = []byte("prefix")      // device-mapper name prefix
	keyPoolName  = []byte("pool")        // pool device name
	keyBlockSize = []byte("blocksize")   // data block size in bytes
	// keyMinFree: the minimum free space (percent) the process that last
	// opened the pool enforces; for inspectors, who do not get its options.
	keyMinFree = []byte("min-free-space-percent")
)

// txn is a store transaction.
type txn = *bolt.Tx

// store wraps the bbolt database, plus the outcomes of changes that are
// not committed yet (see stage).
type store struct {
	db *bolt.DB

	// commitMu serialises commits (see commit).
	commitMu sync.Mutex
	// flushDelay: staged outcomes are written by a background commit this
	// long after the first of them was staged (0: only by the next
	// commit, at flushAt, or at close). Under mu, with flushTimer,
	// flushes (background commits made, for tests) and closed.
	flushDelay time.Duration
	flushTimer *time.Timer
	flushes    int
	closed     bool

	// mu guards staged: record name -> the record's state after a change
	// that succeeded, nil for a record the change dropped. Reads see
	// staged outcomes; the next update commits them in its transaction.
	mu     sync.Mutex
	staged map[string]*staged
	// commits counts durable transactions (update), under mu (tests).
	commits int
	// flushAt is how many staged outcomes make the next commit write
	// them all (see update).
	flushAt int
	// ids maps the thin id of every committed record to its name: what
	// allocID skips. Under mu; nil until built (useIDs, or allocID's scan).
	ids map[uint32]string
}

// The thin ids in use are derived from the records instead of kept in a
// bucket of their own: a bucket of 4-byte keys packs a hundred and more
// entries per page, and bbolt reads a whole page into a node to change one
// entry, which made up half the cost of committing an intent. putRecord and
// deleteRecord keep the index through tx.OnCommit, so a transaction that
// fails leaves it as it was; they find the index of their transaction's
// store here.
var storesByDB sync.Map // *bolt.DB -> *store

func storeOf(tx *bolt.Tx) *store {
	v, ok := storesByDB.Load(tx.DB())
	if !ok {
		return nil
	}
	return v.(*store)
}

// useIDs builds the id index from records read while nothing else writes
// (Open's recovery reads them all anyway). A built index is kept.
func (s *store) useIDs(recs []*record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ids != nil {
		return
	}
	s.ids = make(map[uint32]string, len(recs))
	for _, r := range recs {
		s.ids[r.ID] = r.Name
	}
}

// idsLocked returns the index, building it from tx's records if need be.
// Callers hold mu.
func (s *store) idsLocked(tx *bolt.Tx) (map[uint32]string, error) {
	if s.ids != nil {
		return s.ids, nil
	}
	ids := map[uint32]string{}
	err := tx.Bucket(bucketDevices).ForEach(func(k, v []byte) error {
		var r struct {
			ID uint32 `json:"id"`
		}
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("thinpool: record %q: %w", k, err)
		}
		ids[r.ID] = string(k)
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.ids = ids
	return ids, nil
}

// staged is an outcome waiting for the next commit.
type staged struct {
	rec  record
	drop bool
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
		for _, b := range [][]byte{bucketDevices, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		if tx.Bucket(bucketIDs) != nil {
			return tx.DeleteBucket(bucketIDs)
		}
		return nil
	})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("thinpool: init metadata: %w", err), db.Close())
	}
	s := &store{db: db, staged: map[string]*staged{}, flushAt: syncEvery, flushDelay: stagedFlushDelay}
	storesByDB.Store(db, s)
	return s, nil
}

// close commits the staged outcomes and closes the database.
func (s *store) close() error {
	s.mu.Lock()
	s.closed = true
	if s.flushTimer != nil {
		s.flushTimer.Stop()
		s.flushTimer = nil
	}
	s.mu.Unlock()
	err := errors.Join(s.commit(func(*bolt.Tx) error { return nil }, true, false), s.db.Close())
	storesByDB.Delete(s.db)
	return err
}

// stage records the outcome of a change without a commit of its own: rec in
// state st, or dropped when st is "". Reads see it at once; a later commit
// writes it (see update). A crash before that leaves the record in its
// intended state (creating, deleting), which recovery settles by asking the
// pool, so the outcome needs no fsync of its own (txn.go).
func (s *store) stage(rec *record, st State) {
	v := &staged{rec: *rec, drop: st == ""}
	if !v.drop {
		rec.State = st
		v.rec.State = st
	}
	s.mu.Lock()
	s.staged[rec.Name] = v
	if s.flushDelay > 0 && s.flushTimer == nil && !s.closed {
		s.flushTimer = time.AfterFunc(s.flushDelay, s.flushStaged)
	}
	s.mu.Unlock()
}

// stagedFlushDelay bounds how long the records on disk lag behind the
// outcomes staged in memory. Recovery does not need the flush (it settles
// a record left in its intended state by asking the pool); it is there for
// readers of the file (the dmthin command's copy of a live store) and to
// keep the records a crash leaves to probe few. It is a commit of its own
// off the caller's path: a change's caller still waits for one durable
// commit, its intent; a burst of changes shares one flush.
const stagedFlushDelay = 50 * time.Millisecond

// flushStaged writes every staged outcome in a background commit. An error
// leaves them staged for the next commit.
func (s *store) flushStaged() {
	s.mu.Lock()
	s.flushTimer = nil
	n := len(s.staged)
	closed := s.closed
	s.mu.Unlock()
	if n == 0 || closed {
		return
	}
	_ = s.commit(func(*bolt.Tx) error { return nil }, true, true)
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
	if s := storeOf(tx); s != nil {
		id, name, prev := r.ID, r.Name, s.stagedOf(r.Name)
		tx.OnCommit(func() {
			s.mu.Lock()
			if s.ids != nil {
				s.ids[id] = name
			}
			s.supersedeLocked(name, prev)
			s.mu.Unlock()
		})
	}
	return nil
}

// stagedOf returns name's staged outcome, nil if none.
func (s *store) stagedOf(name string) *staged {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.staged[name]
}

// supersedeLocked forgets name's staged outcome prev once a transaction
// that wrote name committed, unless name was staged again meanwhile.
// Callers hold mu.
func (s *store) supersedeLocked(name string, prev *staged) {
	if prev != nil && s.staged[name] == prev {
		delete(s.staged, name)
	}
}

func deleteRecord(tx *bolt.Tx, r *record) error {
	if err := tx.Bucket(bucketDevices).Delete([]byte(r.Name)); err != nil {
		return err
	}
	if s := storeOf(tx); s != nil {
		id, name, prev := r.ID, r.Name, s.stagedOf(r.Name)
		tx.OnCommit(func() {
			s.mu.Lock()
			if s.ids != nil && s.ids[id] == name {
				delete(s.ids, id)
			}
			s.supersedeLocked(name, prev)
			s.mu.Unlock()
		})
	}
	return nil
}

// allocID finds a free thin id, starting after the last one handed out, so
// ids are reused only after the id space wrapped. An id freed in tx itself
// counts as used until tx commits.
func allocID(tx *bolt.Tx) (uint32, error) {
	s := storeOf(tx)
	if s == nil {
		return 0, errors.New("thinpool: allocID outside a store's transaction")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ids, err := s.idsLocked(tx)
	if err != nil {
		return 0, err
	}
	meta := tx.Bucket(bucketMeta)
	next := uint32(u64(meta.Get(keyNextID)))
	const space = 1 << 24
	for i := 0; i < space; i++ {
		id := (next + uint32(i)) % space
		if _, used := ids[id]; !used {
			return id, putU64(meta, keyNextID, uint64((id+1)%space))
		}
	}
	return 0, fmt.Errorf("%w: all %d thin ids are in use", ErrPoolFull, space)
}

// get and all read the disk and the staged outcomes under mu, as one view:
// a commit that writes staged outcomes clears them under mu only after its
// transaction, so a read either sees them staged or (with its snapshot
// taken after the commit) on disk, never neither (a record read from disk
// before a commit and overlaid after its outcomes were cleared showed its
// intended state: TestConcurrentOperations with the background flush).
func (s *store) get(name string) (*record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if v, ok := s.staged[name]; ok {
		if v.drop {
			return nil, fmt.Errorf("%w: %q", ErrNotFound, name)
		}
		r := v.rec
		return &r, nil
	}
	var r *record
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		r, err = getRecord(tx, name)
		return err
	})
	return r, err
}

func (s *store) all() ([]*record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
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
	if err != nil {
		return nil, err
	}
	if len(s.staged) == 0 {
		return out, nil
	}
	kept := out[:0]
	for _, r := range out {
		if _, ok := s.staged[r.Name]; !ok {
			kept = append(kept, r)
		}
	}
	for _, v := range s.staged {
		if !v.drop {
			r := v.rec
			kept = append(kept, &r)
		}
	}
	sort.Slice(kept, func(i, j int) bool { return kept[i].Name < kept[j].Name })
	return kept, nil
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

// update runs fn in a durable transaction. The transaction first writes
// the staged drops (so that fn does not find a record that is gone) and,
// once flushAt outcomes are staged, every staged outcome. A staged ready
// record waits: on disk it is "creating", which fn may find (it exists
// either way), and which recovery rolls forward after a crash. Writing it
// with every commit cost as much again as the intent itself (bbolt rewrites
// the page it is on). A record fn writes replaces its staged outcome.
func (s *store) update(fn func(tx *bolt.Tx) error) error { return s.commit(fn, false, false) }

// commitPause, when set, is called between choosing a commit's staged
// outcomes and writing them (tests).
var commitPause func()

// commit is update; all writes every staged outcome (close, the background
// flush); background counts it as a flush, not a caller's commit.
func (s *store) commit(fn func(tx *bolt.Tx) error, all, background bool) error {
	// One commit at a time, from choosing its staged outcomes to clearing
	// them: two overlapping commits could otherwise write an outcome after
	// a newer record of the same name (a stale drop deleting a record made
	// again meanwhile). Changes hold msgMu, but label updates and resizes
	// hold only their device's lock. bbolt serialises writers anyway, so
	// this costs no concurrency.
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	s.mu.Lock()
	all = all || len(s.staged) >= s.flushAt
	batch := make(map[string]*staged, len(s.staged))
	for k, v := range s.staged {
		if all || v.drop {
			batch[k] = v
		}
	}
	s.mu.Unlock()
	if commitPause != nil {
		commitPause()
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		for _, v := range batch {
			r := v.rec
			var err error
			if v.drop {
				err = deleteRecord(tx, &r)
			} else {
				err = putRecord(tx, &r)
			}
			if err != nil {
				return fmt.Errorf("thinpool: commit outcome of %q: %w", r.Name, err)
			}
		}
		return fn(tx)
	})
	if err != nil {
		return err
	}
	s.mu.Lock()
	if background {
		s.flushes++
	} else {
		s.commits++
	}
	for k, v := range batch {
		if s.staged[k] == v { // not staged again meanwhile
			delete(s.staged, k)
		}
	}
	s.mu.Unlock()
	return nil
}
