//go:build dmthin_kernel

// Examples that need a device-mapper: built only into the kernel test
// binaries (hack/vm.sh test adds the dmthin_kernel tag), where they run.

package graphdriver_test

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/dmthin/dmthin/graphdriver"
)

// An image layer, a container layer on top of it, and what changed: the
// calls a Docker-style engine makes.
func ExampleInit() {
	home, err := os.MkdirTemp("", "graphdriver-example-")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(home)
	// A small loopback pool; nil logger: log nothing.
	d, err := graphdriver.Init(home, []string{
		"dm.loopdatasize=2G", "dm.loopmetadatasize=64M", "dm.basesize=256M", "dm.mountopt=noatime",
	}, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer func() {
		if err := d.Cleanup(); err != nil {
			fmt.Println(err)
		}
	}()

	// The image layer: unpacked once, then read-only.
	if err := d.Create("image", "", nil); err != nil {
		fmt.Println(err)
		return
	}
	root, err := d.Get("image", "")
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := os.WriteFile(filepath.Join(root, "hello"), []byte("from the image\n"), 0o644); err != nil {
		fmt.Println(err)
	}
	if err := d.Put("image"); err != nil {
		fmt.Println(err)
	}

	// The container's layer: a thin snapshot of the image.
	if err := d.CreateReadWrite("container", "image", nil); err != nil {
		fmt.Println(err)
		return
	}
	root, err = d.Get("container", "")
	if err != nil {
		fmt.Println(err)
		return
	}
	data, err := os.ReadFile(filepath.Join(root, "hello"))
	if err != nil {
		fmt.Println(err)
	}
	fmt.Printf("container sees: %s", data)
	if err := os.WriteFile(filepath.Join(root, "new"), nil, 0o644); err != nil {
		fmt.Println(err)
	}
	if err := d.Put("container"); err != nil {
		fmt.Println(err)
	}

	changes, err := d.Changes("container", "image")
	if err != nil {
		fmt.Println(err)
	}
	for _, c := range changes {
		fmt.Println("changed:", c.String())
	}
	fmt.Println("remove:", d.Remove("container"), d.Remove("image"))
	// Output:
	// container sees: from the image
	// changed: A /new
	// remove: <nil> <nil>
}
