package loopback

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestParseLoopName(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		okay bool
	}{
		{"loop0", 0, true},
		{"loop7", 7, true},
		{"loop123", 123, true},
		{"loop", 0, false},
		{"loop-control", 0, false},
		{"loop07", 0, false},
		{"loop1p1", 0, false},
		{"vda", 0, false},
		{"zram0", 0, false},
		{"loop99999999999999999999", 0, false},
	} {
		n, ok := parseLoopName(tc.in)
		assert.Equal(t, tc.okay, ok, tc.in)
		assert.Equal(t, tc.n, n, tc.in)
	}
}

func TestParseDevNumber(t *testing.T) {
	for _, tc := range []struct {
		in       string
		maj, min uint32
		wantErr  bool
	}{
		{"7:0\n", 7, 0, false}, // as /sys/block/loop0/dev reads
		{"259:12", 259, 12, false},
		{"7", 0, 0, true},
		{"x:1", 0, 0, true},
		{"7:-1", 0, 0, true},
		{"", 0, 0, true},
	} {
		maj, min, err := parseDevNumber(tc.in)
		if tc.wantErr {
			assert.Error(t, err, "%q", tc.in)
			continue
		}
		require.NoError(t, err, "%q", tc.in)
		assert.Equal(t, [2]uint32{tc.maj, tc.min}, [2]uint32{maj, min}, "%q", tc.in)
	}
}

func TestFlagsString(t *testing.T) {
	for _, tc := range []struct {
		f    Flags
		want string
	}{
		{0, "0"},
		{FlagReadOnly, "read_only"},
		{FlagAutoclear | FlagDirectIO, "autoclear|direct_io"},
		{FlagReadOnly | FlagAutoclear | FlagPartScan | FlagDirectIO, "read_only|autoclear|partscan|direct_io"},
		{FlagAutoclear | 0x40, "autoclear|0x40"},
	} {
		assert.Equal(t, tc.want, tc.f.String())
	}
	assert.True(t, (FlagReadOnly | FlagAutoclear).Has(FlagAutoclear))
	assert.False(t, FlagReadOnly.Has(FlagReadOnly|FlagAutoclear))
}

func TestStatusFromInfo(t *testing.T) {
	var info unix.LoopInfo64
	info.Number = 3
	info.Device = unix.Mkdev(254, 1)
	info.Inode = 1234
	info.Flags = unix.LO_FLAGS_AUTOCLEAR | unix.LO_FLAGS_DIRECT_IO
	long := "/var/lib/dmthin/devicemapper/devicemapper/a-rather-long-directory/data"
	setFileName(&info, long)
	st := statusFromInfo(&info)
	assert.Equal(t, Status{
		Number: 3, BackingMajor: 254, BackingMinor: 1, BackingInode: 1234,
		Flags:    FlagAutoclear | FlagDirectIO,
		FileName: long[:63], // the kernel's 64 bytes include the NUL
	}, st)
	assert.True(t, st.sameFile(&unix.Stat_t{Dev: unix.Mkdev(254, 1), Ino: 1234}))
	assert.False(t, st.sameFile(&unix.Stat_t{Dev: unix.Mkdev(254, 2), Ino: 1234}))
	assert.False(t, st.sameFile(&unix.Stat_t{Dev: unix.Mkdev(254, 1), Ino: 1235}))
}

func TestErrorKeepsErrno(t *testing.T) {
	var err error = &Error{Op: "LOOP_CLR_FD", Path: "/dev/loop3", File: "/x/data", Err: unix.EBUSY}
	err = fmt.Errorf("thinpool: shutdown: %w", err)
	assert.True(t, errors.Is(err, unix.EBUSY))
	var le *Error
	require.True(t, errors.As(err, &le))
	assert.Equal(t, "LOOP_CLR_FD", le.Op)
	assert.Equal(t, "thinpool: shutdown: loopback: LOOP_CLR_FD /dev/loop3 (backing /x/data): device or resource busy", err.Error())

	err = &Error{Op: "grow", Path: "/x/data", Err: fmt.Errorf("%w: file has 2 bytes", ErrShrink)}
	assert.True(t, errors.Is(err, ErrShrink))
	assert.False(t, errors.Is(err, ErrNotFound))
}
