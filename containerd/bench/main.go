// Command bench measures, side by side in one run, a container's snapshot
// life through three containerd snapshotters: dmthin's, containerd's own
// devmapper snapshotter (on a thin pool made with dmsetup over loop
// devices, the same kind of pool dmthin makes for itself) and containerd's
// overlayfs snapshotter. The methods are interleaved round by round so that
// a noisy host weighs on all of them alike; it prints medians and ratios.
//
// Per round and snapshotter:
//
//	life:  Prepare from a committed image layer, mount, write a file,
//	       unmount, Remove
//	empty: Prepare of a snapshot without a parent, Remove
//
// It needs root, a kernel with dm-thin-pool, dmsetup and mkfs.ext4 (make
// bench runs it in the VM).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/plugins/snapshots/devmapper"
	"github.com/containerd/containerd/v2/plugins/snapshots/devmapper/dmsetup"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay"
	"github.com/containerd/log"
	"github.com/sirupsen/logrus"

	"github.com/dmthin/dmthin/containerd"
	"github.com/dmthin/dmthin/loopback"
)

type subject struct {
	name string
	sn   snapshots.Snapshotter
	life []time.Duration
	emp  []time.Duration
}

func main() {
	rounds := flag.Int("rounds", 30, "rounds (each runs every snapshotter once per measure)")
	dir := flag.String("dir", "", "work directory (default: a new one under $TMPDIR)")
	flag.Parse()
	if err := run(*rounds, *dir); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(rounds int, dir string) (err error) {
	_ = log.SetLevel("error")
	logrus.SetLevel(logrus.ErrorLevel)
	if dir == "" {
		if dir, err = os.MkdirTemp("", "snapshotter-bench-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	ctx := context.Background()

	dm, err := containerd.New(ctx, containerd.Config{RootPath: filepath.Join(dir, "dmthin"), BaseImageSize: "1GB",
		LoopbackDataSize: "8GB", LoopbackMetadataSize: "128MB"}, nil)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, dm.Close()) }()

	pool, stopPool, err := dmsetupPool(dir)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, stopPool()) }()
	cd, err := devmapper.NewSnapshotter(ctx, &devmapper.Config{RootPath: filepath.Join(dir, "ctrd-devmapper"), PoolName: pool, BaseImageSize: "1GB"})
	if err != nil {
		return fmt.Errorf("containerd devmapper snapshotter: %w", err)
	}
	defer func() { err = errors.Join(err, cd.Close()) }()

	ov, err := overlay.NewSnapshotter(filepath.Join(dir, "overlay"))
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, ov.Close()) }()

	subjects := []*subject{{name: "dmthin", sn: dm}, {name: "containerd devmapper", sn: cd}, {name: "overlayfs", sn: ov}}
	mp := filepath.Join(dir, "mnt")
	if err := os.MkdirAll(mp, 0o755); err != nil {
		return err
	}
	for _, s := range subjects {
		if err := imageLayer(ctx, s.sn, mp); err != nil {
			return fmt.Errorf("%s: image layer: %w", s.name, err)
		}
	}
	for r := 0; r < rounds; r++ {
		// Rotate the order each round.
		for i := range subjects {
			s := subjects[(i+r)%len(subjects)]
			d, err := life(ctx, s.sn, mp, fmt.Sprintf("c-%d", r))
			if err != nil {
				return fmt.Errorf("%s: container life: %w", s.name, err)
			}
			s.life = append(s.life, d)
			d, err = empty(ctx, s.sn, fmt.Sprintf("e-%d", r))
			if err != nil {
				return fmt.Errorf("%s: empty prepare: %w", s.name, err)
			}
			s.emp = append(s.emp, d)
		}
	}
	fmt.Printf("containerd snapshotters, %d rounds interleaved, medians:\n", rounds)
	fmt.Printf("%-22s %14s %14s\n", "", "container life", "empty Prepare")
	for _, s := range subjects {
		fmt.Printf("%-22s %14s %14s\n", s.name, median(s.life).Round(100*time.Microsecond), median(s.emp).Round(100*time.Microsecond))
	}
	base := subjects[0]
	for _, s := range subjects[1:] {
		fmt.Printf("%s / dmthin: container life %.2fx, empty Prepare %.2fx\n", s.name,
			float64(median(s.life))/float64(median(base.life)), float64(median(s.emp))/float64(median(base.emp)))
	}
	return nil
}

// imageLayer commits "image": a layer with a few files, as a pull would.
func imageLayer(ctx context.Context, sn snapshots.Snapshotter, mp string) error {
	m, err := sn.Prepare(ctx, "image-extract", "")
	if err != nil {
		return err
	}
	if err := mount.All(m, mp); err != nil {
		return err
	}
	var werr error
	for i := 0; i < 50; i++ {
		werr = errors.Join(werr, os.WriteFile(filepath.Join(mp, fmt.Sprintf("file-%d", i)), make([]byte, 16<<10), 0o644))
	}
	if err := errors.Join(werr, mount.UnmountAll(mp, 0)); err != nil {
		return err
	}
	return sn.Commit(ctx, "image", "image-extract")
}

// life is one container's snapshot life.
func life(ctx context.Context, sn snapshots.Snapshotter, mp, key string) (time.Duration, error) {
	t := time.Now()
	m, err := sn.Prepare(ctx, key, "image")
	if err != nil {
		return 0, err
	}
	if err := mount.All(m, mp); err != nil {
		return 0, err
	}
	werr := os.WriteFile(filepath.Join(mp, "container.log"), make([]byte, 4096), 0o644)
	if err := errors.Join(werr, mount.UnmountAll(mp, 0)); err != nil {
		return 0, err
	}
	if err := sn.Remove(ctx, key); err != nil {
		return 0, err
	}
	return time.Since(t), nil
}

func empty(ctx context.Context, sn snapshots.Snapshotter, key string) (time.Duration, error) {
	t := time.Now()
	if _, err := sn.Prepare(ctx, key, ""); err != nil {
		return 0, err
	}
	if err := sn.Remove(ctx, key); err != nil {
		return 0, err
	}
	return time.Since(t), nil
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// dmsetupPool makes the pool containerd's devmapper snapshotter needs, as
// its documentation has an operator make it: sparse files on loop devices
// and `dmsetup create` of a thin-pool, with the same sizes and block size
// as dmthin's own pool above.
func dmsetupPool(dir string) (string, func() error, error) {
	var stops []func() error
	stop := func() error {
		var errs []error
		for i := len(stops) - 1; i >= 0; i-- {
			errs = append(errs, stops[i]())
		}
		return errors.Join(errs...)
	}
	var devs []*loopback.Device
	for _, f := range []struct {
		name string
		size int64
	}{{"data", 8 << 30}, {"meta", 128 << 20}} {
		path := filepath.Join(dir, "ctrd-pool-"+f.name)
		if err := loopback.CreateSparse(path, f.size); err != nil {
			return "", nil, errors.Join(err, stop())
		}
		d, err := loopback.Attach(path, loopback.Options{})
		if err != nil {
			return "", nil, errors.Join(err, stop())
		}
		stops = append(stops, d.Detach)
		devs = append(devs, d)
	}
	const name = "bench-ctrd-pool"
	if err := dmsetup.CreatePool(name, devs[0].Path(), devs[1].Path(), 128); err != nil {
		return "", nil, errors.Join(fmt.Errorf("dmsetup create %s: %w", name, err), stop())
	}
	stops = append(stops, func() error { return dmsetup.RemoveDevice(name, dmsetup.RemoveWithForce) })
	return name, stop, nil
}
