package devmapper

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"golang.org/x/sys/unix"
)

// TestResendable: only ioctls that read are sent again with a bigger
// buffer; a message (which may act) or a change never is.
func TestResendable(t *testing.T) {
	for cmd, want := range map[uintptr]bool{
		unix.DM_VERSION:            true,
		unix.DM_LIST_DEVICES:       true,
		unix.DM_DEV_STATUS:         true,
		unix.DM_TABLE_STATUS:       true,
		unix.DM_TABLE_DEPS:         true,
		unix.DM_LIST_VERSIONS:      true,
		unix.DM_GET_TARGET_VERSION: true,
		unix.DM_TARGET_MSG:         false,
		unix.DM_DEV_CREATE:         false,
		unix.DM_DEV_REMOVE:         false,
		unix.DM_DEV_SUSPEND:        false,
		unix.DM_DEV_RENAME:         false,
		unix.DM_TABLE_LOAD:         false,
		unix.DM_TABLE_CLEAR:        false,
		unix.DM_DEV_WAIT:           false,
		unix.DM_DEV_ARM_POLL:       false,
		unix.DM_REMOVE_ALL:         false,
		unix.DM_DEV_SET_GEOMETRY:   false,
	} {
		assert.Equal(t, want, resendable(cmd), "cmd %#x", cmd)
	}
}
