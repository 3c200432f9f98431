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
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/devmapper"
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
	holders, herr := lockHolders(path)
	dying := false
	for _, pid := range holders {
		dying = dying || processDying(pid)
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

// lockHolders returns the processes that hold a lock on the file at path,
// from /proc/locks. A holder in another pid namespace is not listed.
func lockHolders(path string) ([]int, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, fmt.Errorf("thinpool: %s: %w", path, err)
	}
	f, err := os.Open("/proc/locks")
	if err != nil {
		return nil, fmt.Errorf("thinpool: %w", err)
	}
	defer f.Close()
	return parseLockHolders(f, unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
}

// parseLockHolders reads /proc/locks lines such as
// "1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF" (a blocked waiter's
// line has "->" after the number) and returns the pids holding a lock on
// the inode ino of device maj:min.
func parseLockHolders(r io.Reader, maj, min uint32, ino uint64) ([]int, error) {
	want := fmt.Sprintf("%02x:%02x:%d", maj, min, ino)
	var pids []int
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[1] == "->" {
			continue // waiting, not holding
		}
		if len(f) < 6 || f[5] != want {
			continue
		}
		pid, err := strconv.Atoi(f[4])
		if err != nil || pid <= 0 {
			continue
		}
		pids = append(pids, pid)
	}
	return pids, sc.Err()
}

// processDying reports whether process pid will never run its own code
// again: it exited (a zombie, or a leader waiting for its threads) or has a
// SIGKILL pending in one of its threads.
func processDying(pid int) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return false
	}
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, t.Name()))
		if err == nil && statusDying(string(b)) {
			return true
		}
	}
	return false
}

// sigkillBit is SIGKILL's bit in the signal masks of /proc/PID/status.
const sigkillBit = 1 << (unix.SIGKILL - 1)

// statusDying reads a /proc/PID/status text: zombie or dead, or SIGKILL
// pending for the thread (SigPnd) or the process (ShdPnd).
func statusDying(status string) bool {
	for _, line := range strings.Split(status, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "State":
			if strings.HasPrefix(v, "Z") || strings.HasPrefix(v, "X") {
				return true
			}
		case "SigPnd", "ShdPnd":
			if m, err := strconv.ParseUint(v, 16, 64); err == nil && m&sigkillBit != 0 {
				return true
			}
		}
	}
	return false
}
