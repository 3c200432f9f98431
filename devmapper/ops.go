package devmapper

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// Create makes a device with no table (DM_DEV_CREATE) and its block node.
// uuid may be empty.
func (c *Client) Create(name, uuid string) (Info, error) {
	if err := checkName(name); err != nil {
		return Info{}, err
	}
	if len(uuid) >= unix.DM_UUID_LEN {
		return Info{}, fmt.Errorf("%w: uuid %q longer than %d bytes", ErrBadName, uuid, unix.DM_UUID_LEN-1)
	}
	out, err := c.do(&request{cmd: unix.DM_DEV_CREATE, op: "DM_DEV_CREATE", name: name, uuid: uuid})
	if err != nil {
		return Info{}, err
	}
	info := infoFrom(&out.hdr)
	if err := c.makeNode(name, info.Dev); err != nil {
		// Do not leave a device the caller cannot reach.
		_, rmErr := c.do(&request{cmd: unix.DM_DEV_REMOVE, op: "DM_DEV_REMOVE", name: name})
		return Info{}, errors.Join(err, rmErr)
	}
	return info, nil
}

// RemoveOptions modify Remove.
type RemoveOptions struct {
	// Deferred asks the kernel to remove the device when its last opener
	// closes it, instead of failing with EBUSY.
	Deferred bool
}

// Remove removes a device (DM_DEV_REMOVE) and its block node. An open
// device fails with an error unwrapping to unix.EBUSY unless Deferred is
// set; a missing one unwraps to unix.ENXIO.
func (c *Client) Remove(name string, opts RemoveOptions) error {
	var flags uint32
	if opts.Deferred {
		flags |= unix.DM_DEFERRED_REMOVE
	}
	out, err := c.do(&request{cmd: unix.DM_DEV_REMOVE, op: "DM_DEV_REMOVE", name: name, flags: flags})
	if err != nil {
		return err
	}
	if opts.Deferred && out.hdr.Flags&unix.DM_DEFERRED_REMOVE != 0 {
		// Still open: the kernel removes it later. Keep the node so the
		// device stays reachable until then; PruneNodes cleans up after.
		if _, infoErr := c.Info(name); infoErr == nil {
			return nil
		}
	}
	return c.removeNode(name)
}

// CancelDeferredRemove withdraws a pending deferred remove.
func (c *Client) CancelDeferredRemove(name string) error {
	_, err := c.Message(name, 0, "@cancel_deferred_remove")
	if err != nil {
		return err
	}
	info, err := c.Info(name)
	if err != nil {
		return err
	}
	return c.makeNode(name, info.Dev)
}

// Load loads a table into the device's inactive slot (DM_TABLE_LOAD); Resume
// makes it live.
func (c *Client) Load(name string, t Table, readOnly bool) error {
	if len(t) == 0 {
		return fmt.Errorf("%w: empty table for %q", ErrBadTable, name)
	}
	data, err := encodeTable(t)
	if err != nil {
		return err
	}
	var flags uint32
	if readOnly {
		flags |= unix.DM_READONLY_FLAG
	}
	_, err = c.do(&request{cmd: unix.DM_TABLE_LOAD, op: "DM_TABLE_LOAD", name: name, flags: flags, targets: uint32(len(t)), data: data})
	return err
}

// ClearInactive drops a loaded but not yet resumed table (DM_TABLE_CLEAR).
func (c *Client) ClearInactive(name string) error {
	_, err := c.do(&request{cmd: unix.DM_TABLE_CLEAR, op: "DM_TABLE_CLEAR", name: name})
	return err
}

// SuspendOptions modify Suspend.
type SuspendOptions struct {
	// NoFlush: do not flush queued I/O (thin pools: keep I/O queued for a
	// fast reload).
	NoFlush bool
	// SkipLockfs: do not freeze a filesystem mounted on the device.
	SkipLockfs bool
}

// Suspend suspends the device (DM_DEV_SUSPEND with DM_SUSPEND_FLAG).
func (c *Client) Suspend(name string, opts SuspendOptions) error {
	flags := uint32(unix.DM_SUSPEND_FLAG)
	if opts.NoFlush {
		flags |= unix.DM_NOFLUSH_FLAG
	}
	if opts.SkipLockfs {
		flags |= unix.DM_SKIP_LOCKFS_FLAG
	}
	_, err := c.do(&request{cmd: unix.DM_DEV_SUSPEND, op: "DM_DEV_SUSPEND", name: name, flags: flags})
	return err
}

// Resume resumes the device, making a loaded inactive table live.
func (c *Client) Resume(name string) (Info, error) {
	out, err := c.do(&request{cmd: unix.DM_DEV_SUSPEND, op: "DM_DEV_RESUME", name: name})
	if err != nil {
		return Info{}, err
	}
	info := infoFrom(&out.hdr)
	return info, c.makeNode(name, info.Dev)
}

// Rename renames a device and moves its node.
func (c *Client) Rename(name, newName string) error {
	if err := checkName(newName); err != nil {
		return err
	}
	data := append([]byte(newName), 0)
	out, err := c.do(&request{cmd: unix.DM_DEV_RENAME, op: "DM_DEV_RENAME", name: name, data: data})
	if err != nil {
		return err
	}
	return errors.Join(c.removeNode(name), c.makeNode(newName, DecodeDev(out.hdr.Dev)))
}

// Activate creates a device, loads t and resumes it. If any step fails the
// device is removed again and both errors are returned.
func (c *Client) Activate(name, uuid string, t Table, readOnly bool) (Info, error) {
	if _, err := c.Create(name, uuid); err != nil {
		return Info{}, err
	}
	undo := func(err error) (Info, error) {
		return Info{}, errors.Join(err, c.Remove(name, RemoveOptions{}))
	}
	if err := c.Load(name, t, readOnly); err != nil {
		return undo(err)
	}
	info, err := c.Resume(name)
	if err != nil {
		return undo(err)
	}
	return info, nil
}

// Reload loads t and swaps it in: suspend, resume. Use it to grow a device.
func (c *Client) Reload(name string, t Table, opts SuspendOptions) error {
	if err := c.Load(name, t, false); err != nil {
		return err
	}
	if err := c.Suspend(name, opts); err != nil {
		return errors.Join(err, c.ClearInactive(name))
	}
	_, err := c.Resume(name)
	return err
}

// TargetStatus is one target's line of DM_TABLE_STATUS.
type TargetStatus struct {
	Start, Length Sectors
	Type          string
	Params        string // the status (or, for Table, the table parameters)
}

// StatusOptions modify Status.
type StatusOptions struct {
	// NoFlush: thin-pool targets do not commit metadata to report status.
	// Use it when polling a pool.
	NoFlush bool
	// Inactive reads the inactive table's status instead of the live one.
	Inactive bool
}

// Status returns the live table's status lines.
func (c *Client) Status(name string, opts StatusOptions) ([]TargetStatus, error) {
	var flags uint32
	if opts.NoFlush {
		flags |= unix.DM_NOFLUSH_FLAG
	}
	if opts.Inactive {
		flags |= unix.DM_QUERY_INACTIVE_TABLE_FLAG
	}
	return c.tableStatus(name, "DM_TABLE_STATUS", flags)
}

// Table returns the device's live table, typed.
func (c *Client) Table(name string) (Table, error) {
	raw, err := c.tableStatus(name, "DM_TABLE_STATUS(table)", unix.DM_STATUS_TABLE_FLAG)
	if err != nil {
		return nil, err
	}
	t := make(Table, 0, len(raw))
	for i, r := range raw {
		p, err := ParseTargetParams(r.Type, r.Params)
		if err != nil {
			return nil, fmt.Errorf("devmapper: table of %q, target %d: %w", name, i, err)
		}
		t = append(t, Target{Start: r.Start, Length: r.Length, Params: p})
	}
	return t, nil
}

func (c *Client) tableStatus(name, op string, flags uint32) ([]TargetStatus, error) {
	out, err := c.do(&request{cmd: unix.DM_TABLE_STATUS, op: op, name: name, flags: flags})
	if err != nil {
		return nil, err
	}
	raw, err := decodeTargets(out.data, out.hdr.Target_count)
	if err != nil {
		return nil, fmt.Errorf("devmapper: %s %q: %w", op, name, err)
	}
	res := make([]TargetStatus, len(raw))
	for i, r := range raw {
		res[i] = TargetStatus(r)
	}
	return res, nil
}

// Message sends a target message (DM_TARGET_MSG) to the target at sector
// and returns the text the target answered, if any. A message is sent
// once: when its answer is too long for the buffer, the kernel returns none
// of it and Message fails with an error wrapping ErrTruncated (the message
// did run).
func (c *Client) Message(name string, sector Sectors, msg string) (string, error) {
	data := make([]byte, 8, 8+len(msg)+1)
	binary.NativeEndian.PutUint64(data, uint64(sector))
	data = append(data, msg...)
	data = append(data, 0)
	out, err := c.do(&request{cmd: unix.DM_TARGET_MSG, op: "DM_TARGET_MSG(" + firstWord(msg) + ")", name: name, data: data})
	if out == nil {
		return "", err
	}
	if out.hdr.Flags&unix.DM_DATA_OUT_FLAG != 0 || errors.Is(err, ErrTruncated) {
		return cString(out.data), err
	}
	return "", err
}

func firstWord(s string) string {
	w, _, _ := strings.Cut(s, " ")
	return w
}
