package thinpool

import (
	"sort"
	"sync"
)

// keyedMutex gives one mutex per device name, created on demand and
// dropped when nobody holds or waits for it.
type keyedMutex struct {
	mu    sync.Mutex
	locks map[string]*refMutex
}

type refMutex struct {
	sync.Mutex
	refs int
}

// lock locks every name (in sorted order, so two callers locking the same
// pair cannot deadlock) and returns the unlock function.
func (k *keyedMutex) lock(names ...string) func() {
	names = append([]string(nil), names...)
	sort.Strings(names)
	var held []*refMutex
	var heldNames []string
	for i, n := range names {
		if i > 0 && n == names[i-1] {
			continue
		}
		k.mu.Lock()
		if k.locks == nil {
			k.locks = make(map[string]*refMutex)
		}
		m := k.locks[n]
		if m == nil {
			m = &refMutex{}
			k.locks[n] = m
		}
		m.refs++
		k.mu.Unlock()
		m.Lock()
		held = append(held, m)
		heldNames = append(heldNames, n)
	}
	return func() {
		for i := len(held) - 1; i >= 0; i-- {
			held[i].Unlock()
			k.mu.Lock()
			held[i].refs--
			if held[i].refs == 0 {
				delete(k.locks, heldNames[i])
			}
			k.mu.Unlock()
		}
	}
}
