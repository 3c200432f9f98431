package retry

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var (
	errBusy  = errors.New("busy")
	errOther = errors.New("other")
)

func TestDoStopsOnSuccessAndOnOtherErrors(t *testing.T) {
	calls := 0
	err := Do(context.Background(), Policy{Tries: 10}, On(errBusy), func() error {
		calls++
		if calls < 3 {
			return errBusy
		}
		return nil
	})
	require.NoError(t, err)
	assert.Equal(t, 3, calls)

	calls = 0
	err = Do(context.Background(), Policy{Tries: 10}, On(errBusy), func() error { calls++; return errOther })
	assert.ErrorIs(t, err, errOther)
	assert.Equal(t, 1, calls, "an error not listed is not retried")
}

func TestDoBounds(t *testing.T) {
	calls := 0
	err := Do(context.Background(), Policy{Tries: 4, Base: time.Millisecond}, On(errBusy), func() error { calls++; return errBusy })
	assert.ErrorIs(t, err, errBusy)
	assert.Equal(t, 4, calls)

	calls = 0
	start := time.Now()
	err = Do(context.Background(), Policy{Base: 5 * time.Millisecond, Max: 10 * time.Millisecond, Within: 80 * time.Millisecond}, On(errBusy),
		func() error { calls++; return errBusy })
	assert.ErrorIs(t, err, errBusy)
	assert.Less(t, time.Since(start), time.Second)
	assert.GreaterOrEqual(t, time.Since(start), 80*time.Millisecond)
	assert.Greater(t, calls, 4, "pauses are capped at Max")

	calls = 0
	assert.ErrorIs(t, Do(context.Background(), Policy{}, On(errBusy), func() error { calls++; return errBusy }), errBusy)
	assert.Equal(t, 1, calls, "an empty policy calls once")
}

func TestDoEndsWithContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	err := Do(ctx, Policy{Within: time.Hour, Base: time.Millisecond, Max: 5 * time.Millisecond}, On(errBusy), func() error { return errBusy })
	assert.ErrorIs(t, err, errBusy)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
}
