// Command dmbench times device-mapper operations done through the devmapper
// package against the same operations done with the dmsetup CLI, side by
// side in one run, on a thin pool over two loop devices. It needs root and
// dm-thin-pool; `make bench` runs it in the test VM.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/dmthin/dmthin/devmapper"
	"github.com/dmthin/dmthin/loopback"
)

func main() {
	n := flag.Int("n", 100, "operations per measurement")
	flag.Parse()
	if err := run(*n); err != nil {
		fmt.Fprintln(os.Stderr, "dmbench:", err)
		os.Exit(1)
	}
}

type result struct {
	op             string
	ioctl, dmsetup time.Duration
}

func run(n int) error {
	dmsetup, err := exec.LookPath("dmsetup")
	if err != nil {
		return fmt.Errorf("dmsetup not found: %w", err)
	}
	c, err := devmapper.Open(devmapper.Options{})
	if err != nil {
		return err
	}
	defer c.Close()
	dir, err := os.MkdirTemp("", "dmbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var loops []*loopback.Device
	defer func() {
		for _, l := range loops {
			_ = l.Detach()
		}
	}()
	attach := func(name string, size int64) (devmapper.Dev, error) {
		p := filepath.Join(dir, name)
		if err := loopback.CreateSparse(p, size); err != nil {
			return devmapper.Dev{}, err
		}
		l, err := loopback.Attach(p, loopback.Options{})
		if err != nil {
			return devmapper.Dev{}, err
		}
		loops = append(loops, l)
		maj, min := l.Dev()
		return devmapper.Dev{Major: maj, Minor: min}, nil
	}
	meta, err := attach("meta", 64<<20)
	if err != nil {
		return err
	}
	data, err := attach("data", 1<<30)
	if err != nil {
		return err
	}
	pool := "dmbench-pool"
	pinfo, err := c.Activate(pool, "", devmapper.Table{{Length: (1 << 30) / 512,
		Params: devmapper.ThinPoolParams{Metadata: meta, Data: data, BlockSize: 128}}}, false)
	if err != nil {
		return err
	}
	defer c.Remove(pool, devmapper.RemoveOptions{})
	if _, err := c.Message(pool, 0, "create_thin 0"); err != nil {
		return err
	}

	cli := func(args ...string) error {
		out, err := exec.Command(dmsetup, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("dmsetup %v: %v: %s", args, err, out)
		}
		return nil
	}
	timeIt := func(f func(i int) error, base int) (time.Duration, error) {
		start := time.Now()
		for i := 0; i < n; i++ {
			if err := f(base + i); err != nil {
				return 0, err
			}
		}
		return time.Since(start) / time.Duration(n), nil
	}
	thinTable := func(id int) string { return fmt.Sprintf("0 2048 thin %s %d", pinfo.Dev, id) }
	name := func(id int) string { return fmt.Sprintf("dmbench-%d", id) }
	var results []result

	// create_snap: ids 1..n through ioctls, n+1..2n through dmsetup.
	r := result{op: "create_snap message"}
	if r.ioctl, err = timeIt(func(id int) error {
		_, err := c.Message(pool, 0, fmt.Sprintf("create_snap %d 0", id))
		return err
	}, 1); err != nil {
		return err
	}
	if r.dmsetup, err = timeIt(func(id int) error {
		return cli("message", pool, "0", fmt.Sprintf("create_snap %d 0", id))
	}, n+1); err != nil {
		return err
	}
	results = append(results, r)

	r = result{op: "activate (create+load+resume)"}
	if r.ioctl, err = timeIt(func(id int) error {
		_, err := c.Activate(name(id), "", devmapper.Table{{Length: 2048, Params: devmapper.ThinParams{Pool: pinfo.Dev, ID: devmapper.ThinID(id)}}}, false)
		return err
	}, 1); err != nil {
		return err
	}
	if r.dmsetup, err = timeIt(func(id int) error {
		return cli("create", "--noudevsync", name(id), "--table", thinTable(id))
	}, n+1); err != nil {
		return err
	}
	results = append(results, r)

	r = result{op: "remove"}
	if r.ioctl, err = timeIt(func(id int) error { return c.Remove(name(id), devmapper.RemoveOptions{}) }, 1); err != nil {
		return err
	}
	if r.dmsetup, err = timeIt(func(id int) error { return cli("remove", "--noudevsync", name(id)) }, n+1); err != nil {
		return err
	}
	results = append(results, r)

	r = result{op: "delete message"}
	if r.ioctl, err = timeIt(func(id int) error {
		_, err := c.Message(pool, 0, fmt.Sprintf("delete %d", id))
		return err
	}, 1); err != nil {
		return err
	}
	if r.dmsetup, err = timeIt(func(id int) error {
		return cli("message", pool, "0", fmt.Sprintf("delete %d", id))
	}, n+1); err != nil {
		return err
	}
	results = append(results, r)

	r = result{op: "exec /bin/true (for scale)"}
	if r.dmsetup, err = timeIt(func(int) error { return exec.Command("true").Run() }, 0); err != nil {
		return err
	}
	results = append(results, r)

	fmt.Printf("\ndevmapper package vs dmsetup CLI, %d operations each, same run\n", n)
	fmt.Printf("%-32s %14s %14s %8s\n", "operation", "dmsetup/op", "ioctl/op", "speedup")
	for _, r := range results {
		ratio := "-"
		io := "-"
		if r.ioctl > 0 {
			ratio = fmt.Sprintf("%.1fx", float64(r.dmsetup)/float64(r.ioctl))
			io = r.ioctl.Round(time.Microsecond).String()
		}
		fmt.Printf("%-32s %14s %14s %8s\n", r.op, r.dmsetup.Round(time.Microsecond), io, ratio)
	}
	return nil
}
