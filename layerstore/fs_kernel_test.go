package layerstore

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/docker/go-units"
	"github.com/moby/sys/mountinfo"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/dmthin/dmthin/xfs"
)

// fsCase is one filesystem the kernel tests run over, with the smallest
// base it takes.
type fsCase struct {
	name string
	base int64
}

var testFilesystems = []fsCase{
	{FilesystemExt4, 64 * units.MiB},
	{FilesystemXFS, xfs.MinSize},
}

func fsTotal(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Statfs_t
	require.NoError(t, unix.Statfs(path, &st))
	return int64(st.Blocks) * st.Bsize
}

// mountOf is the mountinfo entry of the mount point mp.
func mountOf(t *testing.T, mp string) *mountinfo.Info {
	t.Helper()
	infos, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(mp))
	require.NoError(t, err)
	require.Len(t, infos, 1, "%s is not a mount point", mp)
	return infos[0]
}

// The layer chain on each filesystem: a layer bigger than the base grows,
// parent and child are mounted side by side (xfs: nouuid), a bigger base
// size at Open grows the base, and the filesystem cannot change under a
// root.
func TestFilesystemChain(t *testing.T) {
	testenv.RequireDM(t)
	for _, fc := range testFilesystems {
		t.Run(fc.name, func(t *testing.T) {
			ctx := context.Background()
			o := testOptions(t)
			o.Filesystem, o.BaseSize = fc.name, fc.base
			zero := 0
			if fc.name == FilesystemXFS {
				o.XFSNoSpaceMaxRetries = &zero
			}
			s, err := Open(ctx, o)
			require.NoError(t, err)
			t.Cleanup(func() { _ = s.Close() })
			assert.Equal(t, fc.name, s.Filesystem())

			require.NoError(t, s.Create(ctx, "a", "", 0))
			root, err := s.Get(ctx, "a", MountOptions{})
			require.NoError(t, err)
			entries, err := os.ReadDir(root)
			require.NoError(t, err)
			assert.Empty(t, entries, "an empty root: no lost+found")
			m := mountOf(t, root)
			assert.Equal(t, fc.name, m.FSType)
			if fc.name == FilesystemXFS {
				assert.Contains(t, strings.Split(m.VFSOptions, ","), "nouuid")
				l, err := s.Lookup("a")
				require.NoError(t, err)
				n, err := xfs.NoSpaceMaxRetries(l.Device.Path)
				require.NoError(t, err)
				assert.Equal(t, 0, n, "XFSNoSpaceMaxRetries set after the mount")
			}
			require.NoError(t, os.WriteFile(filepath.Join(root, "f"), []byte("a\n"), 0o644))
			baseTotal := fsTotal(t, root)
			assert.LessOrEqual(t, baseTotal, fc.base)

			// A child twice the base's size, mounted beside its parent.
			require.NoError(t, s.Create(ctx, "b", "a", 2*fc.base))
			broot, err := s.Get(ctx, "b", MountOptions{})
			require.NoError(t, err)
			assert.Greater(t, fsTotal(t, broot), fc.base+fc.base/2, "the child's filesystem was grown to its size")
			b, err := os.ReadFile(filepath.Join(broot, "f"))
			require.NoError(t, err)
			assert.Equal(t, "a\n", string(b))
			require.NoError(t, os.WriteFile(filepath.Join(broot, "f"), []byte("b\n"), 0o644))
			b, err = os.ReadFile(filepath.Join(root, "f"))
			require.NoError(t, err)
			assert.Equal(t, "a\n", string(b), "the parent is unchanged")
			require.NoError(t, s.Put(ctx, "b"))
			require.NoError(t, s.Put(ctx, "a"))
			require.NoError(t, s.Close())

			// A bigger base at the next Open grows the base filesystem.
			// 128K more than twice: xfs_growfs leaves out a last
			// allocation group under 64 blocks, ext4 takes it.
			var steps []string
			o.StepHook = func(step string) { steps = append(steps, step) }
			o.BaseSize = 2*fc.base + 128*units.KiB
			s = openStore(t, o)
			assert.Contains(t, steps, StepBaseResized)
			assert.Contains(t, steps, StepBaseMounted, "mounted to grow")
			assert.Equal(t, o.BaseSize, s.BaseSize())
			require.NoError(t, s.Create(ctx, "c", "", 0))
			croot, err := s.Get(ctx, "c", MountOptions{})
			require.NoError(t, err)
			assert.Greater(t, fsTotal(t, croot), fc.base+fc.base/2, "a new layer has the grown base")
			require.NoError(t, s.Put(ctx, "c"))
			l, err := s.Lookup("a")
			require.NoError(t, err)
			assert.Equal(t, fc.base, l.Device.Size, "existing layers keep their size")
			require.NoError(t, s.Close())

			// Reopened with the same size: the base filesystem fills
			// what it can of its device, so it is not mounted to grow.
			steps = nil
			s = openStore(t, o)
			assert.NotContains(t, steps, StepBaseResized)
			assert.NotContains(t, steps, StepBaseMounted, "nothing to grow")
			require.NoError(t, s.Close())
			o.StepHook = nil

			// The filesystem belongs to the root.
			other := testFilesystems[0]
			if fc.name == other.name {
				other = testFilesystems[1]
			}
			o.Filesystem, o.BaseSize, o.XFSNoSpaceMaxRetries = other.name, 0, nil
			_, err = Open(ctx, o)
			require.ErrorIs(t, err, ErrInvalidOptions)
			assert.Contains(t, err.Error(), "Filesystem "+other.name+": the base device was formatted "+fc.name)
		})
	}
}
