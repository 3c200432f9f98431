package ext4

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var groupLine = regexp.MustCompile(`(?m)^Group \d+: .*$`)

// groupsWithoutZeroedTable returns dumpe2fs's lines for block groups whose
// inode table mkfs left for the kernel's lazy initialiser, and how many
// groups there are.
func groupsWithoutZeroedTable(t *testing.T, path string) (lazy []string, groups int) {
	t.Helper()
	lines := groupLine.FindAllString(tool(t, nil, "dumpe2fs", path), -1)
	require.NotEmpty(t, lines, "dumpe2fs printed no groups")
	for _, l := range lines {
		if !strings.Contains(l, "ITABLE_ZEROED") {
			lazy = append(lazy, l)
		}
	}
	return lazy, len(lines)
}

func TestFormatFile(t *testing.T) {
	requireE2fsprogs(t, toolFsck)
	path := sparseFile(t, 64<<20)
	require.NoError(t, Format(t.Context(), path, FormatOptions{Label: "dmthin-test"}))

	sb, err := ReadSuperblockFile(path)
	require.NoError(t, err)
	assert.Equal(t, "dmthin-test", sb.Label)
	assert.Equal(t, uint64(64<<20), sb.Size())
	assert.True(t, sb.FeatureCompat.Has(CompatHasJournal), "ext4 has a journal")
	assert.True(t, sb.FeatureIncompat.Has(IncompatExtents), "ext4 uses extents")
	assert.Equal(t, int16(-1), sb.MaxMountCount, "no fsck forced after N mounts")
	assert.Zero(t, sb.CheckInterval, "no fsck forced after some time")
	assert.True(t, sb.State.Clean())

	lazy, groups := groupsWithoutZeroedTable(t, path)
	assert.Empty(t, lazy, "every inode table is zeroed by mkfs (lazy_itable_init=0), %d groups", groups)
	require.NoError(t, Check(t.Context(), path))
}

// TestFormatUserExtendedOptionsWin: the user's -E values are merged after the
// defaults, so they override them instead of replacing the whole list (mke2fs
// 1.47.0 keeps only its last -E). Also shows that the lazy-table check
// of TestFormatFile can fail.
func TestFormatUserExtendedOptionsWin(t *testing.T) {
	requireE2fsprogs(t)
	path := sparseFile(t, 64<<20)
	opts := FormatOptions{ExtraArgs: []string{"-b", "4096", "-E", "lazy_itable_init=1", "-I", "128"}}
	require.NoError(t, Format(t.Context(), path, opts))

	sb, err := ReadSuperblockFile(path)
	require.NoError(t, err)
	assert.Equal(t, uint32(4096), sb.BlockSize, "-b from ExtraArgs")
	assert.Equal(t, uint16(128), sb.InodeSize, "-I from ExtraArgs")
	lazy, _ := groupsWithoutZeroedTable(t, path)
	assert.NotEmpty(t, lazy, "the user's lazy_itable_init=1 overrides the default")
}

// TestFormatDisablesPeriodicCheck: a mke2fs.conf that enables periodic checks
// makes Format run tune2fs to turn them off again.
func TestFormatDisablesPeriodicCheck(t *testing.T) {
	requireE2fsprogs(t, toolTune2fs)
	conf := filepath.Join(t.TempDir(), "mke2fs.conf")
	require.NoError(t, os.WriteFile(conf, []byte("[defaults]\n\tenable_periodic_fsck = 1\n"), 0o644))
	t.Setenv("MKE2FS_CONFIG", conf)

	// Without Format's help, this configuration enables the checks.
	plain := sparseFile(t, 16<<20)
	tool(t, nil, toolMkfs, "-F", "-q", plain)
	sb, err := ReadSuperblockFile(plain)
	require.NoError(t, err)
	require.True(t, sb.PeriodicCheck(), "mke2fs.conf should have enabled periodic checks: max mount count %d, interval %v", sb.MaxMountCount, sb.CheckInterval)

	path := sparseFile(t, 16<<20)
	require.NoError(t, Format(t.Context(), path, FormatOptions{}))
	sb, err = ReadSuperblockFile(path)
	require.NoError(t, err)
	assert.Equal(t, int16(-1), sb.MaxMountCount)
	assert.Zero(t, sb.CheckInterval)
}

func TestFormatFailureCarriesCommand(t *testing.T) {
	requireE2fsprogs(t)
	device := filepath.Join(t.TempDir(), "missing-dir", "disk.img")
	err := Format(t.Context(), device, FormatOptions{})
	var ee *ExecError
	require.ErrorAs(t, err, &ee)
	assert.Equal(t, toolMkfs, filepath.Base(ee.Args[0]))
	assert.Equal(t, device, ee.Args[len(ee.Args)-1])
	assert.Positive(t, ee.ExitCode)
	assert.Contains(t, ee.Stderr, device, "mke2fs says which device it could not open")
	assert.Contains(t, err.Error(), device)
}

func TestFormatOptionsValidate(t *testing.T) {
	tests := []struct {
		name string
		opts FormatOptions
		want []string // substrings of the error, one per problem; none: valid
	}{
		{"zero value", FormatOptions{}, nil},
		{"16-byte label", FormatOptions{Label: "0123456789abcdef"}, nil},
		{"options", FormatOptions{ExtraArgs: []string{"-b", "4096", "-Estride=16", "-qE", "stripe_width=32", "-m0"}}, nil},
		{"17-byte label", FormatOptions{Label: "0123456789abcdefg"}, []string{"17 bytes"}},
		{"NUL in label", FormatOptions{Label: "a\x00b"}, []string{"NUL"}},
		{"positional argument", FormatOptions{ExtraArgs: []string{"-q", "1000"}}, []string{`"1000" is not an option`}},
		{"double dash", FormatOptions{ExtraArgs: []string{"--", "x"}}, []string{`"--" is not an option`}},
		{"missing value", FormatOptions{ExtraArgs: []string{"-q", "-E"}}, []string{"-E needs a value"}},
		{"every problem at once", FormatOptions{Label: strings.Repeat("x", 20), ExtraArgs: []string{"dev"}}, []string{"20 bytes", `"dev" is not an option`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.opts.Validate()
			if tt.want == nil {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrInvalidOptions)
			for _, w := range tt.want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}
}

func TestMkfsArgs(t *testing.T) {
	const defaults = "nodiscard,lazy_itable_init=0,lazy_journal_init=0"
	tests := []struct {
		name string
		opts FormatOptions
		want []string
	}{
		{"defaults", FormatOptions{}, []string{"-F", "-q", "-E", defaults, "--", "/dev/x"}},
		{"label", FormatOptions{Label: "base"}, []string{"-F", "-q", "-E", defaults, "-L", "base", "--", "/dev/x"}},
		{"plain options kept in order", FormatOptions{ExtraArgs: []string{"-b", "4096", "-m0", "-O", "^has_journal"}},
			[]string{"-F", "-q", "-E", defaults, "-b", "4096", "-m0", "-O", "^has_journal", "--", "/dev/x"}},
		{"-E values merged", FormatOptions{ExtraArgs: []string{"-E", "stride=16", "-Estripe_width=32"}},
			[]string{"-F", "-q", "-E", defaults + ",stride=16,stripe_width=32", "--", "/dev/x"}},
		{"deprecated -R", FormatOptions{ExtraArgs: []string{"-R", "stride=8"}},
			[]string{"-F", "-q", "-E", defaults + ",stride=8", "--", "/dev/x"}},
		{"-E in a cluster", FormatOptions{ExtraArgs: []string{"-jqE", "discard", "-vEx=1"}},
			[]string{"-F", "-q", "-E", defaults + ",discard,x=1", "-jq", "-v", "--", "/dev/x"}},
		{"-E as the value of -L is a label", FormatOptions{ExtraArgs: []string{"-L", "-E"}},
			[]string{"-F", "-q", "-E", defaults, "-L", "-E", "--", "/dev/x"}},
		{"value attached after flags", FormatOptions{ExtraArgs: []string{"-qb4096"}},
			[]string{"-F", "-q", "-E", defaults, "-qb4096", "--", "/dev/x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.opts.mkfsArgs("/dev/x")
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestFormatRejectsBeforeRunning(t *testing.T) {
	fakeTool(t, toolMkfs, "exit 99") // would fail the test's assertions if it ran
	err := Format(t.Context(), "", FormatOptions{})
	require.ErrorIs(t, err, ErrInvalidOptions)
	err = Format(t.Context(), "/dev/x", FormatOptions{Label: strings.Repeat("y", 17)})
	require.ErrorIs(t, err, ErrInvalidOptions)
	var ee *ExecError
	assert.False(t, errors.As(err, &ee), "mkfs must not have run")
}
