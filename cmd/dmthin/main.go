// Command dmthin is the operator's tool for a dmthin pool: the pool under
// a graph driver's home (dockerd --data-root .../devicemapper style, the
// driver's Init root) or under a containerd snapshotter's root_path.
//
//	dmthin status --root DIR [--json]
//	dmthin ls     --root DIR [--json]
//	dmthin tree   --root DIR [--json]
//	dmthin check  --root DIR [--json]
//	dmthin gc     --root DIR [--yes] [--discard] [--json]
//	dmthin du     --root DIR [--json] LAYER...
//	dmthin grow   --root DIR [--data SIZE] [--metadata SIZE] [--json]
//
// status, ls, tree, check and du only read: they work while the engine
// runs (they read a consistent copy of the pool's records and the kernel's
// state, never the engine's lock). gc and grow change the pool and need it
// to themselves: while another process has it open they refuse and say so.
//
// Exit status: 0 success (check: healthy), 1 check found problems or gc
// could not remove everything, 2 bad input or a failure, 3 check could not
// read every view (thin_dump missing, metadata unreadable).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], stdio())
	stop()
	os.Exit(code)
}
