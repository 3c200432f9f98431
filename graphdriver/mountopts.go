package graphdriver

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// mountFlags are the mount(8) options that are flags of mount(2) rather than
// filesystem data. clear: the option turns the flag off.
var mountFlags = map[string]struct {
	clear bool
	flag  uintptr
}{
	"defaults":      {false, 0},
	"ro":            {false, unix.MS_RDONLY},
	"rw":            {true, unix.MS_RDONLY},
	"nosuid":        {false, unix.MS_NOSUID},
	"suid":          {true, unix.MS_NOSUID},
	"nodev":         {false, unix.MS_NODEV},
	"dev":           {true, unix.MS_NODEV},
	"noexec":        {false, unix.MS_NOEXEC},
	"exec":          {true, unix.MS_NOEXEC},
	"sync":          {false, unix.MS_SYNCHRONOUS},
	"async":         {true, unix.MS_SYNCHRONOUS},
	"dirsync":       {false, unix.MS_DIRSYNC},
	"noatime":       {false, unix.MS_NOATIME},
	"atime":         {true, unix.MS_NOATIME},
	"nodiratime":    {false, unix.MS_NODIRATIME},
	"diratime":      {true, unix.MS_NODIRATIME},
	"relatime":      {false, unix.MS_RELATIME},
	"norelatime":    {true, unix.MS_RELATIME},
	"strictatime":   {false, unix.MS_STRICTATIME},
	"nostrictatime": {true, unix.MS_STRICTATIME},
	"lazytime":      {false, unix.MS_LAZYTIME},
	"nolazytime":    {true, unix.MS_LAZYTIME},
	"mand":          {false, unix.MS_MANDLOCK},
	"nomand":        {true, unix.MS_MANDLOCK},
	"silent":        {false, unix.MS_SILENT},
	"loud":          {true, unix.MS_SILENT},
}

// refusedMountFlags change what kind of mount is made; the driver decides
// that, so dm.mountopt may not carry them.
var refusedMountFlags = map[string]struct{}{
	"bind": {}, "rbind": {}, "remount": {}, "move": {},
	"private": {}, "rprivate": {}, "shared": {}, "rshared": {},
	"slave": {}, "rslave": {}, "unbindable": {}, "runbindable": {},
}

// mountOptions splits mount(8)-style options into mount(2) flags and the
// filesystem's data string, and adds the SELinux context of label.
func mountOptions(opts []string, label string) (flags uintptr, data string) {
	var fsOpts []string
	for _, o := range opts {
		if f, ok := mountFlags[o]; ok {
			if f.clear {
				flags &^= f.flag
			} else {
				flags |= f.flag
			}
			continue
		}
		fsOpts = append(fsOpts, o)
	}
	if label != "" {
		fsOpts = append(fsOpts, fmt.Sprintf("context=%q", label))
	}
	return flags, strings.Join(fsOpts, ",")
}

// selinuxEnabled reports whether SELinux is active: selinuxfs is mounted
// where the kernel puts it.
func selinuxEnabled() bool {
	var st unix.Statfs_t
	return unix.Statfs("/sys/fs/selinux", &st) == nil && uint32(st.Type) == unix.SELINUX_MAGIC
}
