//go:build dmthin_kernel

// Examples that need a device-mapper: built only into the kernel test
// binaries (hack/vm.sh test adds the dmthin_kernel tag), where they run.

package thinpool_test

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/dmthin/dmthin/thinpool"
)

// A loopback pool with a device and a snapshot of it: what a VM manager
// needs for thin block devices.
func ExampleOpen() {
	root, err := os.MkdirTemp("", "thinpool-example-")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(root)
	ctx := context.Background()
	pool, err := thinpool.Open(ctx, thinpool.Options{Root: root, LoopDataSize: 1 << 30, LoopMetadataSize: 16 << 20})
	if err != nil {
		fmt.Println(err)
		return
	}
	// Shutdown removes the pool's devices from the kernel; the records
	// stay under root for the next Open.
	defer func() {
		if err := pool.Shutdown(ctx); err != nil {
			fmt.Println(err)
		}
	}()

	if _, err := pool.Create(ctx, "golden", 256<<20); err != nil {
		fmt.Println(err)
		return
	}
	if _, err := pool.Snapshot(ctx, "vm1", "golden", 0); err != nil {
		fmt.Println(err)
		return
	}
	node, err := pool.Activate(ctx, "vm1")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("block device:", strings.HasPrefix(node, "/dev/"))

	devices, err := pool.List()
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, d := range devices {
		fmt.Printf("%s: %d MiB, parent %q, active %v\n", d.Name, d.Size>>20, d.Parent, d.Active)
	}
	fmt.Println("deactivate:", pool.Deactivate(ctx, "vm1", false))
	fmt.Println("delete:", pool.Delete(ctx, "vm1", thinpool.DeleteOptions{}))
	st, err := pool.Status(ctx)
	fmt.Println("devices left:", st.Devices, err)
	// Output:
	// block device: true
	// golden: 256 MiB, parent "", active false
	// vm1: 256 MiB, parent "golden", active true
	// deactivate: <nil>
	// delete: <nil>
	// devices left: 1 <nil>
}
