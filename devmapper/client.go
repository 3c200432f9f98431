package devmapper

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// DefaultNodeDir is where block nodes of devices are made.
const DefaultNodeDir = "/dev/mapper"

// Options configure a Client.
type Options struct {
	// ControlPath is the control node, default /dev/mapper/control. When it
	// is missing and the kernel lists device-mapper in /proc/misc, it is
	// made.
	ControlPath string
	// NodeDir is where the client makes block nodes for devices it creates,
	// default /dev/mapper. The client never assumes udev.
	NodeDir string
	// Logger receives debug lines for each operation; nil discards them.
	Logger logrus.FieldLogger
	// Fault, when set, is asked before each ioctl with its command's name
	// ("DM_DEV_SUSPEND", "DM_TARGET_MSG"...; resume is "DM_DEV_RESUME")
	// and the device's name; a non-zero errno fails the call as the
	// kernel would, without sending it. Tests use it to reach the undo
	// paths of their callers.
	Fault func(op, name string) unix.Errno
}

// Client issues device-mapper ioctls. It is safe for concurrent use: each
// call has its own buffer, and the kernel serialises what needs it.
type Client struct {
	fd      int
	nodeDir string
	log     logrus.FieldLogger
	fault   func(op, name string) unix.Errno
}

func discardLogger() logrus.FieldLogger {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return l
}

// Open opens the control node and checks the interface version.
func Open(opts Options) (*Client, error) {
	if opts.ControlPath == "" {
		opts.ControlPath = filepath.Join(DefaultNodeDir, unix.DM_CONTROL_NODE)
	}
	if opts.NodeDir == "" {
		opts.NodeDir = DefaultNodeDir
	}
	if opts.Logger == nil {
		opts.Logger = discardLogger()
	}
	fd, err := unix.Open(opts.ControlPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		if mkErr := makeControlNode(opts.ControlPath); mkErr != nil {
			return nil, fmt.Errorf("devmapper: open %s: %w", opts.ControlPath, errors.Join(err, mkErr))
		}
		fd, err = unix.Open(opts.ControlPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("devmapper: open %s: %w", opts.ControlPath, err)
	}
	c := &Client{fd: fd, nodeDir: opts.NodeDir, log: opts.Logger, fault: opts.Fault}
	v, err := c.Version()
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	if v.Major != interfaceVersion[0] {
		unix.Close(fd)
		return nil, fmt.Errorf("%w: kernel speaks %s, want major %d", ErrUnsupported, v, interfaceVersion[0])
	}
	return c, nil
}

// makeControlNode creates the control character device from /proc/misc.
func makeControlNode(path string) error {
	f, err := os.Open("/proc/misc")
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 2 && fields[1] == "device-mapper" {
			minor, err := strconv.ParseUint(fields[0], 10, 32)
			if err != nil {
				return fmt.Errorf("/proc/misc: %w", err)
			}
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				return err
			}
			return unix.Mknod(path, unix.S_IFCHR|0o600, int(unix.Mkdev(10, uint32(minor))))
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return fmt.Errorf("%w: device-mapper is not in /proc/misc (kernel without CONFIG_BLK_DEV_DM?)", ErrUnsupported)
}

// Close closes the control node.
func (c *Client) Close() error { return unix.Close(c.fd) }

// NodeDir returns the directory where block nodes are made.
func (c *Client) NodeDir() string { return c.nodeDir }

// NodePath returns the path of the block node for a device name.
func (c *Client) NodePath(name string) string { return filepath.Join(c.nodeDir, name) }

func (c *Client) do(r *request) (*reply, error) {
	if c.fault != nil {
		if e := c.fault(r.op, r.name); e != 0 {
			c.log.WithFields(logrus.Fields{"op": r.op, "name": r.name, "err": e}).Debug("devmapper ioctl: injected fault")
			return nil, &Error{Op: r.op, Name: r.name, Errno: e}
		}
	}
	out, err := do(c.fd, r)
	c.log.WithFields(logrus.Fields{"op": r.op, "name": r.name, "err": err}).Debug("devmapper ioctl")
	return out, err
}

// Version returns the kernel's ioctl interface version.
func (c *Client) Version() (Version, error) {
	out, err := c.do(&request{cmd: unix.DM_VERSION, op: "DM_VERSION"})
	if err != nil {
		return Version{}, err
	}
	v := out.hdr.Version
	return Version{v[0], v[1], v[2]}, nil
}
