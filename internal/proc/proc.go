// Package proc reads what the kernel's /proc says of other processes that
// the library must decide about: who holds a lock on a file (/proc/locks)
// and whether a process is dying (a SIGKILL pending, or exited and waiting
// for its last threads), so will never run its own code again.
//
// It is not for: managing processes, or anything /proc says of this one.
package proc

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// LockHolders returns the processes that hold a lock on the file at path,
// from /proc/locks. A holder in another pid namespace is not listed.
func LockHolders(path string) ([]int, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, fmt.Errorf("proc: %s: %w", path, err)
	}
	f, err := os.Open("/proc/locks")
	if err != nil {
		return nil, fmt.Errorf("proc: %w", err)
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

// Dying reports whether process pid will never run its own code
// again: it exited (a zombie, or a leader waiting for its threads) or has a
// SIGKILL pending in one of its threads.
func Dying(pid int) bool {
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
