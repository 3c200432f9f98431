// Package retry calls an operation again while it fails in a way that
// passes: a device still held by a process that is going away, a busy
// answer of the kernel. Every retry in the library goes through Do, so that
// each one is bounded (in tries or in time), takes a context and decides
// what is worth another try with errors.Is or errors.As, never by text.
//
// It is not for: loops that run for the life of an object (background
// workers), or waiting for an event the kernel can report.
package retry

import (
	"context"
	"errors"
	"time"
)

// Policy bounds the retries: at most Tries calls and, when Within is set,
// no new call after Within has passed since the first. The pause after the
// first failure is Base and doubles after each one, up to Max when it is set.
type Policy struct {
	Tries  int           // at most this many calls; 0: only Within bounds them
	Base   time.Duration // first pause
	Max    time.Duration // longest pause; 0: no cap
	Within time.Duration // give up once this long has passed; 0: only Tries bounds them
}

// Do calls f until it returns nil or an error retryable rejects, until the
// policy is spent or until ctx ends. It returns f's last error, joined with
// the context's when ctx ended the wait. A policy with neither Tries nor
// Within calls f once.
func Do(ctx context.Context, p Policy, retryable func(error) bool, f func() error) error {
	var deadline time.Time
	if p.Within > 0 {
		deadline = time.Now().Add(p.Within)
	}
	pause := p.Base
	for i := 1; ; i++ {
		err := f()
		if err == nil || !retryable(err) {
			return err
		}
		if (p.Tries > 0 && i >= p.Tries) || (p.Tries <= 0 && deadline.IsZero()) {
			return err
		}
		if !deadline.IsZero() {
			left := time.Until(deadline)
			if left <= 0 {
				return err
			}
			pause = min(pause, left)
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(pause):
		}
		if pause *= 2; p.Max > 0 && pause > p.Max {
			pause = p.Max
		}
	}
}

// On returns a retryable function that accepts the errors matching any of
// targets (errors.Is).
func On(targets ...error) func(error) bool {
	return func(err error) bool {
		for _, t := range targets {
			if errors.Is(err, t) {
				return true
			}
		}
		return false
	}
}
