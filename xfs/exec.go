package xfs

import (
	"context"

	"github.com/dmthin/dmthin/internal/toolexec"
)

// The xfsprogs programs this package runs.
const (
	toolMkfs   = "mkfs.xfs"
	toolGrowfs = "xfs_growfs"
)

// sbinDirs are tried after $PATH. Tests empty it to simulate a machine
// without xfsprogs.
var sbinDirs = []string{"/usr/sbin", "/sbin"}

func finder() toolexec.Finder {
	return toolexec.Finder{Dirs: sbinDirs, Package: "xfsprogs", Sentinel: ErrToolMissing}
}

func lookTool(name string) (string, error) { return finder().Look(name) }

func run(ctx context.Context, tool string, args ...string) error {
	return finder().Run(ctx, tool, nil, args...)
}
