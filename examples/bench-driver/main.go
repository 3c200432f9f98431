// Command bench-driver measures the storage driver next to what it replaces,
// side by side in one run, and prints the ratios:
//
//  1. a container layer's life, Create + Get + Put + Remove, through the
//     driver vs the same kernel work done with the dmsetup and mount CLIs
//     (create_snap message, dmsetup create, mount, umount, dmsetup remove,
//     delete message), as a shell script or an older engine would;
//  2. ApplyDiff of a layer of many small files vs writing the same files to
//     a plain directory (and, for the cost of the filesystem alone, to ext4
//     on a loop device without the device-mapper).
//
// It needs root, dm-thin-pool, dmsetup, mount, umount and mkfs.ext4; `make
// bench` runs it in the test VM, where emulation inflates every time:
// compare the ratios, not the absolute figures.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/dmthin/dmthin/ext4"
	"github.com/dmthin/dmthin/graphdriver"
	"github.com/dmthin/dmthin/thinpool"
)

func main() {
	n := flag.Int("n", 30, "layer lives per side for the lifecycle table")
	files := flag.Int("files", 2000, "files in the ApplyDiff layer")
	reps := flag.Int("reps", 3, "repetitions of each ApplyDiff measurement")
	flag.Parse()
	if err := run(*n, *files, *reps); err != nil {
		fmt.Fprintln(os.Stderr, "bench-driver:", err)
		os.Exit(1)
	}
}

func run(n, files, reps int) (err error) {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "bench-driver-")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, os.RemoveAll(dir)) }()

	const baseSize = 256 << 20
	d, err := graphdriver.Init(filepath.Join(dir, "driver"), []string{
		"dm.loopdatasize=4G", "dm.loopmetadatasize=256M", "dm.basesize=256M",
		"dm.blkdiscard=false", "dm.min_free_space=0%",
	}, nil)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, d.Cleanup()) }()

	cli, err := newCLIPool(ctx, filepath.Join(dir, "cli"), baseSize)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, cli.close(ctx)) }()

	if err := lifecycle(d, cli, n); err != nil {
		return err
	}
	return applyDiff(d, dir, files, reps)
}

// cliPool is the baseline's pool: made with thinpool (setup is not timed),
// with an "origin" thin device formatted like the driver's base device.
// The timed steps then drive it with dmsetup and mount, on thin ids far
// from thinpool's.
type cliPool struct {
	pool     *thinpool.Pool
	originID uint32
	size     int64
	mnt      string
}

func newCLIPool(ctx context.Context, root string, size int64) (_ *cliPool, err error) {
	zero := 0
	p, err := thinpool.Open(ctx, thinpool.Options{Root: root, LoopDataSize: 4 << 30, LoopMetadataSize: 256 << 20, MinFreeSpacePercent: &zero})
	if err != nil {
		return nil, err
	}
	c := &cliPool{pool: p, size: size, mnt: filepath.Join(root, "mnt")}
	defer func() {
		if err != nil {
			err = errors.Join(err, p.Shutdown(ctx))
		}
	}()
	dev, err := p.Create(ctx, "origin", size)
	if err != nil {
		return nil, err
	}
	c.originID = dev.ID
	node, err := p.Activate(ctx, "origin")
	if err != nil {
		return nil, err
	}
	if err := ext4.Format(ctx, node, ext4.FormatOptions{}); err != nil {
		return nil, err
	}
	if err := p.Deactivate(ctx, "origin", false); err != nil {
		return nil, err
	}
	return c, os.MkdirAll(c.mnt, 0o700)
}

func (c *cliPool) close(ctx context.Context) error { return c.pool.Shutdown(ctx) }

// sh runs a command and reports its output on failure.
func sh(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %v: %w: %s", name, args, err, out)
	}
	return nil
}

type step struct {
	name        string
	driver, cli time.Duration
	driverWhat  string
	cliWhat     string
}

// lifecycle times n layer lives on each side, step by step.
func lifecycle(d *graphdriver.Driver, c *cliPool, n int) error {
	steps := []*step{
		{name: "Create", driverWhat: "Create(id, \"\")", cliWhat: "dmsetup message create_snap"},
		{name: "Get", driverWhat: "Get(id)", cliWhat: "dmsetup create + mount"},
		{name: "Put", driverWhat: "Put(id)", cliWhat: "umount + dmsetup remove"},
		{name: "Remove", driverWhat: "Remove(id)", cliWhat: "dmsetup message delete"},
	}
	timed := func(s *step, dst *time.Duration, f func() error) error {
		start := time.Now()
		err := f()
		*dst += time.Since(start)
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		return nil
	}
	pool := c.pool.Name()
	dev := c.pool.Dev()
	const cliBase = 1 << 23
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("bench-%d", i)
		err := errors.Join(
			timed(steps[0], &steps[0].driver, func() error { return d.Create(id, "", nil) }),
			timed(steps[1], &steps[1].driver, func() error { _, err := d.Get(id, ""); return err }),
			timed(steps[2], &steps[2].driver, func() error { return d.Put(id) }),
			timed(steps[3], &steps[3].driver, func() error { return d.Remove(id) }),
		)
		if err != nil {
			return fmt.Errorf("driver: %w", err)
		}

		thin := cliBase + i
		name := fmt.Sprintf("bench-cli-%d", i)
		mp := filepath.Join(c.mnt, name)
		table := fmt.Sprintf("0 %d thin %d:%d %d", c.size/512, dev.Major, dev.Minor, thin)
		err = errors.Join(
			timed(steps[0], &steps[0].cli, func() error {
				return sh("dmsetup", "message", pool, "0", fmt.Sprintf("create_snap %d %d", thin, c.originID))
			}),
			timed(steps[1], &steps[1].cli, func() error {
				if err := sh("dmsetup", "create", "--noudevsync", name, "--table", table); err != nil {
					return err
				}
				if err := os.Mkdir(mp, 0o700); err != nil {
					return err
				}
				return sh("mount", "-t", "ext4", "/dev/mapper/"+name, mp)
			}),
			timed(steps[2], &steps[2].cli, func() error {
				if err := sh("umount", mp); err != nil {
					return err
				}
				if err := os.Remove(mp); err != nil {
					return err
				}
				return sh("dmsetup", "remove", "--noudevsync", name)
			}),
			timed(steps[3], &steps[3].cli, func() error {
				return sh("dmsetup", "message", pool, "0", fmt.Sprintf("delete %d", thin))
			}),
		)
		if err != nil {
			return fmt.Errorf("CLI: %w", err)
		}
	}

	fmt.Printf("\nA container layer's life: the driver vs the dmsetup and mount CLIs, %d each, same run\n\n", n)
	fmt.Printf("%-8s %-17s %11s   %-29s %11s %9s\n", "step", "driver", "per op", "CLI", "per op", "CLI/driver")
	var totD, totC time.Duration
	for _, s := range steps {
		totD += s.driver
		totC += s.cli
		fmt.Printf("%-8s %-17s %11s   %-29s %11s %8.1fx\n", s.name, s.driverWhat, per(s.driver, n), s.cliWhat, per(s.cli, n),
			float64(s.cli)/float64(s.driver))
	}
	fmt.Printf("%-8s %-17s %11s   %-29s %11s %8.1fx\n", "total", "", per(totD, n), "", per(totC, n), float64(totC)/float64(totD))
	fmt.Println("\nThe driver does more than the CLI sequence: it records every change in its")
	fmt.Println("metadata store (fsync'd) and moves the pool's transaction id, so a crash at any")
	fmt.Println("point is settled at the next start; and Get checks the layer's root directory.")
	return nil
}

func per(d time.Duration, n int) time.Duration {
	return (d / time.Duration(n)).Round(time.Microsecond)
}
