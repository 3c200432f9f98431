package layerstore

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/dmthin/dmthin/thinpool"
)

// The background worker does what callers need not wait for:
//
//   - deactivating the device of a layer whose last Put unmounted it (the
//     unmount is what the caller needs; the device's teardown is not);
//   - deleting the devices of removed layers: Remove retires the device
//     (thinpool.Retire: the name is free, the record kept under a tombstone
//     name), and the worker discards and deletes it;
//   - with DeferredDeletion, retrying the deletions the pool deferred.
//
// One goroutine, one pass at a time (passMu), so the background work
// never runs more than one kernel operation at once. Its to-do list is
// the pool's records (retired devices) and an in-memory set of idle
// layers; a crash loses only the latter, and Open finds those devices
// active without a mount and queues them again. A pass that leaves
// something undone (a held device, a full pool, a failed message) logs it
// and is retried with exponential backoff, from retryBase up to the
// DeferredInterval; Close makes one last pass, and what is still left
// stays recorded for the next Open.

// retryBase is the first delay before a failed background step is retried.
const retryBase = 50 * time.Millisecond

// idleGrace is how long a device stays active after the last Put before
// the worker deactivates it. A layer is often removed right after its
// last Put (a container stopped, then removed): its device is then still
// active, and its deletion discards through it instead of activating it
// again; a layer mounted again soon reuses it. A variable for tests.
var idleGrace = time.Second

type worker struct {
	kick   chan struct{} // buffered 1: work was queued
	stop   context.CancelFunc
	done   chan struct{}
	passMu sync.Mutex // one pass at a time

	mu   sync.Mutex
	idle map[string]time.Time // layers unmounted by Put, device still active: since when
}

func newWorker() *worker {
	return &worker{kick: make(chan struct{}, 1), idle: map[string]time.Time{}}
}

// wake tells the worker there is work, without waiting.
func (w *worker) wake() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// setIdle adds (or, with idle false, drops) layer name to the set whose
// devices wait for deactivation.
func (w *worker) setIdle(name string, idle bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if idle {
		w.idle[name] = time.Now()
	} else {
		delete(w.idle, name)
	}
}

// idleNames lists the idle layers, those idle since before cutoff first
// (due), and when the next of the others is due (zero if none).
func (w *worker) idleNames(cutoff time.Time) (due []string, next time.Time, all int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for n, since := range w.idle {
		if !since.After(cutoff) {
			due = append(due, n)
		} else if at := since.Add(idleGrace); next.IsZero() || at.Before(next) {
			next = at
		}
	}
	sort.Strings(due)
	return due, next, len(w.idle)
}

func (w *worker) isIdle(name string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.idle[name]
	return ok
}

// startWorker starts the background goroutine; Close stops it.
func (s *Store) startWorker() {
	ctx, cancel := context.WithCancel(context.Background())
	w := s.work
	w.stop = cancel
	w.done = make(chan struct{})
	go func() {
		defer close(w.done)
		delay := retryBase
		lastDeferred := time.Now()
		var retry, idleDue <-chan time.Time
		w.wake() // what Open found
		for {
			var deferredTick <-chan time.Time
			if s.opts.DeferredDeletion {
				deferredTick = time.After(time.Until(lastDeferred.Add(s.opts.DeferredInterval)))
			}
			select {
			case <-ctx.Done():
				return
			case <-w.kick:
			case <-retry:
			case <-idleDue:
			case <-deferredTick:
			}
			withDeferred := s.opts.DeferredDeletion && !time.Now().Before(lastDeferred.Add(s.opts.DeferredInterval))
			if withDeferred {
				lastDeferred = time.Now()
			}
			left, next, err := s.pass(ctx, time.Now().Add(-idleGrace), withDeferred)
			idleDue = nil
			if !next.IsZero() {
				idleDue = time.After(time.Until(next))
			}
			switch {
			case errors.Is(err, ErrClosed) || ctx.Err() != nil:
				return
			case left == 0:
				delay, retry = retryBase, nil
			default:
				s.log.WithError(err).WithFields(logrus.Fields{"left": left, "retry-in": delay}).
					Warn("background work left undone; retrying")
				retry = time.After(delay)
				delay = min(2*delay, max(s.opts.DeferredInterval, retryBase))
			}
		}
	}()
}

// stopWorker stops the goroutine and waits for its pass to end.
func (s *Store) stopWorker() {
	if s.work.stop != nil {
		s.work.stop()
		<-s.work.done
		s.work.stop = nil
	}
}

// pass does the background work once: deletions of retired devices,
// deactivations of the devices idle since before idleCutoff, then
// (withDeferred) the deletions the pool deferred. left counts what failed
// and is still to do, err says why; next is when the next idle device is
// due for deactivation (zero if none).
func (s *Store) pass(ctx context.Context, idleCutoff time.Time, withDeferred bool) (left int, next time.Time, err error) {
	s.work.passMu.Lock()
	defer s.work.passMu.Unlock()
	done, err := s.enter()
	if err != nil {
		return 0, time.Time{}, err
	}
	defer done()
	left, err = s.passLocked(ctx, idleCutoff, withDeferred)
	_, next, _ = s.work.idleNames(idleCutoff)
	if errors.Is(err, thinpool.ErrClosed) {
		// The pool was closed under the store (tests simulating a
		// crash): nothing more can be done.
		return 0, time.Time{}, ErrClosed
	}
	return left, next, err
}

func (s *Store) passLocked(ctx context.Context, idleCutoff time.Time, withDeferred bool) (left int, err error) {
	var errs []error
	retired, err := s.pool.Retired()
	if err != nil {
		return 1, err
	}
	for _, dev := range retired {
		if err := ctx.Err(); err != nil {
			return left + 1, errors.Join(append(errs, err)...)
		}
		err := s.pool.Delete(ctx, dev.Name, thinpool.DeleteOptions{Discard: s.opts.Discard})
		if err == nil || errors.Is(err, thinpool.ErrNotFound) {
			s.step(StepRemoveDeleted)
			s.log.WithFields(logrus.Fields{"layer": dev.Retired, "device": dev.Name}).Debug("removed layer's device deleted")
			continue
		}
		left++
		errs = append(errs, fmt.Errorf("delete the device of removed layer %q (%s): %w", dev.Retired, dev.Name, err))
	}
	due, _, _ := s.work.idleNames(idleCutoff)
	for _, name := range due {
		if err := s.deactivateIdle(ctx, name); err != nil {
			left++
			errs = append(errs, err)
		}
	}
	if withDeferred {
		if err := s.retryDeletions(ctx); err != nil {
			left++
			errs = append(errs, err)
		}
	}
	return left, errors.Join(errs...)
}

// deactivateIdle deactivates the device of layer name if it is still idle
// (not mounted again, not removed since Put).
func (s *Store) deactivateIdle(ctx context.Context, name string) error {
	unlock := s.locks.Lock(name)
	defer unlock()
	if !s.work.isIdle(name) {
		return nil
	}
	if s.mountOf(name) != nil {
		s.work.setIdle(name, false)
		return nil
	}
	err := s.pool.Deactivate(ctx, DeviceName(name), s.opts.DeferredRemoval)
	if err != nil && !errors.Is(err, thinpool.ErrNotFound) {
		return fmt.Errorf("deactivate layer %q: %w", name, err)
	}
	s.work.setIdle(name, false)
	s.step(StepPutDeactivated)
	return nil
}

// Drain does the background work now and waits for it: it deactivates the
// devices the last Puts left active and deletes the devices of removed
// layers, retrying with backoff until nothing is left or ctx ends. Callers
// that need the pool's space back at a given point (or a quiet kernel, as
// benchmarks do) call it; nobody has to.
func (s *Store) Drain(ctx context.Context) error {
	delay := retryBase
	for {
		left, _, err := s.pass(ctx, time.Now(), s.opts.DeferredDeletion)
		if left == 0 && err == nil {
			return nil
		}
		if errors.Is(err, ErrClosed) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("layerstore: drain: %d left: %w", left, errors.Join(err, ctx.Err()))
		case <-time.After(delay):
		}
		delay = min(2*delay, time.Second)
	}
}

// Pending counts the background work not done yet: devices waiting for
// deactivation, and devices of removed layers waiting to be deleted.
func (s *Store) Pending() (deactivations, deletions int, err error) {
	done, err := s.enter()
	if err != nil {
		return 0, 0, err
	}
	defer done()
	retired, err := s.pool.Retired()
	_, _, idle := s.work.idleNames(time.Time{})
	return idle, len(retired), err
}
