package thinpool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// The process that has a pool open holds an exclusive lock (flock) on its
// store for as long as it runs, and bbolt's read-only open wants a shared
// one: it would wait for the engine to stop. Readers that must not wait
// (an operator's status, ls, check) read a copy of the file instead, and
// only a copy that no commit could have changed while it was made.
//
// bbolt never writes a page reachable from the last committed meta page:
// transaction N+1 writes new pages and only reuses pages freed before N; the
// pages N+1 frees are reused from N+2 on, which begins after N+1 committed.
// So a copy whose meta page names transaction N is consistent when the
// file's meta pages still name N once the copy is complete: N+1 may have
// been writing, but only over pages N does not use.

// boltMeta is what storeCopy needs of a bbolt meta page.
type boltMeta struct {
	pageSize uint32
	txid     uint64
}

const (
	boltMagic        = 0xED0CDAED
	boltVersion      = 2
	boltPageHeader   = 16 // id u64, flags u16, count u16, overflow u32
	boltMetaChecksum = 56 // offset of the checksum in the meta; it covers what precedes it
)

// parseBoltMeta reads the meta page at the start of b: magic, version,
// page size and transaction id, checked against the page's checksum.
func parseBoltMeta(b []byte) (boltMeta, error) {
	if len(b) < boltPageHeader+boltMetaChecksum+8 {
		return boltMeta{}, errors.New("short meta page")
	}
	m := b[boltPageHeader:]
	le := binary.LittleEndian
	if le.Uint32(m[0:]) != boltMagic || le.Uint32(m[4:]) != boltVersion {
		return boltMeta{}, errors.New("not a bbolt meta page")
	}
	h := fnv.New64a()
	h.Write(m[:boltMetaChecksum])
	if h.Sum64() != le.Uint64(m[boltMetaChecksum:]) {
		return boltMeta{}, errors.New("meta page checksum mismatch")
	}
	return boltMeta{pageSize: le.Uint32(m[8:]), txid: le.Uint64(m[48:])}, nil
}

// lastTxID returns the transaction id of the newer valid meta page of a
// bbolt file's contents (at least its first two pages).
func lastTxID(data []byte) (uint64, error) {
	m0, err0 := parseBoltMeta(data)
	var m1 boltMeta
	err1 := errors.New("no second meta page")
	if err0 == nil && len(data) >= int(m0.pageSize)*2 {
		m1, err1 = parseBoltMeta(data[m0.pageSize:])
	} else if err0 != nil {
		// The first page is torn: find the second at the usual page sizes.
		for _, ps := range []int{4096, 8192, 16384, 65536} {
			if len(data) >= 2*ps {
				if m1, err1 = parseBoltMeta(data[ps:]); err1 == nil {
					break
				}
			}
		}
	}
	switch {
	case err0 == nil && err1 == nil:
		return max(m0.txid, m1.txid), nil
	case err0 == nil:
		return m0.txid, nil
	case err1 == nil:
		return m1.txid, nil
	}
	return 0, fmt.Errorf("no valid meta page: %w", errors.Join(err0, err1))
}

// readMetaTxID reads the last committed transaction id of the bbolt file.
func readMetaTxID(f *os.File) (uint64, error) {
	buf := make([]byte, 2*65536)
	n, err := f.ReadAt(buf, 0)
	if n == 0 && err != nil {
		return 0, err
	}
	return lastTxID(buf[:n])
}

// copyStore copies the store at path into a private file under dir, retried
// until a copy is consistent (see above), and opens the copy read-only.
// The returned function closes and removes the copy.
func copyStore(path, dir string) (*store, func() error, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("thinpool: open metadata %s: %w", path, err)
	}
	defer f.Close()
	var lastErr error
	for attempt := 0; attempt < 20; attempt++ {
		if attempt > 0 {
			time.Sleep(time.Duration(attempt) * 5 * time.Millisecond)
		}
		data, err := readAll(f, attempt)
		if err != nil {
			return nil, nil, fmt.Errorf("thinpool: read metadata %s: %w", path, err)
		}
		copied, err := lastTxID(data)
		if err != nil {
			lastErr = err
			continue
		}
		now, err := readMetaTxID(f)
		if err != nil {
			lastErr = err
			continue
		}
		if now != copied {
			lastErr = fmt.Errorf("the store committed (transaction %d to %d) while it was copied", copied, now)
			continue
		}
		st, cleanup, err := openCopy(data, dir)
		if err != nil {
			return nil, nil, fmt.Errorf("thinpool: read metadata %s: %w", path, err)
		}
		return st, cleanup, nil
	}
	return nil, nil, fmt.Errorf("thinpool: no consistent copy of %s (it keeps changing): %w", path, lastErr)
}

// copyPause, when set, is called between reading a store's meta pages
// and the rest of it (tests widen the window in which commits land).
var copyPause func(attempt int)

// readAll reads the file: its first two pages (the meta pages), then the
// rest. It may grow meanwhile; what is past the size read at first belongs
// to transactions the copy does not use.
func readAll(f *os.File, attempt int) ([]byte, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	buf := make([]byte, st.Size())
	head := min(len(buf), 2*65536)
	n, err := f.ReadAt(buf[:head], 0)
	if err != nil && n != head {
		return nil, err
	}
	if copyPause != nil {
		copyPause(attempt)
	}
	m, err := f.ReadAt(buf[head:], int64(head))
	if err != nil && m != len(buf)-head {
		return nil, err
	}
	return buf, nil
}

// openCopy writes data to a new file in dir and opens it read-only.
func openCopy(data []byte, dir string) (*store, func() error, error) {
	tmp, err := os.CreateTemp(dir, "dmthin-metadata-*.db")
	if err != nil {
		return nil, nil, err
	}
	name := tmp.Name()
	_, werr := tmp.Write(data)
	if err := errors.Join(werr, tmp.Close()); err != nil {
		return nil, nil, errors.Join(err, os.Remove(name))
	}
	db, err := bolt.Open(name, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return nil, nil, errors.Join(err, os.Remove(name))
	}
	// (Older stores also have an "ids" bucket; since the thin ids are
	// indexed in memory, newer ones do not, so it is not asked for.)
	for _, b := range [][]byte{bucketDevices, bucketMeta} {
		if err := db.View(func(tx txn) error {
			if tx.Bucket(b) == nil {
				return fmt.Errorf("bucket %q is missing: not a dmthin store", b)
			}
			return nil
		}); err != nil {
			return nil, nil, errors.Join(err, db.Close(), os.Remove(name))
		}
	}
	return &store{db: db}, func() error { return errors.Join(db.Close(), os.Remove(name)) }, nil
}

// storeInUse reports whether another open file (another process, or
// another Pool in this one) holds the store's lock.
func storeInUse(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	// A shared lock is refused only while someone holds the exclusive
	// one; closing f drops it again.
	err = unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("flock %s: %w", path, err)
	}
	return false, nil
}
