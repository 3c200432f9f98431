// Package keyedmutex gives one mutex per string key (a device name, a layer
// id), made on demand and dropped when nobody holds or waits for it, so the
// map does not grow with every key ever seen. It is shared by thinpool and
// graphdriver; it is not a general-purpose lock library.
package keyedmutex

import (
	"sort"
	"sync"
)

// Map is a set of per-key mutexes. The zero value is ready to use.
type Map struct {
	mu    sync.Mutex
	locks map[string]*entry
}

type entry struct {
	sync.Mutex
	refs int
}

// Lock locks every non-empty key, in sorted order so that two callers
// locking the same keys in different orders cannot deadlock, and returns
// the function that unlocks them all.
func (m *Map) Lock(keys ...string) func() {
	keys = append([]string(nil), keys...)
	sort.Strings(keys)
	var held []string
	var entries []*entry
	for i, k := range keys {
		if k == "" || (i > 0 && k == keys[i-1]) {
			continue
		}
		m.mu.Lock()
		if m.locks == nil {
			m.locks = make(map[string]*entry)
		}
		e := m.locks[k]
		if e == nil {
			e = &entry{}
			m.locks[k] = e
		}
		e.refs++
		m.mu.Unlock()
		e.Lock()
		held = append(held, k)
		entries = append(entries, e)
	}
	return func() {
		for i := len(entries) - 1; i >= 0; i-- {
			entries[i].Unlock()
			m.mu.Lock()
			if entries[i].refs--; entries[i].refs == 0 {
				delete(m.locks, held[i])
			}
			m.mu.Unlock()
		}
	}
}

// held reports how many keys have a mutex (for tests).
func (m *Map) held() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.locks)
}
