package layerstore

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moby/sys/mountinfo"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/dmthin/dmthin/thinpool"
)

// Kernel tests of the API for callers that mount a layer's block device
// themselves and keep their metadata in its labels (containerd's
// snapshotter): Activate, Deactivate, MountData, SetLabels, Layers,
// SnapshotOf.

func layerNames(t *testing.T, s *Store) []string {
	t.Helper()
	layers, err := s.Layers()
	require.NoError(t, err)
	var names []string
	for _, l := range layers {
		names = append(names, l.Name)
	}
	return names
}

// On each filesystem: a parent and its snapshot, activated and mounted by
// the caller side by side with the store's MountData, are deactivated
// once the caller unmounts them, and refused with ErrBusy while mounted.
func TestCallerMountsDevices(t *testing.T) {
	testenv.RequireDM(t)
	for _, fc := range testFilesystems {
		t.Run(fc.name, func(t *testing.T) {
			ctx := context.Background()
			o := testOptions(t)
			o.Filesystem, o.BaseSize = fc.name, fc.base
			s := openStore(t, o)
			require.NoError(t, s.Create(ctx, "a", "", 0))
			require.NoError(t, s.Create(ctx, "b", "a", 0))
			if fc.name == FilesystemXFS {
				assert.Equal(t, "nouuid", s.MountData(), "xfs snapshots share their origin's UUID")
			} else {
				assert.Empty(t, s.MountData())
			}

			var mps []string
			for _, n := range []string{"a", "b"} {
				node, err := s.Activate(ctx, n)
				require.NoError(t, err)
				again, err := s.Activate(ctx, n)
				require.NoError(t, err)
				assert.Equal(t, node, again, "activating an active layer gives its path")
				fi, err := os.Stat(node)
				require.NoError(t, err)
				assert.Equal(t, os.ModeDevice, fi.Mode()&(os.ModeDevice|os.ModeCharDevice), "a block device")
				mp := filepath.Join(t.TempDir(), n)
				require.NoError(t, os.Mkdir(mp, 0o700))
				require.NoError(t, unix.Mount(node, mp, fc.name, 0, s.MountData()), "mount %s beside the others", n)
				t.Cleanup(func() { _ = unix.Unmount(mp, unix.MNT_DETACH) })
				mps = append(mps, mp)
			}
			require.NoError(t, os.WriteFile(filepath.Join(mps[1], "f"), []byte("b\n"), 0o644))
			assert.NoFileExists(t, filepath.Join(mps[0], "f"), "the parent is apart from its snapshot")

			err := s.Deactivate(ctx, "b")
			assert.ErrorIs(t, err, ErrBusy, "mounted by the caller")
			assert.ErrorIs(t, err, thinpool.ErrBusy, "the pool's cause is kept")
			assert.True(t, active(t, s, DeviceName("b")))
			for _, mp := range mps {
				require.NoError(t, unix.Unmount(mp, 0))
			}
			for _, n := range []string{"a", "b"} {
				require.NoError(t, s.Deactivate(ctx, n))
				assert.False(t, active(t, s, DeviceName(n)), n)
			}
			require.NoError(t, s.Deactivate(ctx, "a"), "an inactive layer is fine")

			// The caller's data is there for the store's own mount.
			root, err := s.Get(ctx, "b", MountOptions{})
			require.NoError(t, err)
			data, err := os.ReadFile(filepath.Join(root, "f"))
			require.NoError(t, err)
			assert.Equal(t, "b\n", string(data))
			infos, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(root))
			require.NoError(t, err)
			require.Len(t, infos, 1)
			if fc.name == FilesystemXFS {
				assert.Contains(t, strings.Split(infos[0].VFSOptions, ","), "nouuid")
			}
			err = s.Deactivate(ctx, "b")
			assert.ErrorIs(t, err, ErrBusy, "a layer the store mounted must be Put first")
			assert.True(t, active(t, s, DeviceName("b")))
			require.NoError(t, s.Put(ctx, "b"))
		})
	}
}

// Labels are the caller's, durable, merged, and never the store's own
// state label; Layers lists the layers with them and nothing that is not a
// layer for the caller; SnapshotOf says what a layer was made from.
func TestLabelsLayersSnapshotOf(t *testing.T) {
	testenv.RequireDM(t)
	ctx := context.Background()
	o := testOptions(t)
	s, err := Open(ctx, o)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	assert.Empty(t, layerNames(t, s))
	require.NoError(t, s.Create(ctx, "a", "", 0))
	require.NoError(t, s.Create(ctx, "b", "a", 0))
	require.NoError(t, s.Create(ctx, "gone", "", 0))
	require.NoError(t, s.SetLabels(ctx, "a", map[string]string{"k": "v", "x": "1"}))
	require.NoError(t, s.SetLabels(ctx, "a", map[string]string{"x": "", "y": "2"}), "merged; an empty value removes")
	err = s.SetLabels(ctx, "a", map[string]string{LabelState: "", "z": "3"})
	assert.ErrorIs(t, err, ErrInvalidOptions, "the state label is the store's")
	assert.ErrorIs(t, s.SetLabels(ctx, "nope", map[string]string{"k": "v"}), ErrNotFound)
	assert.ErrorIs(t, s.SetLabels(ctx, "../x", map[string]string{"k": "v"}), ErrInvalidName)

	// Not layers for the caller: one half-made, one removed but whose
	// device is not deleted yet.
	_, err = s.Pool().Snapshot(ctx, DeviceName("half"), BaseDevice, 0, thinpool.WithLabels(stateLabels(StateIncomplete)))
	require.NoError(t, err)
	resume := pauseWorker(s)
	require.NoError(t, s.Remove(ctx, "gone"))
	assert.ElementsMatch(t, []string{"a", "b"}, layerNames(t, s))
	for _, n := range []string{"half", "gone", "nope"} {
		_, err := s.Activate(ctx, n)
		assert.ErrorIs(t, err, ErrNotFound, n)
		assert.ErrorIs(t, s.Deactivate(ctx, n), ErrNotFound, n)
		assert.ErrorIs(t, s.SetLabels(ctx, n, map[string]string{"k": "v"}), ErrNotFound, n)
		_, err = s.Get(ctx, n, MountOptions{})
		assert.ErrorIs(t, err, ErrNotFound, n)
		mounted, _ := s.Mounted(n)
		assert.False(t, mounted, n)
	}
	// What a tool listing the pool sees: layer devices by name, not the
	// base or the device of a removed layer.
	devs, err := s.Pool().List()
	require.NoError(t, err)
	var seen []string
	for _, d := range devs {
		if n, ok := LayerOf(d.Name); ok {
			seen = append(seen, n)
		}
	}
	assert.ElementsMatch(t, []string{"a", "b", "half"}, seen)
	resume()
	require.NoError(t, s.Remove(ctx, "half"))

	created, ok := s.SnapshotOf("b", "a")
	assert.True(t, ok)
	assert.False(t, created.IsZero())
	_, ok = s.SnapshotOf("a", "")
	assert.True(t, ok, "a was made from the base")
	_, ok = s.SnapshotOf("b", "")
	assert.False(t, ok, "b was made from a, not the base")
	_, ok = s.SnapshotOf("a", "b")
	assert.False(t, ok)
	_, ok = s.SnapshotOf("nope", "")
	assert.False(t, ok)
	require.NoError(t, s.Close())

	// Durable: the next Open has them.
	s = openStore(t, o)
	layers, err := s.Layers()
	require.NoError(t, err)
	require.Len(t, layers, 2)
	for _, l := range layers {
		want := map[string]string{"k": "v", "y": "2"}
		if l.Name == "b" {
			want = nil
		}
		got := l.Device.Labels
		if len(got) == 0 {
			got = nil
		}
		assert.Equal(t, want, got, l.Name)
	}
	require.NoError(t, s.Close())
	_, err = s.Layers()
	assert.ErrorIs(t, err, ErrClosed)
	_, err = s.Activate(ctx, "a")
	assert.ErrorIs(t, err, ErrClosed)
	assert.ErrorIs(t, s.Deactivate(ctx, "a"), ErrClosed)
	assert.ErrorIs(t, s.SetLabels(ctx, "a", map[string]string{"k": "v"}), ErrClosed)
	_, ok = s.SnapshotOf("b", "a")
	assert.False(t, ok, "a closed store knows nothing")
}
