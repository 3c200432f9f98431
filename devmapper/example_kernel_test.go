//go:build dmthin_kernel

// Examples that need a device-mapper: built only into the kernel test
// binaries (hack/vm.sh test adds the dmthin_kernel tag), where they run.

package devmapper_test

import (
	"fmt"
	"os"

	"github.com/dmthin/dmthin/devmapper"
)

// A device's life: create, load a table and resume in one call, read it
// back, remove it.
func ExampleClient_Activate() {
	c, err := devmapper.Open(devmapper.Options{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()

	name := fmt.Sprintf("dmthin-example-%d", os.Getpid())
	table := devmapper.Table{{Length: 2048, Params: devmapper.RawParams{Type: "zero"}}}
	info, err := c.Activate(name, "", table, false)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("live table:", info.LiveTable, "suspended:", info.Suspended)

	live, err := c.Table(name)
	if err != nil {
		fmt.Println(err)
	}
	fmt.Println("targets:", len(live), live[0].Params.TargetType(), live[0].Length, "sectors")

	if err := c.Remove(name, devmapper.RemoveOptions{}); err != nil {
		fmt.Println(err)
	}
	exists, err := c.Exists(name)
	fmt.Println("exists after remove:", exists, err)
	// Output:
	// live table: true suspended: false
	// targets: 1 zero 2048 sectors
	// exists after remove: false <nil>
}
