package keyedmutex

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestSameKeyWaitsOtherKeyDoesNot(t *testing.T) {
	var k Map
	unlockA := k.Lock("a")
	got := make(chan struct{})
	go func() {
		unlock := k.Lock("a")
		close(got)
		unlock()
	}()
	k.Lock("b")() // a different key is not blocked
	select {
	case <-got:
		t.Fatal("second lock of the same key did not wait")
	case <-time.After(50 * time.Millisecond):
	}
	unlockA()
	<-got
	assert.Zero(t, k.held(), "locks nobody holds are dropped")
}

func TestPairsInOppositeOrderDoNotDeadlock(t *testing.T) {
	var k Map
	var mu sync.Mutex
	inside := 0
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			a, b := "x", "y"
			if i%2 == 0 {
				a, b = b, a
			}
			unlock := k.Lock(a, b, "")
			mu.Lock()
			inside++
			assert.Equal(t, 1, inside, "exclusive")
			mu.Unlock()
			time.Sleep(time.Millisecond)
			mu.Lock()
			inside--
			mu.Unlock()
			unlock()
		}(i)
	}
	wg.Wait()
	assert.Zero(t, k.held(), "no lock left behind")
}
