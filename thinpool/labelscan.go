package thinpool

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/dmthin/dmthin/devmapper"
	"github.com/dmthin/dmthin/internal/devlabel"
)

// sysClassBlock lists every block device the kernel has.
const sysClassBlock = "/sys/class/block"

// findLabelled returns the path of the one block device, of those sysDir
// (sysClassBlock) lists, whose dmthin label has uuid: the disk of a
// whole-device pool that is not active. An active pool's linear devices
// never match (they start past the label). No device, or several (the
// paths of a multipath disk), is an error: the path is the engine's
// configuration, and guessing would be worse than saying so.
func findLabelled(sysDir, uuid string) (string, error) {
	ents, err := os.ReadDir(sysDir)
	if err != nil {
		return "", fmt.Errorf("thinpool: find the device labelled %s: %w", uuid, err)
	}
	var found []string
	var unreadable []error
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(sysDir, e.Name(), "dev"))
		if err != nil {
			continue // not a block device's directory
		}
		d, err := devmapper.ParseDev(strings.TrimSpace(string(b)))
		if err != nil {
			continue
		}
		path := blockDevPath(d)
		l, err := devlabel.Read(path)
		switch {
		case err == nil && l.UUID.String() == uuid:
			found = append(found, path)
		case err != nil && !errors.Is(err, devlabel.ErrNoLabel):
			unreadable = append(unreadable, err)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		err := fmt.Errorf("thinpool: no block device in %s holds the dmthin label %s this pool's store records: is the pool's disk attached? (the engine's configuration names it)", sysDir, uuid)
		if len(unreadable) > 0 {
			return "", fmt.Errorf("%w; %d device(s) could not be read: %w", err, len(unreadable), errors.Join(unreadable...))
		}
		return "", err
	}
	return "", fmt.Errorf("thinpool: %d block devices hold the dmthin label %s (%s): the engine's configuration says which is the pool's disk", len(found), uuid, strings.Join(found, ", "))
}
