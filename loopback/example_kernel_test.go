//go:build dmthin_kernel

// Examples that need root and loop devices: built only into the kernel test
// binaries (hack/vm.sh test adds the dmthin_kernel tag), where they run.

package loopback_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/dmthin/dmthin/loopback"
)

// A sparse file on a loop device that the kernel unbinds at its last close.
func ExampleAttach() {
	dir, err := os.MkdirTemp("", "loopback-example-")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "disk.img")
	if err := loopback.CreateSparse(path, 64<<20); err != nil {
		fmt.Println(err)
		return
	}

	dev, err := loopback.Attach(path, loopback.Options{Autoclear: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	size, err := dev.Size()
	fmt.Println("size:", size, err)
	st, err := dev.Status()
	fmt.Println("autoclear:", st.Flags.Has(loopback.FlagAutoclear), err)
	fmt.Println("node:", strings.HasPrefix(dev.Path(), "/dev/loop"))
	fmt.Println("detach:", dev.Detach())
	// Output:
	// size: 67108864 <nil>
	// autoclear: true <nil>
	// node: true
	// detach: <nil>
}
