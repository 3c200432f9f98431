package graphdriver

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/opencontainers/selinux/go-selinux"
	"github.com/opencontainers/selinux/go-selinux/label"
	"golang.org/x/sys/unix"
)

// mountFlags are the mount(8) options that are flags of mount(2) rather than
// filesystem data. clear: the option turns the flag off.
//
// github.com/moby/sys/mount has the same table, but unexported: it is only
// reachable through mount.Mount, which also takes the bind and propagation
// options the driver refuses, and lacks lazytime. The flags themselves are
// x/sys/unix's.
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

// refusedMountOptions are options dm.mountopt may not carry, with the
// reason: the driver decides what kind of mount a layer is and sets its
// SELinux context from the mount label.
var refusedMountOptions = map[string]string{
	"bind": "the driver decides how layers are mounted", "rbind": "the driver decides how layers are mounted",
	"remount": "the driver decides how layers are mounted", "move": "the driver decides how layers are mounted",
	"private": "the driver decides how layers are mounted", "rprivate": "the driver decides how layers are mounted",
	"shared": "the driver decides how layers are mounted", "rshared": "the driver decides how layers are mounted",
	"slave": "the driver decides how layers are mounted", "rslave": "the driver decides how layers are mounted",
	"unbindable": "the driver decides how layers are mounted", "runbindable": "the driver decides how layers are mounted",
	"context": "the SELinux context comes from the mount label Get is given", "fscontext": "the SELinux context comes from the mount label Get is given",
	"defcontext": "the SELinux context comes from the mount label Get is given", "rootcontext": "the SELinux context comes from the mount label Get is given",
	"journal_dev": "a layer has the internal journal mkfs gave it", "journal_path": "a layer has the internal journal mkfs gave it",
	"logdev": "a layer has the internal log mkfs gave it", "rtdev": "a layer has no realtime section",
}

// fsOption is the value a filesystem's mount option takes.
type fsOption struct {
	flag    bool     // may stand alone (no "=")
	number  bool     // takes an unsigned number (signed for mb_optimize_scan)
	values  []string // takes one of these
	str     bool     // takes any string (empty too)
	removed bool     // the kernel ignores it with a warning
}

// ext4Options are the mount options of ext4 (fs/ext4/super.c,
// ext4_param_specs, as of Linux 6.1; Documentation/filesystems/ext4.rst).
var ext4Options = map[string]fsOption{
	"grpid": {flag: true}, "bsdgroups": {flag: true}, "nogrpid": {flag: true}, "sysvgroups": {flag: true},
	"resgid": {number: true}, "resuid": {number: true}, "sb": {number: true},
	"errors":  {values: []string{"continue", "panic", "remount-ro"}},
	"nouid32": {flag: true}, "debug": {flag: true},
	"user_xattr": {flag: true}, "nouser_xattr": {flag: true}, "acl": {flag: true}, "noacl": {flag: true},
	"norecovery": {flag: true}, "noload": {flag: true},
	"commit": {number: true}, "min_batch_time": {number: true}, "max_batch_time": {number: true},
	"journal_checksum": {flag: true}, "nojournal_checksum": {flag: true}, "journal_async_commit": {flag: true},
	"abort":     {flag: true},
	"data":      {values: []string{"journal", "ordered", "writeback"}},
	"data_err":  {values: []string{"abort", "ignore"}},
	"usrjquota": {str: true}, "grpjquota": {str: true},
	"jqfmt":    {values: []string{"vfsold", "vfsv0", "vfsv1"}},
	"grpquota": {flag: true}, "quota": {flag: true}, "noquota": {flag: true}, "usrquota": {flag: true}, "prjquota": {flag: true},
	"barrier": {flag: true, number: true}, "nobarrier": {flag: true},
	"dax":    {flag: true, values: []string{"always", "never", "inode"}},
	"stripe": {number: true}, "delalloc": {flag: true}, "nodelalloc": {flag: true},
	"warn_on_error": {flag: true}, "nowarn_on_error": {flag: true},
	"debug_want_extra_isize": {number: true},
	"block_validity":         {flag: true}, "noblock_validity": {flag: true},
	"inode_readahead_blks": {number: true}, "journal_ioprio": {number: true},
	"auto_da_alloc": {flag: true, number: true}, "noauto_da_alloc": {flag: true},
	"dioread_nolock": {flag: true}, "nodioread_nolock": {flag: true}, "dioread_lock": {flag: true},
	"discard": {flag: true}, "nodiscard": {flag: true},
	"init_itable": {flag: true, number: true}, "noinit_itable": {flag: true},
	"max_dir_size_kb":       {number: true},
	"test_dummy_encryption": {flag: true, str: true},
	"inlinecrypt":           {flag: true}, "nombcache": {flag: true}, "no_mbcache": {flag: true},
	"no_prefetch_block_bitmaps": {flag: true}, "mb_optimize_scan": {number: true},
	"seclabel": {flag: true},
	// Accepted by the kernel and ignored, with a warning.
	"bsddf": {flag: true, removed: true}, "minixdf": {flag: true, removed: true},
	"oldalloc": {flag: true, removed: true}, "orlov": {flag: true, removed: true},
	"bh": {flag: true, removed: true}, "nobh": {flag: true, removed: true},
	"mblk_io_submit": {flag: true, removed: true}, "nomblk_io_submit": {flag: true, removed: true},
	"prefetch_block_bitmaps": {flag: true, removed: true}, "i_version": {flag: true, removed: true},
}

// xfsOptions are the mount options of XFS (fs/xfs/xfs_super.c,
// xfs_fs_parameters, as of Linux 6.1; Documentation/admin-guide/xfs.rst).
// Sizes (allocsize, logbsize) take a suffix (64k), so any string.
var xfsOptions = map[string]fsOption{
	"allocsize": {str: true}, "logbsize": {str: true}, "logbufs": {number: true},
	"sunit": {number: true}, "swidth": {number: true},
	"attr2": {flag: true}, "noattr2": {flag: true},
	"discard": {flag: true}, "nodiscard": {flag: true},
	"grpid": {flag: true}, "bsdgroups": {flag: true}, "nogrpid": {flag: true}, "sysvgroups": {flag: true},
	"filestreams": {flag: true}, "ikeep": {flag: true}, "noikeep": {flag: true},
	"inode32": {flag: true}, "inode64": {flag: true}, "largeio": {flag: true}, "nolargeio": {flag: true},
	"noalign": {flag: true}, "norecovery": {flag: true}, "nouuid": {flag: true},
	"swalloc": {flag: true}, "wsync": {flag: true},
	"noquota": {flag: true}, "quota": {flag: true}, "usrquota": {flag: true}, "uquota": {flag: true},
	"qnoenforce": {flag: true}, "uqnoenforce": {flag: true},
	"grpquota": {flag: true}, "gquota": {flag: true}, "gqnoenforce": {flag: true},
	"prjquota": {flag: true}, "pquota": {flag: true}, "pqnoenforce": {flag: true},
	"dax":      {flag: true, values: []string{"always", "never", "inode"}},
	"seclabel": {flag: true},
	// Removed (Linux 4.19): the kernel refuses them.
	"barrier": {flag: true, removed: true}, "nobarrier": {flag: true, removed: true},
}

// checkMountOption reports whether o (one dm.mountopt option) is a mount
// flag or an option of filesystem fs ("ext4" or "xfs") with a value it
// takes.
func checkMountOption(fs, o string) error {
	if o == "" {
		return errors.New("empty mount option")
	}
	if _, ok := mountFlags[o]; ok {
		return nil
	}
	key, val, hasVal := strings.Cut(o, "=")
	if why, ok := refusedMountOptions[key]; ok {
		return errors.New(why)
	}
	options := ext4Options
	if fs == FilesystemXFS {
		options = xfsOptions
	}
	spec, ok := options[key]
	switch {
	case !ok:
		return fmt.Errorf("unknown mount option: neither a mount flag nor an %s option", fs)
	case spec.removed:
		return fmt.Errorf("removed from %s: the kernel ignores or refuses it", fs)
	case !hasVal:
		if !spec.flag {
			return errors.New("needs a value")
		}
		return nil
	case spec.str:
		return nil
	case spec.number:
		if _, err := strconv.ParseUint(val, 10, 32); err != nil {
			return fmt.Errorf("want a number: %w", err)
		}
		return nil
	case spec.values != nil:
		if !slices.Contains(spec.values, val) {
			return fmt.Errorf("want one of %s", strings.Join(spec.values, ", "))
		}
		return nil
	}
	return errors.New("takes no value")
}

// mountOptions splits mount(8)-style options into mount(2) flags and the
// filesystem's data string, and adds the SELinux context of label
// (go-selinux's label.FormatMountLabel).
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
	return flags, formatMountLabel(strings.Join(fsOpts, ","), label)
}

// formatMountLabel is label.FormatMountLabel; the name keeps it apart from
// mountOptions' parameter.
var formatMountLabel = label.FormatMountLabel

// selinuxEnabled reports whether SELinux is active (go-selinux: selinuxfs
// mounted and enforcing or permissive).
func selinuxEnabled() bool { return selinux.GetEnabled() }
