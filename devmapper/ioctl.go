package devmapper

import (
	"bytes"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The interface version this package speaks. The kernel accepts any request
// whose major matches and whose minor is not newer than its own.
var interfaceVersion = [3]uint32{4, 0, 0}

const (
	headerSize     = unix.SizeofDmIoctl      // struct dm_ioctl, 312 bytes
	targetSpecSize = unix.SizeofDmTargetSpec // struct dm_target_spec, 40 bytes
	// initialBufferSize fits ordinary replies; larger ones are retried.
	initialBufferSize = 16 * 1024
	// maxBufferSize bounds retries on DM_BUFFER_FULL_FLAG.
	maxBufferSize = 64 << 20
)

// request is one ioctl: a dm_ioctl header followed by its data area.
type request struct {
	cmd   uintptr
	op    string
	name  string
	uuid  string
	flags uint32
	event uint32
	dev   uint64
	// targets is the number of dm_target_spec records in data (table load).
	targets uint32
	data    []byte // payload placed at data_start
}

// reply is what the kernel wrote back.
type reply struct {
	hdr  unix.DmIoctl
	data []byte // from data_start to data_size
}

func setCString(dst []byte, s string) {
	n := copy(dst, s)
	if n < len(dst) {
		dst[n] = 0
	}
}

func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return string(b[:i])
	}
	return string(b)
}

func checkName(name string) error {
	if len(name) >= unix.DM_NAME_LEN {
		return fmt.Errorf("%w: %q is longer than %d bytes", ErrBadName, name, unix.DM_NAME_LEN-1)
	}
	if bytes.ContainsAny([]byte(name), "/\x00") || name == "." || name == ".." {
		return fmt.Errorf("%w: %q", ErrBadName, name)
	}
	return nil
}

// do runs one ioctl on fd, growing the buffer while the kernel says the
// reply did not fit (DM_BUFFER_FULL_FLAG).
func do(fd int, r *request) (*reply, error) {
	size := initialBufferSize
	if need := headerSize + len(r.data) + 8; need > size {
		size = need
	}
	for {
		buf := make([]byte, size)
		hdr := (*unix.DmIoctl)(unsafe.Pointer(&buf[0]))
		hdr.Version = interfaceVersion
		hdr.Data_size = uint32(size)
		hdr.Data_start = headerSize
		hdr.Flags = r.flags
		hdr.Event_nr = r.event
		hdr.Dev = r.dev
		setCString(hdr.Name[:], r.name)
		setCString(hdr.Uuid[:], r.uuid)
		hdr.Target_count = r.targets
		copy(buf[headerSize:], r.data)

		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), r.cmd, uintptr(unsafe.Pointer(&buf[0])))
		if e != 0 {
			return nil, &Error{Op: r.op, Name: r.name, Errno: e}
		}
		out := &reply{hdr: *hdr}
		full := hdr.Flags&unix.DM_BUFFER_FULL_FLAG != 0
		if full && resendable(r.cmd) {
			if size >= maxBufferSize {
				return nil, &Error{Op: r.op, Name: r.name, Errno: unix.ENOBUFS}
			}
			size *= 4
			continue
		}
		if full {
			// Not sent again. The kernel leaves data_size at the header
			// when the reply overflowed and copies back nothing else, so
			// the answer is lost (seen on 6.1 with a long @stats_print).
			return out, fmt.Errorf("%w: %s %q: reply longer than %d bytes was lost (it ran once and is not sent again)", ErrTruncated, r.op, r.name, len(buf))
		}
		// data_size is what the kernel used; with no payload it is the
		// header alone (offsetof(struct dm_ioctl, data), below data_start).
		start, end := int(hdr.Data_start), int(hdr.Data_size)
		if end <= start {
			return out, nil
		}
		if start < headerSize || end > len(buf) {
			return nil, fmt.Errorf("devmapper: %s %q: reply has data %d..%d outside buffer of %d", r.op, r.name, start, end, len(buf))
		}
		out.data = buf[start:end]
		return out, nil
	}
}

// resendable reports whether an ioctl only reads, so that it can be sent
// again with a bigger buffer when its reply did not fit. Anything else
// (a target message above all: the pool would run it twice) is not.
func resendable(cmd uintptr) bool {
	switch cmd {
	case unix.DM_VERSION, unix.DM_LIST_DEVICES, unix.DM_DEV_STATUS,
		unix.DM_TABLE_STATUS, unix.DM_TABLE_DEPS, unix.DM_LIST_VERSIONS,
		unix.DM_GET_TARGET_VERSION:
		return true
	}
	return false
}

func align8(n int) int { return (n + 7) &^ 7 }

// encodeTable lays targets out as the kernel reads them for DM_TABLE_LOAD:
// each dm_target_spec is followed by its NUL-terminated parameter string,
// padded so the next spec starts 8-byte aligned; spec.next is the offset from
// this spec to the next one (0 for the last).
func encodeTable(t Table) ([]byte, error) {
	var out []byte
	for i, tg := range t {
		if tg.Params == nil {
			return nil, fmt.Errorf("%w: target %d has no parameters", ErrBadTable, i)
		}
		typ := tg.Params.TargetType()
		if len(typ) >= unix.DM_MAX_TYPE_NAME || typ == "" {
			return nil, fmt.Errorf("%w: target type %q", ErrBadTable, typ)
		}
		params := tg.Params.String()
		if bytes.IndexByte([]byte(params), 0) >= 0 {
			return nil, fmt.Errorf("%w: target %d parameters contain NUL", ErrBadTable, i)
		}
		recLen := align8(targetSpecSize + len(params) + 1)
		rec := make([]byte, recLen)
		spec := (*unix.DmTargetSpec)(unsafe.Pointer(&rec[0]))
		spec.Sector_start = uint64(tg.Start)
		spec.Length = uint64(tg.Length)
		if i < len(t)-1 {
			spec.Next = uint32(recLen)
		}
		setCString(spec.Target_type[:], typ)
		copy(rec[targetSpecSize:], params)
		out = append(out, rec...)
	}
	return out, nil
}

// decodeTargets reads the specs the kernel returns for DM_TABLE_STATUS: in
// replies, spec.next is the offset from the start of the data area.
func decodeTargets(data []byte, count uint32) ([]rawTarget, error) {
	var out []rawTarget
	off := 0
	for i := uint32(0); i < count; i++ {
		if off+targetSpecSize > len(data) {
			return nil, fmt.Errorf("%w: target %d spec beyond reply (%d bytes)", ErrBadTable, i, len(data))
		}
		spec := *(*unix.DmTargetSpec)(unsafe.Pointer(&data[off]))
		out = append(out, rawTarget{
			Start:  Sectors(spec.Sector_start),
			Length: Sectors(spec.Length),
			Type:   cString(spec.Target_type[:]),
			Params: cString(data[off+targetSpecSize:]),
		})
		if spec.Next == 0 {
			break
		}
		if int(spec.Next) <= off {
			return nil, fmt.Errorf("%w: target %d: next offset %d does not advance", ErrBadTable, i, spec.Next)
		}
		off = int(spec.Next)
	}
	return out, nil
}

// rawTarget is a target as the kernel prints it, before typing.
type rawTarget struct {
	Start, Length Sectors
	Type, Params  string
}
