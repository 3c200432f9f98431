package thinpool

// A process that has the pool open holds the store's lock until its last
// file is closed, which is when its last thread has exited. A process
// killed while one of the pool's devices was suspended (between the suspend
// and the resume of a reload, or of a snapshot's origin) may never get
// there: a thread of it that waits for I/O on that device (an fsync in a
// container's filesystem) sleeps uninterruptibly until the device resumes,
// and nobody is left to resume it. Open would then refuse the pool for ever
// (ErrLocked), and only a person with dmsetup could help.
//
// So when Open meets a held lock, it looks at who holds it (/proc/locks).
// A holder that is dying (SIGKILL pending, or exited and waiting for its
// last threads) will never resume anything; Open resumes the pool's
// suspended devices for it, from what a copy of the store names, and waits
// a bounded time for the lock to be released. A live holder is left alone:
// Open fails with ErrLocked as before.

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/dmthin/dmthin/devmapper"
	"github.com/dmthin/dmthin/internal/proc"
	"github.com/dmthin/dmthin/internal/retry"
)

// deadOwnerWait bounds how long Open waits for a dying holder to release
// the store once its devices are resumed.
const deadOwnerWait = 30 * time.Second

// openStoreSettling opens the store at path; when a dying process holds
// it, it resumes the devices that process left suspended and waits for the
// lock.
func openStoreSettling(ctx context.Context, path string, dm func() (*devmapper.Client, error), log logrus.FieldLogger) (*store, error) {
	st, err := openStore(path)
	if !errors.Is(err, ErrLocked) {
		return st, err
	}
	holders, herr := proc.LockHolders(path)
	dying := false
	for _, pid := range holders {
		dying = dying || proc.Dying(pid)
	}
	if herr != nil || !dying {
		return nil, errors.Join(err, herr)
	}
	log = log.WithField("holder", holders)
	log.Warn("the store is held by a process that was killed: resuming the devices it left suspended")
	c, derr := dm()
	if derr != nil {
		return nil, errors.Join(err, derr)
	}
	resumed, rerr := resumeLeftSuspended(path, c, log)
	if rerr != nil {
		return nil, errors.Join(err, rerr)
	}
	err = retry.Do(ctx, retry.Policy{Base: 20 * time.Millisecond, Max: 500 * time.Millisecond, Within: deadOwnerWait}, retry.On(ErrLocked),
		func() error {
			st, err = openStore(path)
			return err
		})
	if err != nil {
		return nil, fmt.Errorf("%w (resumed %v for the dying holder %v; it has not exited within %s)", err, resumed, holders, deadOwnerWait)
	}
	log.WithField("resumed", resumed).Info("the killed process released the store")
	return st, nil
}

// resumeLeftSuspended resumes every suspended device-mapper device that is
// the pool's or one of its thin devices, as a copy of the store at path
// names them. It returns the names it resumed.
func resumeLeftSuspended(path string, c *devmapper.Client, log logrus.FieldLogger) ([]string, error) {
	cp, drop, err := copyStore(path, filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	prefix, perr := cp.metaString(keyPrefix)
	pool, nerr := cp.metaString(keyPoolName)
	if err := errors.Join(perr, nerr, drop()); err != nil {
		return nil, err
	}
	if prefix == "" {
		return nil, nil // no pool made yet
	}
	suspended, err := suspendedDevices(c, pool, prefix)
	if err != nil {
		return nil, err
	}
	var resumed []string
	var errs []error
	for _, name := range suspended {
		if _, err := c.Resume(name); err != nil {
			errs = append(errs, fmt.Errorf("thinpool: resume %s: %w", name, err))
			continue
		}
		log.WithField("dm", name).Info("resumed a device a killed process left suspended")
		resumed = append(resumed, name)
	}
	return resumed, errors.Join(errs...)
}
