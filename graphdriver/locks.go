package graphdriver

import "sync"

// idLocks gives one mutex per layer id, made on demand and dropped when
// nobody holds or waits for it, so the map does not grow with every layer
// ever seen.
type idLocks struct {
	mu    sync.Mutex
	locks map[string]*idLock
}

type idLock struct {
	sync.Mutex
	waiters int
}

// lock locks id and returns the unlock function.
func (k *idLocks) lock(id string) func() {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = map[string]*idLock{}
	}
	l := k.locks[id]
	if l == nil {
		l = &idLock{}
		k.locks[id] = l
	}
	l.waiters++
	k.mu.Unlock()

	l.Lock()
	return func() {
		l.Unlock()
		k.mu.Lock()
		if l.waiters--; l.waiters == 0 {
			delete(k.locks, id)
		}
		k.mu.Unlock()
	}
}
