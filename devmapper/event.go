package devmapper

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// WaitEvent returns once the device's event counter is past after (for
// example the EventNr of an earlier Info), or when ctx ends. Thin pools raise
// an event when they cross their low-water mark, run out of space or change
// mode. (On Debian's 6.1 kernel a table reload and resume alone raises none.)
//
// It arms the control node for poll (DM_DEV_ARM_POLL) on a private file
// descriptor and sleeps in poll(2), so waiting costs no CPU.
func (c *Client) WaitEvent(ctx context.Context, name string, after uint32) (Info, error) {
	fd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", c.fd), unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return Info{}, fmt.Errorf("devmapper: wait %q: reopen control: %w", name, err)
	}
	defer unix.Close(fd)
	for {
		// Arm first, then look: an event between the two wakes poll.
		if _, err := do(fd, &request{cmd: unix.DM_DEV_ARM_POLL, op: "DM_DEV_ARM_POLL"}); err != nil {
			return Info{}, err
		}
		info, err := c.Info(name)
		if err != nil {
			return Info{}, err
		}
		if info.EventNr != after {
			return info, nil
		}
		timeout := 200
		if d, ok := ctx.Deadline(); ok {
			if ms := time.Until(d).Milliseconds(); ms < int64(timeout) {
				timeout = int(max(ms, 0))
			}
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, timeout); err != nil && !errors.Is(err, unix.EINTR) {
			return Info{}, fmt.Errorf("devmapper: wait %q: poll: %w", name, err)
		}
		if err := ctx.Err(); err != nil {
			return Info{}, err
		}
	}
}
