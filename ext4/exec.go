package ext4

import (
	"context"

	"github.com/dmthin/dmthin/internal/toolexec"
)

// The e2fsprogs programs this package runs.
const (
	toolMkfs    = "mkfs.ext4"
	toolTune2fs = "tune2fs"
	toolResize  = "resize2fs"
	toolFsck    = "e2fsck"
)

// sbinDirs are tried after $PATH, which often lacks them for non-root users
// and in minimal service environments. Tests empty it to simulate a machine
// without e2fsprogs.
var sbinDirs = []string{"/usr/sbin", "/sbin"}

func finder() toolexec.Finder {
	return toolexec.Finder{Dirs: sbinDirs, Package: "e2fsprogs", Sentinel: ErrToolMissing}
}

// lookTool finds an e2fsprogs program in $PATH or sbinDirs.
func lookTool(name string) (string, error) { return finder().Look(name) }

// run executes tool with args under ctx (see toolexec.Finder.Run). okCodes
// lists exit statuses other than 0 that count as success (e2fsck uses 1
// for "errors fixed"). On failure the error is an *ExecError (or a
// *ToolMissingError).
func run(ctx context.Context, tool string, okCodes []int, args ...string) error {
	return finder().Run(ctx, tool, okCodes, args...)
}
