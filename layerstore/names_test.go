package layerstore

import (
	"strings"
	"testing"

	"github.com/docker/go-units"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestValidateName(t *testing.T) {
	for _, name := range []string{"a", "base", "pool", "probe-1", ".hidden", "x.y", "-init", strings.Repeat("a", MaxNameLen)} {
		assert.NoError(t, ValidateName(name), name)
	}
	for _, name := range []string{"", ".", "..", "../x", "a/b", "/", "a..b", "x\x00y", "tab\there", "del\x7f", strings.Repeat("a", MaxNameLen+1)} {
		assert.ErrorIs(t, ValidateName(name), ErrInvalidName, "%q", name)
	}
}

// A layer name can never name the base device or anything thinpool reserves.
func TestDeviceNamesDoNotCollide(t *testing.T) {
	for _, name := range []string{"base", "pool", "probe-1"} {
		assert.NotEqual(t, baseDevice, DeviceName(name))
		assert.Equal(t, "l-"+name, DeviceName(name))
		back, ok := layerName(DeviceName(name))
		assert.True(t, ok)
		assert.Equal(t, name, back)
	}
	_, ok := layerName(baseDevice)
	assert.False(t, ok)
}

func TestOptionsValidate(t *testing.T) {
	o := Options{Root: "", BaseSize: 1000, Filesystem: "btrfs", RootfsDir: "a/b", DeferredDeletion: true, DeferredInterval: -1}
	err := o.Validate()
	assert.ErrorIs(t, err, ErrInvalidOptions)
	for _, want := range []string{"empty root", "below the minimum", `unsupported filesystem: "btrfs" (want ext4 or xfs)`, "rootfs directory", "needs deferred removal", "negative"} {
		assert.Contains(t, err.Error(), want)
	}
	o = Options{Root: "/x", BaseSize: MinBaseSize + 1}
	assert.ErrorContains(t, o.Validate(), "multiple of 512")
	assert.NoError(t, (&Options{Root: "/x"}).Validate())

	// What depends on the filesystem.
	three := 3
	o = Options{Root: "/x", BaseSize: 256 * units.MiB, Filesystem: FilesystemXFS, MkfsArgs: []string{"-N"}}
	err = o.Validate()
	for _, want := range []string{"BaseSize 256MiB: below the 300MiB that xfs needs", "MkfsArgs -N", "-N only prints"} {
		assert.ErrorContains(t, err, want)
	}
	// Each problem names its field, for adapters to name their option.
	var fields []string
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		var fe *FieldError
		require.ErrorAs(t, e, &fe)
		fields = append(fields, fe.Field)
	}
	assert.Equal(t, []string{"MkfsArgs", "BaseSize"}, fields)
	o = Options{Root: "/x", XFSNoSpaceMaxRetries: &three}
	assert.ErrorContains(t, o.Validate(), "apply to xfs only")
	o = Options{Root: "/x", BaseSize: 256 * units.MiB, MkfsArgs: []string{"/dev/sda"}}
	assert.ErrorContains(t, o.Validate(), "not an option", "ext4's mkfs arguments are checked too")
	o = Options{Root: "/x", BaseSize: 300 * units.MiB, Filesystem: FilesystemXFS, XFSNoSpaceMaxRetries: &three}
	assert.NoError(t, o.Validate())
}
