package devmapper

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"
)

// Info describes a device as DM_DEV_STATUS reports it.
type Info struct {
	Name          string `json:"name"`
	UUID          string `json:"uuid"`
	Dev           Dev    `json:"dev"`
	OpenCount     int32  `json:"open_count"`
	EventNr       uint32 `json:"event_nr"`
	TargetCount   uint32 `json:"target_count"`
	Suspended     bool   `json:"suspended"`
	ReadOnly      bool   `json:"read_only"`
	LiveTable     bool   `json:"live_table"`     // an active table is loaded
	InactiveTable bool   `json:"inactive_table"` // a table is loaded and waiting for resume
	// DeferredRemove is set when a deferred remove is pending.
	DeferredRemove bool `json:"deferred_remove"`
}

func infoFrom(h *unix.DmIoctl) Info {
	return Info{
		Name:           cString(h.Name[:]),
		UUID:           cString(h.Uuid[:]),
		Dev:            DecodeDev(h.Dev),
		OpenCount:      h.Open_count,
		EventNr:        h.Event_nr,
		TargetCount:    h.Target_count,
		Suspended:      h.Flags&unix.DM_SUSPEND_FLAG != 0,
		ReadOnly:       h.Flags&unix.DM_READONLY_FLAG != 0,
		LiveTable:      h.Flags&unix.DM_ACTIVE_PRESENT_FLAG != 0,
		InactiveTable:  h.Flags&unix.DM_INACTIVE_PRESENT_FLAG != 0,
		DeferredRemove: h.Flags&unix.DM_DEFERRED_REMOVE != 0,
	}
}

// Info returns the device's state. A missing device is an error that
// unwraps to unix.ENXIO (see IsNotFound).
func (c *Client) Info(name string) (Info, error) {
	out, err := c.do(&request{cmd: unix.DM_DEV_STATUS, op: "DM_DEV_STATUS", name: name})
	if err != nil {
		return Info{}, err
	}
	return infoFrom(&out.hdr), nil
}

// Exists reports whether a device of that name exists.
func (c *Client) Exists(name string) (bool, error) {
	_, err := c.Info(name)
	if IsNotFound(err) {
		return false, nil
	}
	return err == nil, err
}

// ListEntry is one device of List.
type ListEntry struct {
	Name string
	Dev  Dev
}

// List returns every device-mapper device. Large lists are read with a
// bigger buffer when the first does not fit.
func (c *Client) List() ([]ListEntry, error) {
	out, err := c.do(&request{cmd: unix.DM_LIST_DEVICES, op: "DM_LIST_DEVICES"})
	if err != nil {
		return nil, err
	}
	return parseNameList(out.data)
}

// parseNameList reads struct dm_name_list records: u64 dev, u32 next
// (offset to the next record from this one, 0 for the last), then the name.
func parseNameList(data []byte) ([]ListEntry, error) {
	var out []ListEntry
	off := 0
	for {
		if off+12 > len(data) {
			if off == 0 {
				return nil, nil
			}
			return nil, fmt.Errorf("devmapper: DM_LIST_DEVICES: record at %d beyond reply of %d bytes", off, len(data))
		}
		dev := binary.NativeEndian.Uint64(data[off:])
		next := binary.NativeEndian.Uint32(data[off+8:])
		if dev == 0 && off == 0 {
			return nil, nil // the kernel's "no devices"
		}
		out = append(out, ListEntry{Name: cString(data[off+12:]), Dev: DecodeDev(dev)})
		if next == 0 {
			return out, nil
		}
		off += int(next)
	}
}

// TargetVersion is one registered target type.
type TargetVersion struct {
	Name    string
	Version Version
}

// TargetVersions lists the target types the kernel has registered.
func (c *Client) TargetVersions() ([]TargetVersion, error) {
	out, err := c.do(&request{cmd: unix.DM_LIST_VERSIONS, op: "DM_LIST_VERSIONS"})
	if err != nil {
		return nil, err
	}
	var res []TargetVersion
	data := out.data
	off := 0
	for off+16 <= len(data) {
		next := binary.NativeEndian.Uint32(data[off:])
		v := Version{
			binary.NativeEndian.Uint32(data[off+4:]),
			binary.NativeEndian.Uint32(data[off+8:]),
			binary.NativeEndian.Uint32(data[off+12:]),
		}
		res = append(res, TargetVersion{Name: cString(data[off+16:]), Version: v})
		if next == 0 {
			break
		}
		off += int(next)
	}
	return res, nil
}

// TargetVersion returns the version of one target type, or an error
// unwrapping to unix.ENOENT when the kernel does not have it registered.
func (c *Client) TargetVersion(name string) (Version, error) {
	all, err := c.TargetVersions()
	if err != nil {
		return Version{}, err
	}
	for _, t := range all {
		if t.Name == name {
			return t.Version, nil
		}
	}
	return Version{}, &Error{Op: "DM_LIST_VERSIONS", Name: name, Errno: unix.ENOENT}
}
