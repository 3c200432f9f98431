package graphdriver

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	archive "github.com/moby/go-archive"
	"github.com/moby/sys/user"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/internal/changes"
	"github.com/dmthin/dmthin/internal/tarapply"
)

// The functions here compare and change plain directory trees: the driver
// calls them on the rootfs directories of mounted layers. parentRoot "" is
// an empty tree (a layer made from the base device).

// changesDirs lists the paths that differ in layerRoot from parentRoot:
// added, modified (content, mode, owner, times, capabilities) or deleted.
// A directory holding a change is listed as modified too.
func changesDirs(layerRoot, parentRoot string) ([]archive.Change, error) {
	changes, err := archive.ChangesDirs(layerRoot, parentRoot)
	if err != nil {
		return nil, fmt.Errorf("graphdriver: compare %s with %s: %w", layerRoot, orEmpty(parentRoot), err)
	}
	return changes, nil
}

// changesSince lists what changed in layerRoot, a snapshot of parentRoot
// taken at created, reading parentRoot only where the layer's ctimes say
// something changed (see internal/changes).
func changesSince(layerRoot, parentRoot string, created time.Time) ([]archive.Change, error) {
	list, err := changes.Since(layerRoot, parentRoot, created)
	if err != nil {
		return nil, fmt.Errorf("graphdriver: compare %s with %s: %w", layerRoot, orEmpty(parentRoot), err)
	}
	return list, nil
}

// exportDiff is a tar stream of the changes in layerRoot: added and
// modified entries with their contents, and a ".wh.NAME" entry for every
// deleted NAME, as OCI image layers carry them. The stream is produced
// while it is read; layerRoot must stay mounted until it is closed.
func exportDiff(layerRoot string, changes []archive.Change) (io.ReadCloser, error) {
	rc, err := archive.ExportChanges(layerRoot, changes, user.IdentityMapping{})
	if err != nil {
		return nil, fmt.Errorf("graphdriver: export changes of %s: %w", layerRoot, err)
	}
	return rc, nil
}

// diffSize is the number of bytes of file contents the changes in
// layerRoot hold: the sizes of added and modified regular files, a
// hard-linked inode counted once. That is what applying exportDiff's
// stream returns. (archive's ChangesSize also counts the length of symlink
// targets, which the stream does not carry as contents, so the two would
// disagree.)
func diffSize(layerRoot string, changes []archive.Change) (int64, error) {
	var size int64
	seen := map[uint64]bool{}
	for _, c := range changes {
		if c.Kind == archive.ChangeDelete {
			continue
		}
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(layerRoot, c.Path), &st); err != nil {
			return 0, fmt.Errorf("graphdriver: diff size of %s: %w", layerRoot, &os.PathError{Op: "lstat", Path: c.Path, Err: err})
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			continue
		}
		if st.Nlink > 1 {
			if seen[st.Ino] {
				continue
			}
			seen[st.Ino] = true
		}
		size += st.Size
	}
	return size, nil
}

// applyDiffDir applies an uncompressed layer tar to root: entries are
// created or replace what is there, ".wh.NAME" deletes NAME, and
// ".wh..wh..opq" empties its directory of what the layer below had. Paths
// are resolved inside root; entries that would escape it are refused. It
// returns the bytes of file contents in the stream. One syncfs makes the
// layer durable before it returns.
//
// internal/tarapply does the work: it sets every mode explicitly, so the
// process umask is neither needed nor changed.
func applyDiffDir(root string, diff io.Reader) (int64, error) {
	n, err := tarapply.Apply(root, diff, tarapply.Options{Sync: true})
	if err != nil {
		return n, fmt.Errorf("graphdriver: apply diff to %s: %w", root, err)
	}
	return n, nil
}

func orEmpty(dir string) string {
	if dir == "" {
		return "an empty tree"
	}
	return dir
}
