package graphdriver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/ext4"
	"github.com/dmthin/dmthin/thinpool"
)

// mount is a layer mounted at its mount point. refs counts the Gets not yet
// matched by a Put; 0 for a mount adopted from an earlier process.
type mount struct {
	refs int
}

func (d *Driver) mountOf(id string) *mount {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.mounts[id]
}

func (d *Driver) setMount(id string, m *mount) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if m == nil {
		delete(d.mounts, id)
	} else {
		d.mounts[id] = m
	}
}

func (d *Driver) mountedIDs() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	ids := make([]string, 0, len(d.mounts))
	for id := range d.mounts {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// adoptMounts takes over the layers a previous process left mounted under
// mnt/ (it crashed, or was restarted without Cleanup): they count as
// mounted with no references.
func (d *Driver) adoptMounts() error {
	mounts, err := mountsUnder(d.mntDir())
	if err != nil {
		return err
	}
	for id := range mounts {
		if ValidateID(id) != nil {
			continue
		}
		d.mounts[id] = &mount{}
		d.log.WithField("id", id).Info("adopted a layer left mounted by an earlier run")
	}
	return nil
}

// Get mounts layer id (on first use) and returns the path of its root: a
// directory that holds only what was put in it, owned by root with mode 0755
// when fresh. Each Get needs a Put. mountLabel, when not empty, is the
// SELinux context of the files (used on the first Get only, which mounts;
// ignored when SELinux is not enabled).
func (d *Driver) Get(id, mountLabel string) (string, error) {
	release, err := d.lockLayer(id)
	if err != nil {
		return "", err
	}
	defer release()
	mp := d.mountPoint(id)
	root := filepath.Join(mp, rootfsDir)
	if m := d.mountOf(id); m != nil {
		m.refs++
		return root, nil
	}
	ctx := context.Background()
	name := deviceName(id)
	if dev, err := d.pool.Lookup(name); errors.Is(err, thinpool.ErrNotFound) || (err == nil && deleting(dev)) {
		return "", fmt.Errorf("%w: %q", ErrNotFound, id)
	} else if err != nil {
		return "", fmt.Errorf("graphdriver: get %q: %w", id, err)
	}
	node, err := d.pool.Activate(ctx, name)
	if err != nil {
		return "", fmt.Errorf("graphdriver: get %q: %w", id, err)
	}
	if !d.selinux {
		mountLabel = "" // as Docker does: no context= where SELinux is off
	}
	flags, data := mountOptions(d.cfg.MountOptions, mountLabel)
	if err := mountDevice(node, mp, d.cfg.Filesystem, flags, data); err != nil {
		return "", errors.Join(fmt.Errorf("graphdriver: get %q: %w", id, err), removeIfEmpty(mp), d.pool.Deactivate(ctx, name, false))
	}
	if fi, err := os.Lstat(root); err != nil || !fi.IsDir() {
		err = fmt.Errorf("graphdriver: get %q: the layer's filesystem has no %s directory (not made by this driver?)", id, rootfsDir)
		return "", errors.Join(err, unmount(mp, false), removeIfEmpty(mp), d.pool.Deactivate(ctx, name, false))
	}
	d.setMount(id, &mount{refs: 1})
	d.log.WithFields(logrus.Fields{"id": id, "device": node}).Debug("layer mounted")
	return root, nil
}

// Put releases a Get. The last one unmounts the layer and deactivates its
// device (deferred, when dm.use_deferred_removal is on and the device is
// still held by someone else).
func (d *Driver) Put(id string) error {
	release, err := d.lockLayer(id)
	if err != nil {
		return err
	}
	defer release()
	m := d.mountOf(id)
	if m == nil {
		return fmt.Errorf("%w: %q", ErrNotMounted, id)
	}
	if m.refs > 1 {
		m.refs--
		return nil
	}
	if err := d.unmountLocked(id, false); err != nil {
		return fmt.Errorf("graphdriver: put %q: %w", id, err)
	}
	err = d.pool.Deactivate(context.Background(), deviceName(id), d.cfg.DeferredRemoval)
	if errors.Is(err, thinpool.ErrBusy) {
		return fmt.Errorf("%w: put %q: unmounted, but the device is held elsewhere: %w", ErrBusy, id, err)
	}
	if err != nil {
		return fmt.Errorf("graphdriver: put %q: %w", id, err)
	}
	return nil
}

// unmountLocked unmounts layer id and forgets its mount. detachIfBusy: a
// mount still busy after the retries is detached lazily (the kernel
// finishes when its last user leaves).
func (d *Driver) unmountLocked(id string, detachIfBusy bool) error {
	mp := d.mountPoint(id)
	if err := unmount(mp, detachIfBusy); err != nil {
		return err
	}
	d.setMount(id, nil)
	// mnt/ holds the mount points of mounted layers only.
	if err := os.Remove(mp); err != nil && !errors.Is(err, os.ErrNotExist) {
		d.log.WithError(err).WithField("id", id).Debug("mount point left behind")
	}
	return nil
}

// growLocked grows the filesystem of layer id (not mounted; its device was
// just made bigger) to its device's size. The resize is done online, with
// the filesystem mounted at the layer's mount point: resize2fs refuses to
// grow an unmounted filesystem that was mounted since its last full check,
// and a check costs more than a mount.
func (d *Driver) growLocked(ctx context.Context, id, name string) error {
	node, err := d.pool.Activate(ctx, name)
	if err != nil {
		return err
	}
	mp := d.mountPoint(id)
	if err := mountDevice(node, mp, d.cfg.Filesystem, 0, ""); err != nil {
		return errors.Join(err, d.pool.Deactivate(ctx, name, false))
	}
	gerr := ext4.Grow(ctx, node)
	uerr := unmount(mp, false)
	if uerr == nil {
		uerr = os.Remove(mp)
	}
	return errors.Join(gerr, uerr, d.pool.Deactivate(ctx, name, false))
}

// removeIfEmpty removes an empty mount point directory; one that is not
// there is fine.
func removeIfEmpty(dir string) error {
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// mountDevice mounts the block device node at mp, making mp if needed.
func mountDevice(node, mp, fstype string, flags uintptr, data string) error {
	if err := os.MkdirAll(mp, 0o700); err != nil {
		return fmt.Errorf("mount point: %w", err)
	}
	if err := unix.Mount(node, mp, fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s on %s (%s, %q): %w", node, mp, fstype, data, &os.PathError{Op: "mount", Path: mp, Err: err})
	}
	return nil
}

// unmount unmounts mp, retrying a few times while it is busy (a process
// leaving it). A mount point that is not mounted is fine.
func unmount(mp string, detachIfBusy bool) error {
	var err error
	for i := 0; i < 6; i++ {
		err = unix.Unmount(mp, 0)
		if err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) {
			break
		}
		time.Sleep(time.Duration(10<<i) * time.Millisecond)
	}
	if errors.Is(err, unix.EBUSY) && detachIfBusy {
		if derr := unix.Unmount(mp, unix.MNT_DETACH); derr == nil || errors.Is(derr, unix.EINVAL) {
			return nil
		}
	}
	perr := &os.PathError{Op: "unmount", Path: mp, Err: err}
	if errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("%w: %w", ErrBusy, perr)
	}
	return perr
}
