// Package testenv decides whether a test that needs privileges or kernel
// features can run here. It is for this module's tests only.
//
// A test that needs root or the device-mapper calls RequireRoot or RequireDM
// first. On a machine that lacks them the test is skipped with the reason. When
// the environment variable DMTHIN_REQUIRE_DM=1 is set (the test VM sets it, and
// so does a native run of hack/vm.sh test), a missing feature fails the test
// instead: a run that was meant to exercise the kernel can never pass by
// skipping. The same holds for the programs a test runs (RequireTool): the
// test VM has them all, so a missing one there is a harness defect to see,
// not a reason to skip.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Required reports whether missing features must fail rather than skip.
func Required() bool { return os.Getenv("DMTHIN_REQUIRE_DM") == "1" }

func missing(t testing.TB, reason string) {
	t.Helper()
	if Required() {
		t.Fatalf("DMTHIN_REQUIRE_DM=1 but %s", reason)
	}
	t.Skipf("skipped: %s (run through hack/vm.sh test to exercise it)", reason)
}

// RequireRoot skips (or fails, see Required) unless running as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		missing(t, "test needs root")
	}
}

// RequireDM skips (or fails) unless /dev/mapper/control answers a DM_VERSION
// ioctl and dm-thin-pool is available.
func RequireDM(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	if err := DMUsable(); err != nil {
		missing(t, err.Error())
	}
}

// DMUsable returns nil when the device-mapper control node answers and the
// kernel lists the thin-pool target (or can load it).
func DMUsable() error {
	fd, err := unix.Open("/dev/mapper/control", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("no usable device-mapper: open /dev/mapper/control: %w", err)
	}
	defer unix.Close(fd)
	data, err := os.ReadFile("/proc/devices")
	if err != nil {
		return fmt.Errorf("read /proc/devices: %w", err)
	}
	if !strings.Contains(string(data), "device-mapper") {
		return fmt.Errorf("no usable device-mapper: not listed in /proc/devices")
	}
	return nil
}

// sbinDirs are searched after PATH: a non-root shell's PATH often lacks them,
// where mkfs.ext4, losetup and dmsetup live.
var sbinDirs = []string{"/usr/local/sbin", "/usr/sbin", "/sbin"}

// RequireTool returns the path of the program name (found in PATH, then in
// the sbin directories). When it is not installed the test is skipped, or
// fails under DMTHIN_REQUIRE_DM=1 (see Required): a kernel run never skips
// a test for a missing tool.
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := LookTool(name)
	if err != nil {
		missing(t, err.Error())
	}
	return p
}

// LookTool finds the program name in PATH, then in the sbin directories.
func LookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	if !strings.Contains(name, "/") {
		for _, dir := range sbinDirs {
			p := filepath.Join(dir, name)
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
				return p, nil
			}
		}
	}
	return "", fmt.Errorf("tool %s is not installed (searched PATH and %s)", name, strings.Join(sbinDirs, ":"))
}

// Suffix is appended to every device and file name a test creates, so that
// leftovers of a crashed test run are easy to find and remove.
func Suffix(t testing.TB) string {
	return fmt.Sprintf("dmthintest-%d", os.Getpid())
}
