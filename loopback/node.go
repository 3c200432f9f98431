package loopback

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

const (
	devDir      = "/dev"
	sysBlockDir = "/sys/block"
	controlPath = "/dev/loop-control"
	// loopMajor is LOOP_MAJOR, used for a missing node only when sysfs
	// cannot say.
	loopMajor = 7
)

// parseLoopName returns N for a block device name "loopN".
func parseLoopName(name string) (int, bool) {
	digits, ok := strings.CutPrefix(name, "loop")
	if !ok || digits == "" || (len(digits) > 1 && digits[0] == '0') {
		return 0, false
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.Atoi(digits)
	if err != nil || n > 1<<20 {
		return 0, false
	}
	return n, true
}

// parseDevNumber parses the "MAJ:MIN\n" of a sysfs dev attribute.
func parseDevNumber(s string) (major, minor uint32, err error) {
	majS, minS, ok := strings.Cut(strings.TrimSpace(s), ":")
	if !ok {
		return 0, 0, fmt.Errorf("device number %q: want MAJ:MIN", s)
	}
	maj, err := strconv.ParseUint(majS, 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("device number %q: major: %w", s, err)
	}
	min, err := strconv.ParseUint(minS, 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("device number %q: minor: %w", s, err)
	}
	return uint32(maj), uint32(min), nil
}

// sysfsDev returns the device number sysfs gives for loop device n.
func sysfsDev(n int) (major, minor uint32, err error) {
	p := filepath.Join(sysBlockDir, "loop"+strconv.Itoa(n), "dev")
	data, err := os.ReadFile(p)
	if err != nil {
		return 0, 0, err
	}
	return parseDevNumber(string(data))
}

// nodeDev is the device number of /dev/loopN: sysfs's, or LOOP_MAJOR:N
// (right unless the loop driver was loaded with max_part) when sysfs
// cannot tell.
func nodeDev(n int) (major, minor uint32) {
	if maj, min, err := sysfsDev(n); err == nil {
		return maj, min
	}
	return loopMajor, uint32(n)
}

// ensureNode returns dir/loopN, making the block node if it is missing (no
// udev, a static /dev). A path that exists but is not a block device gives
// ErrNotLoop.
func ensureNode(dir string, n int) (string, error) {
	p := filepath.Join(dir, "loop"+strconv.Itoa(n))
	var st unix.Stat_t
	err := unix.Stat(p, &st)
	if err == nil {
		if st.Mode&unix.S_IFMT != unix.S_IFBLK {
			return "", &Error{Op: "stat", Path: p, Err: fmt.Errorf("%w: not a block device", ErrNotLoop)}
		}
		return p, nil
	}
	if !errors.Is(err, unix.ENOENT) {
		return "", &Error{Op: "stat", Path: p, Err: err}
	}
	maj, min := nodeDev(n)
	err = unix.Mknod(p, unix.S_IFBLK|0o600, int(unix.Mkdev(maj, min)))
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return "", &Error{Op: "mknod", Path: p, Err: err}
	}
	return p, nil
}

// listLoops returns the numbers of the loop devices the kernel has, in
// ascending order; with bound set, only those bound to a file (sysfs shows
// their loop/ directory only then). Without sysfs it falls back to the
// nodes in /dev.
func listLoops(bound bool) ([]int, error) {
	entries, err := os.ReadDir(sysBlockDir)
	if err != nil {
		return listLoopNodes()
	}
	var nums []int
	for _, e := range entries {
		n, ok := parseLoopName(e.Name())
		if !ok {
			continue
		}
		if bound {
			if _, err := os.Stat(filepath.Join(sysBlockDir, e.Name(), "loop")); err != nil {
				continue
			}
		}
		nums = append(nums, n)
	}
	sort.Ints(nums)
	return nums, nil
}

func listLoopNodes() ([]int, error) {
	entries, err := os.ReadDir(devDir)
	if err != nil {
		return nil, &Error{Op: "readdir", Path: devDir, Err: err}
	}
	var nums []int
	for _, e := range entries {
		if n, ok := parseLoopName(e.Name()); ok && e.Type()&os.ModeDevice != 0 {
			nums = append(nums, n)
		}
	}
	sort.Ints(nums)
	return nums, nil
}
