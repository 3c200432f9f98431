package layerstore

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
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
	o := Options{Root: "", BaseSize: 1000, Filesystem: "xfs", RootfsDir: "a/b", DeferredDeletion: true, DeferredInterval: -1}
	err := o.Validate()
	assert.ErrorIs(t, err, ErrInvalidOptions)
	for _, want := range []string{"empty root", "below the minimum", "only ext4", "rootfs directory", "needs deferred removal", "negative"} {
		assert.Contains(t, err.Error(), want)
	}
	o = Options{Root: "/x", BaseSize: MinBaseSize + 1}
	assert.ErrorContains(t, o.Validate(), "multiple of 512")
	assert.NoError(t, (&Options{Root: "/x"}).Validate())
}
