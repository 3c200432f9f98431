package devmapper

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

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

// NodeOf makes the block node of the device info describes (as Info
// returned it), without asking the kernel again, and returns its path.
func (c *Client) NodeOf(info Info) (string, error) {
	return c.NodePath(info.Name), c.makeNode(info.Name, info.Dev)
}

// PruneNodes removes block nodes in NodeDir that name no existing
// device-mapper device: the nodes left by deferred removes that completed.
// Only block nodes with the device-mapper major are touched; symlinks
// (udev's) and other files are left alone.
func (c *Client) PruneNodes() error {
	live, err := c.List()
	if err != nil {
		return err
	}
	major, err := dmMajor()
	if err != nil {
		return err
	}
	names := make(map[string]bool, len(live))
	for _, l := range live {
		names[l.Name] = true
	}
	entries, err := os.ReadDir(c.nodeDir)
	if err != nil {
		return fmt.Errorf("devmapper: prune nodes: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if names[e.Name()] || e.Type()&os.ModeType != os.ModeDevice {
			continue
		}
		p := filepath.Join(c.nodeDir, e.Name())
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil || unix.Major(st.Rdev) != major {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// dmMajor reads the device-mapper block major from /proc/devices.
func dmMajor() (uint32, error) {
	data, err := os.ReadFile("/proc/devices")
	if err != nil {
		return 0, fmt.Errorf("devmapper: %w", err)
	}
	return parseDMMajor(string(data))
}

// parseDMMajor finds device-mapper among the block devices of a
// /proc/devices text (a character device of that name would not count).
func parseDMMajor(data string) (uint32, error) {
	_, block, _ := strings.Cut(data, "Block devices:")
	for _, line := range strings.Split(block, "\n") {
		num, name, ok := strings.Cut(strings.TrimSpace(line), " ")
		if ok && name == "device-mapper" {
			v, err := strconv.ParseUint(num, 10, 32)
			if err != nil {
				return 0, fmt.Errorf("devmapper: /proc/devices: %w", err)
			}
			return uint32(v), nil
		}
	}
	return 0, fmt.Errorf("%w: no device-mapper block major in /proc/devices", ErrUnsupported)
}
