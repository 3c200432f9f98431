package containerd

import (
	"context"
	"sort"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/dmthin/dmthin/layerstore"
)

// state is what a caller and the pool can see: the snapshots Walk lists
// and the pool's thin devices.
func state(t *testing.T, sn *Snapshotter) (walk, devices []string) {
	t.Helper()
	require.NoError(t, sn.Walk(context.Background(), func(_ context.Context, info snapshots.Info) error {
		walk = append(walk, info.Kind.String()+":"+info.Name+"<"+info.Parent)
		return nil
	}))
	devs, err := sn.Store().Pool().List()
	require.NoError(t, err)
	for _, d := range devs {
		devices = append(devices, d.Name)
	}
	sort.Strings(devices)
	return walk, devices
}

// TestBadInput: every misuse is refused with containerd's error class and
// a message naming what is wrong, and changes nothing.
func TestBadInput(t *testing.T) {
	testenv.RequireDM(t)
	ctx := context.Background()
	sn, err := New(ctx, testConfig(t.TempDir()), testLogger(t))
	require.NoError(t, err)
	defer func() { require.NoError(t, sn.Close()) }()
	writeCommitted(t, sn, "base", "", "f", "x")
	_, err = sn.Prepare(ctx, "active", "base")
	require.NoError(t, err)
	_, err = sn.View(ctx, "view", "base")
	require.NoError(t, err)

	cases := []struct {
		name  string
		call  func() error
		class func(error) bool
		says  string
	}{
		{"unknown parent", func() error { _, err := sn.Prepare(ctx, "k", "nope"); return err }, errdefs.IsNotFound, `"nope"`},
		{"parent not committed", func() error { _, err := sn.Prepare(ctx, "k", "active"); return err }, errdefs.IsFailedPrecondition, "not committed"},
		{"view of a view", func() error { _, err := sn.View(ctx, "k", "view"); return err }, errdefs.IsFailedPrecondition, "not committed"},
		{"duplicate key", func() error { _, err := sn.Prepare(ctx, "active", "base"); return err }, errdefs.IsAlreadyExists, `"active"`},
		{"key of a committed name", func() error { _, err := sn.Prepare(ctx, "base", ""); return err }, errdefs.IsAlreadyExists, `"base"`},
		{"empty key", func() error { _, err := sn.Prepare(ctx, "", ""); return err }, errdefs.IsInvalidArgument, "empty"},
		{"commit of a view", func() error { return sn.Commit(ctx, "c", "view") }, errdefs.IsFailedPrecondition, "view"},
		{"commit of a committed", func() error { return sn.Commit(ctx, "c", "base") }, errdefs.IsFailedPrecondition, "committed"},
		{"commit to an existing name", func() error { return sn.Commit(ctx, "base", "active") }, errdefs.IsAlreadyExists, `"base"`},
		{"commit of an unknown key", func() error { return sn.Commit(ctx, "c", "nope") }, errdefs.IsNotFound, `"nope"`},
		{"remove of a parent", func() error { return sn.Remove(ctx, "base") }, errdefs.IsFailedPrecondition, "children"},
		{"remove of an unknown key", func() error { return sn.Remove(ctx, "nope") }, errdefs.IsNotFound, `"nope"`},
		{"mounts of a committed", func() error { _, err := sn.Mounts(ctx, "base"); return err }, errdefs.IsFailedPrecondition, "committed"},
		{"update of a kind", func() error {
			_, err := sn.Update(ctx, snapshots.Info{Name: "active", Kind: snapshots.KindView}, "kind")
			return err
		}, errdefs.IsInvalidArgument, `"kind"`},
		{"label not UTF-8", func() error {
			_, err := sn.Prepare(ctx, "k", "base", snapshots.WithLabels(map[string]string{"l": "\xff"}))
			return err
		}, errdefs.IsInvalidArgument, "UTF-8"},
		{"label too long", func() error {
			_, err := sn.Prepare(ctx, "k", "base", snapshots.WithLabels(map[string]string{"l": strings.Repeat("v", 5000)}))
			return err
		}, errdefs.IsInvalidArgument, "label"},
		{"bad filter", func() error {
			return sn.Walk(ctx, func(context.Context, snapshots.Info) error { return nil }, "labels.\"x")
		}, errdefs.IsInvalidArgument, ""},
	}
	walk0, devs0 := state(t, sn)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.call()
			require.Error(t, err)
			require.True(t, c.class(err), "error class of %v", err)
			require.Contains(t, err.Error(), c.says)
			walk, devs := state(t, sn)
			require.Equal(t, walk0, walk, "snapshots changed")
			require.Equal(t, devs0, devs, "devices changed")
		})
	}
}

// TestAnyKey: keys and names are free-form. Slashes, "..", NUL, bytes
// that are not UTF-8 and very long keys all work, and never reach a path
// or a device name.
func TestAnyKey(t *testing.T) {
	testenv.RequireDM(t)
	ctx := context.Background()
	root := t.TempDir()
	sn, err := New(ctx, testConfig(root), testLogger(t))
	require.NoError(t, err)
	defer func() { require.NoError(t, sn.Close()) }()
	keys := []string{
		"default/1/sha256:0123456789abcdef",
		"../../../../etc/passwd",
		"..",
		"with\x00nul",
		"not utf-8 \xff\xfe",
		strings.Repeat("long/", 20000),
		" ",
	}
	parent := ""
	for i, key := range keys {
		_, err := sn.Prepare(ctx, key, parent)
		require.NoError(t, err, "prepare key %d", i)
		info, err := sn.Stat(ctx, key)
		require.NoError(t, err)
		require.Equal(t, key, info.Name)
		require.Equal(t, parent, info.Parent)
		name := key + "#committed"
		require.NoError(t, sn.Commit(ctx, name, key), "commit key %d", i)
		_, err = sn.Stat(ctx, key)
		require.True(t, errdefs.IsNotFound(err))
		parent = name
	}
	// They survive a restart exactly.
	require.NoError(t, sn.Close())
	sn, err = New(ctx, testConfig(root), testLogger(t))
	require.NoError(t, err)
	var chain []string
	for p := parent; p != ""; {
		info, err := sn.Stat(ctx, p)
		require.NoError(t, err)
		chain = append(chain, strings.TrimSuffix(info.Name, "#committed"))
		p = info.Parent
	}
	for i, j := 0, len(chain)-1; i < j; i, j = i+1, j-1 {
		chain[i], chain[j] = chain[j], chain[i]
	}
	require.Equal(t, keys, chain)
	// Removed leaf first, each one.
	for i := len(keys) - 1; i >= 0; i-- {
		require.NoError(t, sn.Remove(ctx, keys[i]+"#committed"), "remove key %d", i)
	}
	walk, _ := state(t, sn)
	require.Empty(t, walk)
}

// A base_image_size below the base device made before is refused (for
// now: new snapshots do not get a base of the new size), in words that
// name the config key, once.
func TestSmallerBaseImageSizeNamesItsKey(t *testing.T) {
	testenv.RequireDM(t)
	ctx := context.Background()
	cfg := testConfig(t.TempDir())
	cfg.BaseImageSize = "128MB"
	sn, err := New(ctx, cfg, testLogger(t))
	require.NoError(t, err)
	require.NoError(t, sn.Close())

	cfg.BaseImageSize = "64MB"
	_, err = New(ctx, cfg, testLogger(t))
	require.Error(t, err)
	assert.ErrorIs(t, err, layerstore.ErrInvalidOptions)
	assert.Regexp(t, `^dmthin snapshotter: invalid config: base_image_size = "[^"]+": smaller than the existing base device \([^)]+\): the base can grow, not shrink$`, err.Error())
	assert.Equal(t, 1, strings.Count(err.Error(), "invalid"), err.Error())

	cfg.BaseImageSize = "128MB"
	sn, err = New(ctx, cfg, testLogger(t))
	require.NoError(t, err, "the old size still opens")
	require.NoError(t, sn.Close())
}
