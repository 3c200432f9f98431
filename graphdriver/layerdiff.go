package graphdriver

import (
	"errors"
	"io"
	"sync"

	archive "github.com/moby/go-archive"
)

// The diff methods mount the layer and its parent (Get), compare or change
// their root directories (diff.go), and release them (Put). parent "" means
// the base device, whose root is empty.

// mountPair mounts id and, unless parent is "", parent; release puts what
// was got.
func (d *Driver) mountPair(id, parent string) (layerRoot, parentRoot string, release func() error, err error) {
	layerRoot, err = d.Get(id, "")
	if err != nil {
		return "", "", nil, err
	}
	if parent == "" {
		return layerRoot, "", func() error { return d.Put(id) }, nil
	}
	parentRoot, err = d.Get(parent, "")
	if err != nil {
		return "", "", nil, errors.Join(err, d.Put(id))
	}
	return layerRoot, parentRoot, func() error { return errors.Join(d.Put(parent), d.Put(id)) }, nil
}

// changes lists what layer id changed relative to parent, both mounted at
// the roots given. When id is a snapshot of parent, its device's creation
// time lets internal/changes skip what the layer did not touch (parent
// layers do not change once they have children); for any other pair both
// trees are walked in full.
func (d *Driver) changes(id, parent, layerRoot, parentRoot string) ([]archive.Change, error) {
	if created, ok := d.store.SnapshotOf(id, parent); ok {
		return changesSince(layerRoot, parentRoot, created)
	}
	return changesDirs(layerRoot, parentRoot)
}

// Diff returns a tar stream of what layer id changed relative to parent:
// added and modified files, directories, links and devices, and a
// ".wh.NAME" whiteout for each deleted NAME. Both layers stay mounted until
// the stream is closed.
func (d *Driver) Diff(id, parent string) (io.ReadCloser, error) {
	layerRoot, parentRoot, release, err := d.mountPair(id, parent)
	if err != nil {
		return nil, err
	}
	changes, err := d.changes(id, parent, layerRoot, parentRoot)
	if err != nil {
		return nil, errors.Join(err, release())
	}
	rc, err := exportDiff(layerRoot, changes)
	if err != nil {
		return nil, errors.Join(err, release())
	}
	return &releasingReader{ReadCloser: rc, release: release}, nil
}

// Changes lists the paths layer id added, modified or deleted relative to
// parent.
func (d *Driver) Changes(id, parent string) (_ []archive.Change, err error) {
	layerRoot, parentRoot, release, err := d.mountPair(id, parent)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, release()) }()
	return d.changes(id, parent, layerRoot, parentRoot)
}

// ApplyDiff applies an uncompressed layer tar (with ".wh." whiteouts and
// ".wh..wh..opq" opaque directories) to layer id and returns the bytes of
// file contents it held. parent is not used: the tar says what to change.
func (d *Driver) ApplyDiff(id, parent string, diff io.Reader) (_ int64, err error) {
	root, err := d.Get(id, "")
	if err != nil {
		return 0, err
	}
	defer func() { err = errors.Join(err, d.Put(id)) }()
	return applyDiffDir(root, diff)
}

// DiffSize is the number of bytes of file contents layer id changed
// relative to parent: what Diff's stream carries, and what ApplyDiff of it
// returns.
func (d *Driver) DiffSize(id, parent string) (_ int64, err error) {
	layerRoot, parentRoot, release, err := d.mountPair(id, parent)
	if err != nil {
		return 0, err
	}
	defer func() { err = errors.Join(err, release()) }()
	changes, err := d.changes(id, parent, layerRoot, parentRoot)
	if err != nil {
		return 0, err
	}
	return diffSize(layerRoot, changes)
}

// releasingReader puts the layers a Diff mounted when the stream is closed.
type releasingReader struct {
	io.ReadCloser
	once    sync.Once
	release func() error
}

func (r *releasingReader) Close() error {
	err := r.ReadCloser.Close()
	r.once.Do(func() { err = errors.Join(err, r.release()) })
	return err
}
