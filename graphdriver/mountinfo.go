package graphdriver

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/moby/sys/mountinfo"
)

// mountEntry is what the driver reads of one mount: the fields of
// mountinfo.Info it uses, under the names proc(5) gives them.
type mountEntry struct {
	MountPoint   string // escapes decoded
	Options      string // per-mount options: rw,nodev,noatime...
	FSType       string
	Source       string
	SuperOptions string // the filesystem's options
}

// mountsUnder returns the mounts of this process's mount namespace whose
// mount point is directly inside dir (dir/NAME), keyed by NAME. The parsing
// of /proc/self/mountinfo (optional fields, \ooo escapes) is
// github.com/moby/sys/mountinfo's.
func mountsUnder(dir string) (map[string]mountEntry, error) {
	dir = filepath.Clean(dir)
	infos, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return filepath.Dir(m.Mountpoint) != dir || m.Mountpoint == dir, false
	})
	if err != nil {
		return nil, fmt.Errorf("graphdriver: read mountinfo: %w", err)
	}
	out := make(map[string]mountEntry, len(infos))
	for _, m := range infos {
		name := strings.TrimPrefix(m.Mountpoint[len(dir):], "/")
		out[name] = mountEntry{
			MountPoint:   m.Mountpoint,
			Options:      m.Options,
			FSType:       m.FSType,
			Source:       m.Source,
			SuperOptions: m.VFSOptions,
		}
	}
	return out, nil
}
