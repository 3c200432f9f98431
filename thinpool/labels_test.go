package thinpool

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLabels(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()

	d, err := tp.Create(ctx, "img", 8*MiB, WithLabels(map[string]string{"kind": "image", "empty": ""}))
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"kind": "image"}, d.Labels, "empty values are not stored")
	s, err := tp.Snapshot(ctx, "rw", "img", 0, WithLabels(map[string]string{"kind": "container"}), WithLabels(map[string]string{"owner": "c1"}))
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"kind": "container", "owner": "c1"}, s.Labels)
	plain, err := tp.Create(ctx, "plain", 8*MiB)
	require.NoError(t, err)
	assert.Empty(t, plain.Labels)

	_, err = tp.Create(ctx, "badlabel", 8*MiB, WithLabels(map[string]string{"": "x"}))
	assert.Error(t, err, "empty key")
	_, err = tp.Lookup("badlabel")
	assert.ErrorIs(t, err, ErrNotFound)

	// Merge: add, replace, remove with "".
	require.NoError(t, tp.SetLabels(ctx, "rw", map[string]string{"owner": "", "state": "committed", "kind": "layer"}))
	require.NoError(t, tp.SetLabels(ctx, "plain", map[string]string{"a": "1"}))
	assert.ErrorIs(t, tp.SetLabels(ctx, "nope", map[string]string{"a": "1"}), ErrNotFound)

	// A caller's map is not aliased by the pool.
	got, err := tp.Get("rw")
	require.NoError(t, err)
	got.Labels["kind"] = "mutated"

	check := func(p *Pool) {
		t.Helper()
		for name, want := range map[string]map[string]string{
			"img":   {"kind": "image"},
			"rw":    {"kind": "layer", "state": "committed"},
			"plain": {"a": "1"},
		} {
			g, err := p.Get(name)
			require.NoError(t, err)
			assert.Equal(t, want, g.Labels, "Get %s", name)
			l, err := p.Lookup(name)
			require.NoError(t, err)
			assert.Equal(t, want, l.Labels, "Lookup %s", name)
		}
		list, err := p.List()
		require.NoError(t, err)
		assert.Len(t, list, 3)
		for _, dev := range list {
			assert.NotEmpty(t, dev.Labels, dev.Name)
		}
	}
	check(tp.Pool)

	// Durable: a new Open reads them back.
	require.NoError(t, tp.Close())
	p, err := Open(ctx, tp.opts)
	require.NoError(t, err)
	tp.Pool = p
	check(p)

	// Removing the last label leaves none.
	require.NoError(t, p.SetLabels(ctx, "plain", map[string]string{"a": ""}))
	g, err := p.Get("plain")
	require.NoError(t, err)
	assert.Empty(t, g.Labels)
}
