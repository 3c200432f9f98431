package devmapper

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// makeNode makes (or fixes) the block node NodeDir/name for dev. A node or
// udev symlink that already resolves to dev is left alone.
func (c *Client) makeNode(name string, dev Dev) error {
	if dev.IsZero() {
		return nil
	}
	path := c.NodePath(name)
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err == nil {
		if st.Mode&unix.S_IFMT == unix.S_IFBLK && DecodeDev(st.Rdev) == dev {
			return nil
		}
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("devmapper: replace stale node %s: %w", path, err)
		}
	}
	if err := os.MkdirAll(c.nodeDir, 0o755); err != nil {
		return fmt.Errorf("devmapper: node directory: %w", err)
	}
	if err := unix.Mknod(path, unix.S_IFBLK|0o600, int(dev.Encode())); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("devmapper: mknod %s %s: %w", path, dev, err)
	}
	return nil
}

// removeNode removes NodeDir/name if it is there.
func (c *Client) removeNode(name string) error {
	err := os.Remove(c.NodePath(name))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("devmapper: remove node: %w", err)
	}
	return nil
}

// EnsureNode makes the block node of an existing device (after a restart,
// or when another process created the device).
func (c *Client) EnsureNode(name string) (string, error) {
	info, err := c.Info(name)
	if err != nil {
		return "", err
	}
	return c.NodePath(name), c.makeNode(name, info.Dev)
}

// PruneNodes removes block nodes in NodeDir that name no existing
// device-mapper device: the nodes left by deferred removes that completed. Only block nodes with the device-mapper major are
// touched; symlinks (udev's) and other files are left alone.
func (c *Client) PruneNodes() error {
	live, err := c.List()
	if err != nil {
		return err
	}
	names := make(map[string]bool, len(live))
	var dmMajor uint32
	for _, l := range live {
		names[l.Name] = true
		dmMajor = l.Dev.Major
	}
	entries, err := os.ReadDir(c.nodeDir)
	if err != nil {
		return fmt.Errorf("devmapper: prune nodes: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if names[e.Name()] || e.Type()&os.ModeDevice == 0 || e.Type()&os.ModeCharDevice != 0 {
			continue
		}
		var st unix.Stat_t
		p := filepath.Join(c.nodeDir, e.Name())
		if err := unix.Lstat(p, &st); err != nil {
			continue
		}
		if dmMajor != 0 && unix.Major(st.Rdev) != dmMajor {
			continue
		}
		if dmMajor == 0 && !isDMMajor(unix.Major(st.Rdev)) {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// isDMMajor checks /proc/devices for the device-mapper block major.
func isDMMajor(major uint32) bool {
	data, err := os.ReadFile("/proc/devices")
	if err != nil {
		return false
	}
	var m uint32
	var name string
	block := false
	for _, line := range splitLines(string(data)) {
		if line == "Block devices:" {
			block = true
			continue
		}
		if !block {
			continue
		}
		if n, _ := fmt.Sscanf(line, "%d %s", &m, &name); n == 2 && name == "device-mapper" {
			return m == major
		}
	}
	return false
}

func splitLines(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	if start < len(s) {
		out = append(out, s[start:])
	}
	return out
}
