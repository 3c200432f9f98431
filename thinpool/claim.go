package thinpool

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/internal/devlabel"
)

// ErrDeviceInUse: a data or metadata device is held by someone else (a
// mounted filesystem, another device-mapper device, an O_EXCL opener), or
// holds a filesystem, partition table or volume signature that
// Options.ForceDevices does not allow to overwrite.
var ErrDeviceInUse = errors.New("thinpool: device in use")

// claimDevice opens a block device exclusively (O_EXCL: the kernel refuses
// with EBUSY while a filesystem is mounted on it or another holder has
// it). The caller keeps the file until the pool device holds the block
// device itself.
func claimDevice(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.EBUSY) {
		return nil, fmt.Errorf("%w: %s is busy (mounted, or held by another device or program): %w", ErrDeviceInUse, path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("thinpool: claim %s: %w", path, err)
	}
	return f, nil
}

// signature is a magic value at a byte offset that marks a device in use.
type signature struct {
	what  string
	off   int64
	magic []byte
}

func le16(v uint16) []byte { return binary.LittleEndian.AppendUint16(nil, v) }

// signatures are what a device holding data begins with. The offsets are
// those of the formats' own specifications (blkid's table has the same).
var signatures = []signature{
	{"ext2/3/4 filesystem", 1024 + 56, le16(0xEF53)},
	{"xfs filesystem", 0, []byte("XFSB")},
	{"btrfs filesystem", 64<<10 + 64, []byte("_BHRfS_M")},
	{"swap space", 4096 - 10, []byte("SWAPSPACE2")},
	{"swap space", 4096 - 10, []byte("SWAP-SPACE")},
	{"GPT partition table", 512, []byte("EFI PART")},
	{"MBR partition table or FAT boot sector", 510, []byte{0x55, 0xAA}},
	{"LVM2 physical volume", 512 + 24, []byte("LVM2 001")},
	{"LVM2 physical volume", 24, []byte("LVM2 001")},
	{"LUKS volume", 0, []byte("LUKS\xba\xbe")},
	{"thin-pool metadata", 32, binary.LittleEndian.AppendUint64(nil, 27022010)},
	{"dmthin whole-device label", 0, devlabel.Magic[:]},
}

// findSignature returns what the first bytes of r say is on it, or "".
func findSignature(r io.ReaderAt) (string, error) {
	head := make([]byte, 64<<10+4096)
	n, err := r.ReadAt(head, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	head = head[:n]
	for _, s := range signatures {
		end := s.off + int64(len(s.magic))
		if end <= int64(len(head)) && bytes.Equal(head[s.off:end], s.magic) {
			return s.what, nil
		}
	}
	return "", nil
}

// checkBlank refuses a device that holds a signature, unless forced.
func checkBlank(f *os.File, force bool) error {
	what, err := findSignature(f)
	if err != nil {
		return fmt.Errorf("thinpool: read %s: %w", f.Name(), err)
	}
	if what != "" && !force {
		return fmt.Errorf("%w: %s holds a %s; refusing to build a pool over it (Options.ForceDevices overrides)", ErrDeviceInUse, f.Name(), what)
	}
	return nil
}
