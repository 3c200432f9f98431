// Command poolbench times thin device operations through the thinpool
// package next to the raw ioctl sequence for the same kernel work (the
// lower bound) and the dmsetup CLI (what other projects shell out to), in
// one run; then how snapshot and activate times change as the pool holds
// 10, 1,000 and 10,000 devices, and how long Open takes with them. It needs
// root and dm-thin-pool; `make bench` runs it in the test VM.
//
// With -rounds R it only compares snapshot and delete through thinpool with
// the single raw kernel message each, in R rounds that alternate which side
// goes first, and prints every round's ratios and their medians.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/dmthin/dmthin/devmapper"
	"github.com/dmthin/dmthin/thinpool"
)

func main() {
	n := flag.Int("n", 100, "operations per measurement")
	levels := flag.String("levels", "10,1000,10000", "device counts for the scaling table")
	rounds := flag.Int("rounds", 0, "only the snapshot/delete comparison with raw messages, in this many interleaved rounds of n operations")
	flag.Parse()
	run := run
	if *rounds > 0 {
		run = func(n int, _ string) error { return runRounds(n, *rounds) }
	}
	if err := run(*n, *levels); err != nil {
		fmt.Fprintln(os.Stderr, "poolbench:", err)
		os.Exit(1)
	}
}

func per(d time.Duration, n int) time.Duration { return (d / time.Duration(n)).Round(time.Microsecond) }

func run(n int, levelList string) error {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "poolbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	zero := 0
	opts := thinpool.Options{Root: dir, LoopDataSize: 8 << 30, LoopMetadataSize: 1 << 30, MinFreeSpacePercent: &zero}
	p, err := thinpool.Open(ctx, opts)
	if err != nil {
		return err
	}
	defer func() {
		if p != nil {
			_ = p.Shutdown(ctx)
		}
	}()
	c, err := devmapper.Open(devmapper.Options{})
	if err != nil {
		return err
	}
	defer c.Close()
	dmsetup, err := exec.LookPath("dmsetup")
	if err != nil {
		return err
	}
	cli := func(args ...string) error {
		out, err := exec.Command(dmsetup, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("dmsetup %v: %v: %s", args, err, out)
		}
		return nil
	}
	if _, err := p.Create(ctx, "origin", 64<<20); err != nil {
		return err
	}
	origin, err := p.Get("origin")
	if err != nil {
		return err
	}
	pool := p.Name()
	pdev := p.Dev()
	const rawBase = 1 << 23 // raw ids, far from the package's
	const cliBase = 1<<23 + 1<<22

	type row struct {
		op             string
		lib, raw, cliD time.Duration
	}
	var rows []row
	timeIt := func(f func(i int) error) (time.Duration, error) {
		start := time.Now()
		for i := 0; i < n; i++ {
			if err := f(i); err != nil {
				return 0, err
			}
		}
		return time.Since(start), nil
	}
	name := func(kind string, i int) string { return fmt.Sprintf("pb-%s-%d", kind, i) }
	thinTab := func(id int) devmapper.Table {
		return devmapper.Table{{Length: 64 << 20 / 512, Params: devmapper.ThinParams{Pool: pdev, ID: devmapper.ThinID(id)}}}
	}
	steps := []struct {
		op       string
		lib, raw func(i int) error
		cli      func(i int) error
	}{
		{"snapshot", func(i int) error {
			_, err := p.Snapshot(ctx, name("lib", i), "origin", 0)
			return err
		}, func(i int) error {
			_, err := c.Message(pool, 0, fmt.Sprintf("create_snap %d %d", rawBase+i, origin.ID))
			return err
		}, func(i int) error {
			return cli("message", pool, "0", fmt.Sprintf("create_snap %d %d", cliBase+i, origin.ID))
		}},
		{"activate", func(i int) error {
			_, err := p.Activate(ctx, name("lib", i))
			return err
		}, func(i int) error {
			_, err := c.Activate(name("raw", i), "", thinTab(rawBase+i), false)
			return err
		}, func(i int) error {
			return cli("create", "--noudevsync", name("cli", i), "--table", thinTab(cliBase+i).String())
		}},
		{"deactivate", func(i int) error {
			return p.Deactivate(ctx, name("lib", i), false)
		}, func(i int) error {
			return c.Remove(name("raw", i), devmapper.RemoveOptions{})
		}, func(i int) error {
			return cli("remove", "--noudevsync", name("cli", i))
		}},
		{"delete", func(i int) error {
			return p.Delete(ctx, name("lib", i), thinpool.DeleteOptions{})
		}, func(i int) error {
			_, err := c.Message(pool, 0, fmt.Sprintf("delete %d", rawBase+i))
			return err
		}, func(i int) error {
			return cli("message", pool, "0", fmt.Sprintf("delete %d", cliBase+i))
		}},
	}
	for _, s := range steps {
		var r row
		r.op = s.op
		if r.lib, err = timeIt(s.lib); err != nil {
			return fmt.Errorf("%s via thinpool: %w", s.op, err)
		}
		if r.raw, err = timeIt(s.raw); err != nil {
			return fmt.Errorf("%s via raw ioctls: %w", s.op, err)
		}
		if r.cliD, err = timeIt(s.cli); err != nil {
			return fmt.Errorf("%s via dmsetup: %w", s.op, err)
		}
		rows = append(rows, r)
	}
	fmt.Printf("\nthinpool vs raw ioctls vs dmsetup CLI, %d operations each, same run\n", n)
	fmt.Printf("%-12s %12s %12s %12s %14s %14s\n", "operation", "thinpool/op", "raw/op", "dmsetup/op", "thinpool/raw", "dmsetup/thinpool")
	for _, r := range rows {
		fmt.Printf("%-12s %12s %12s %12s %13.2fx %13.1fx\n", r.op, per(r.lib, n), per(r.raw, n), per(r.cliD, n),
			float64(r.lib)/float64(r.raw), float64(r.cliD)/float64(r.lib))
	}
	fmt.Println("(thinpool's snapshot and delete also persist the intent and outcome in bbolt and move the pool's transaction id)")

	// Scaling.
	var levels []int
	for _, f := range splitComma(levelList) {
		var v int
		if _, err := fmt.Sscan(f, &v); err != nil {
			return fmt.Errorf("bad level %q", f)
		}
		levels = append(levels, v)
	}
	fmt.Printf("\nscaling: per-operation times with N devices in the pool (%d operations each)\n", n)
	fmt.Printf("%8s %12s %12s %14s\n", "devices", "snapshot/op", "activate/op", "Open")
	have := 1 // origin
	for _, level := range levels {
		for ; have < level; have++ {
			if _, err := p.Create(ctx, fmt.Sprintf("fill-%d", have), 1<<20); err != nil {
				return fmt.Errorf("fill to %d: %w", level, err)
			}
		}
		snap, err := timeIt(func(i int) error {
			_, err := p.Snapshot(ctx, name(fmt.Sprintf("s%d", level), i), "origin", 0)
			return err
		})
		if err != nil {
			return err
		}
		act, err := timeIt(func(i int) error {
			_, err := p.Activate(ctx, name(fmt.Sprintf("s%d", level), i))
			return err
		})
		if err != nil {
			return err
		}
		for i := 0; i < n; i++ {
			if err := p.Delete(ctx, name(fmt.Sprintf("s%d", level), i), thinpool.DeleteOptions{}); err != nil {
				return err
			}
		}
		if err := p.Close(); err != nil {
			return err
		}
		start := time.Now()
		p, err = thinpool.Open(ctx, opts)
		if err != nil {
			return err
		}
		open := time.Since(start)
		fmt.Printf("%8d %12s %12s %14s\n", have, per(snap, n), per(act, n), open.Round(time.Millisecond))
	}
	_ = filepath.Join
	return nil
}

func splitComma(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			if i > start {
				out = append(out, s[start:i])
			}
			start = i + 1
		}
	}
	return out
}
