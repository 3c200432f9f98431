package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/dmthin/dmthin/devmapper"
	"github.com/dmthin/dmthin/thinpool"
)

// runRounds times n snapshots and n deletes through thinpool and as the raw
// create_snap and delete messages, in rounds that alternate which side goes
// first, so drift in the VM (page cache, metadata growth) falls on both.
func runRounds(n, rounds int) error {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "poolbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	zero := 0
	p, err := thinpool.Open(ctx, thinpool.Options{Root: dir, LoopDataSize: 8 << 30, LoopMetadataSize: 1 << 30, MinFreeSpacePercent: &zero})
	if err != nil {
		return err
	}
	defer func() { _ = p.Shutdown(ctx) }()
	c, err := devmapper.Open(devmapper.Options{})
	if err != nil {
		return err
	}
	defer c.Close()
	origin, err := p.Create(ctx, "origin", 64<<20)
	if err != nil {
		return err
	}
	const rawBase = 1 << 23 // raw ids, far from the package's
	timeIt := func(f func(i int) error) (time.Duration, error) {
		start := time.Now()
		for i := 0; i < n; i++ {
			if err := f(i); err != nil {
				return 0, err
			}
		}
		return time.Since(start), nil
	}
	lib := map[string]func(int) error{
		"snapshot": func(i int) error {
			_, err := p.Snapshot(ctx, fmt.Sprintf("pb-%d", i), "origin", 0)
			return err
		},
		"delete": func(i int) error {
			return p.Delete(ctx, fmt.Sprintf("pb-%d", i), thinpool.DeleteOptions{})
		},
	}
	raw := map[string]func(int) error{
		"snapshot": func(i int) error {
			_, err := c.Message(p.Name(), 0, fmt.Sprintf("create_snap %d %d", rawBase+i, origin.ID))
			return err
		},
		"delete": func(i int) error {
			_, err := c.Message(p.Name(), 0, fmt.Sprintf("delete %d", rawBase+i))
			return err
		},
	}
	ops := []string{"snapshot", "delete"}
	ratios := map[string][]float64{}
	fmt.Printf("\nthinpool vs the raw message, %d rounds of %d operations each, same run\n", rounds, n)
	fmt.Printf("%5s %-9s %12s %12s %8s\n", "round", "operation", "thinpool/op", "raw/op", "ratio")
	for r := 0; r < rounds; r++ {
		for _, op := range ops {
			sides := []func(int) error{lib[op], raw[op]}
			if r%2 == 1 {
				sides[0], sides[1] = sides[1], sides[0]
			}
			var d [2]time.Duration
			for k, f := range sides {
				if d[k], err = timeIt(f); err != nil {
					return fmt.Errorf("round %d %s: %w", r, op, err)
				}
			}
			if r%2 == 1 {
				d[0], d[1] = d[1], d[0]
			}
			ratio := float64(d[0]) / float64(d[1])
			ratios[op] = append(ratios[op], ratio)
			fmt.Printf("%5d %-9s %12s %12s %7.2fx\n", r, op, per(d[0], n), per(d[1], n), ratio)
		}
	}
	for _, op := range ops {
		v := ratios[op]
		sort.Float64s(v)
		fmt.Printf("median %s thinpool/raw: %.2fx (min %.2fx, max %.2fx)\n", op, v[len(v)/2], v[0], v[len(v)-1])
	}
	return nil
}
