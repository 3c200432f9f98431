package main

// -phases: where ApplyDiff's time goes on the device path. Each variant is
// a layer store of its own (pool, base, layers) configured differently;
// every round applies the tar once per variant, in a rotated order, with
// GNU tar -xf into a plain directory in the same rotation as the yardstick.
// The steps of ApplyDiff are done one by one, as layerstore.Get, tarapply
// and layerstore.Put do them, and timed separately:
//
//	activate  thin device activated (create, load, resume)
//	mount     ext4 mounted
//	apply     tarapply.Apply without its syncfs
//	syncfs    the one syncfs that makes the layer durable
//	umount    unmount (nothing left to write)
//	deact     thin device removed
//
// With each, the sectors written to the pool's data loop device and to
// the disk holding the loop file (from /sys/block/*/stat), and the pool's
// data blocks provisioned, say what the kernel did for the time.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/internal/tarapply"
	"github.com/dmthin/dmthin/layerstore"
	"github.com/dmthin/dmthin/loopback"
	"github.com/dmthin/dmthin/thinpool"
)

// variant is one configuration of the device path, named by "+"-joined
// tokens: "zero" (the pool zeroes new blocks) or "nozero", "dio" (loop
// devices with direct I/O), "sync" (the apply step is tarapply.Apply with
// Sync, as ApplyDiff calls it; the syncfs step after it has nothing left to
// do), "noatime"/"lazytime" (mount flags); any other token is passed to
// ext4 as mount data (e.g. "commit=30", "nobarrier").
type variant struct {
	name     string
	skipZero bool
	directIO bool
	sync     bool
	flags    uintptr
	data     []string

	store *layerstore.Store
	disk  string // the block device holding the pool's files, e.g. vda
	loop  string // the data loop device, e.g. loop0
}

func parseVariant(s string) (*variant, error) {
	v := &variant{name: s}
	for _, tok := range strings.Split(s, "+") {
		switch tok {
		case "zero":
		case "nozero":
			v.skipZero = true
		case "dio":
			v.directIO = true
		case "sync":
			v.sync = true
		case "noatime":
			v.flags |= unix.MS_NOATIME
		case "lazytime":
			v.flags |= unix.MS_LAZYTIME
		case "":
			return nil, fmt.Errorf("variant %q: empty token", s)
		default:
			v.data = append(v.data, tok)
		}
	}
	return v, nil
}

// phase names, in order.
var phaseNames = []string{"activate", "mount", "apply", "syncfs", "umount", "deact"}

// sample is one application through one variant.
type sample struct {
	d                []time.Duration // per phase
	loopMiB, diskMiB []float64       // per phase: written to the data loop device, to the disk
	provisionedMiB   float64
	total            time.Duration
}

func runPhases(tarFile string, reps int, spec, dir string) (err error) {
	var vs []*variant
	for _, s := range strings.Split(spec, ",") {
		v, err := parseVariant(s)
		if err != nil {
			return err
		}
		vs = append(vs, v)
	}
	ctx := context.Background()
	zero := 0
	for i, v := range vs {
		root := filepath.Join(dir, fmt.Sprintf("store-%d", i))
		v.store, err = layerstore.Open(ctx, layerstore.Options{
			Root: root,
			Pool: thinpool.Options{
				LoopDataSize: 8 << 30, LoopMetadataSize: 512 << 20,
				SkipBlockZeroing: v.skipZero, MinFreeSpacePercent: &zero,
			},
			BaseSize: 2 << 30, Filesystem: "ext4", RootfsDir: "rootfs",
		})
		if err != nil {
			return fmt.Errorf("variant %s: %w", v.name, err)
		}
		defer func() { err = errors.Join(err, v.store.Close()) }()
		st, err := v.store.PoolStatus(ctx)
		if err != nil {
			return err
		}
		if v.loop, err = loopOf(st.DataFile); err != nil {
			return err
		}
		if v.disk, err = diskOf(st.DataFile); err != nil {
			return err
		}
		if v.directIO {
			for _, f := range []string{st.DataFile, st.MetadataFile} {
				if err := setDirectIO(f); err != nil {
					return fmt.Errorf("variant %s: %w", v.name, err)
				}
			}
		}
		fmt.Printf("variant %-32s pool %s, data on /dev/%s over %s\n", v.name, st.Name, v.loop, v.disk)
	}

	samples := map[string][]sample{}
	names := []string{"tar-xf"}
	for _, v := range vs {
		names = append(names, v.name)
	}
	for rep := 0; rep < reps; rep++ {
		for i := range names {
			name := names[(i+rep)%len(names)]
			var s sample
			if name == "tar-xf" {
				dst := filepath.Join(dir, fmt.Sprintf("plain-%d", rep))
				m := method{"tar-xf", func(f, dst string) error { return sh("tar", "-xf", f, "-C", dst) }}
				s.total, err = plain(m, tarFile, dst)
			} else {
				v := vs[slices.IndexFunc(vs, func(v *variant) bool { return v.name == name })]
				s, err = v.apply(ctx, tarFile, rep)
			}
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			samples[name] = append(samples[name], s)
		}
	}
	reportPhases(tarFile, reps, names, samples)
	return nil
}

// apply runs ApplyDiff's steps one by one into a new layer, timing each.
func (v *variant) apply(ctx context.Context, tarFile string, rep int) (s sample, err error) {
	id := fmt.Sprintf("apply-%d", rep)
	if err := v.store.Create(ctx, id, "", 0); err != nil {
		return s, err
	}
	defer func() { err = errors.Join(err, v.store.Remove(ctx, id)) }()
	pool := v.store.Pool()
	dev := layerstore.DeviceName(id)
	before, err := pool.Status(ctx)
	if err != nil {
		return s, err
	}
	mp := filepath.Join(v.store.Root(), "bench-mnt")
	if err := os.MkdirAll(mp, 0o700); err != nil {
		return s, err
	}
	unix.Sync()

	var node string
	steps := []func() error{
		func() (err error) { node, err = pool.Activate(ctx, dev); return err },
		func() error {
			return unix.Mount(node, mp, "ext4", v.flags, strings.Join(v.data, ","))
		},
		func() error {
			return withFile(tarFile, func(r *os.File) error {
				_, err := tarapply.Apply(filepath.Join(mp, "rootfs"), r, tarapply.Options{Sync: v.sync})
				return err
			})
		},
		func() error { return syncfs(mp) },
		func() error { return unix.Unmount(mp, 0) },
		func() error { return pool.Deactivate(ctx, dev, false) },
	}
	start := time.Now()
	for i, step := range steps {
		l0, d0 := sectorsWritten(v.loop), sectorsWritten(v.disk)
		t := time.Now()
		if err := step(); err != nil {
			return s, fmt.Errorf("%s: %w", phaseNames[i], err)
		}
		s.d = append(s.d, time.Since(t))
		s.loopMiB = append(s.loopMiB, float64(sectorsWritten(v.loop)-l0)/2048)
		s.diskMiB = append(s.diskMiB, float64(sectorsWritten(v.disk)-d0)/2048)
	}
	s.total = time.Since(start)
	after, err := pool.Status(ctx)
	if err != nil {
		return s, err
	}
	s.provisionedMiB = float64(after.DataUsed-before.DataUsed) / (1 << 20)
	return s, nil
}

func reportPhases(file string, reps int, names []string, samples map[string][]sample) {
	med := func(ds []time.Duration) time.Duration {
		s := slices.Clone(ds)
		slices.Sort(s)
		return s[len(s)/2]
	}
	medf := func(fs []float64) float64 {
		s := slices.Clone(fs)
		slices.Sort(s)
		return s[len(s)/2]
	}
	col := func(name string, f func(sample) time.Duration) time.Duration {
		var ds []time.Duration
		for _, s := range samples[name] {
			ds = append(ds, f(s))
		}
		return med(ds)
	}
	base := col("tar-xf", func(s sample) time.Duration { return s.total })
	fmt.Printf("\nApplyDiff's steps, %s, %d interleaved rounds, medians in seconds\n\n", filepath.Base(file), reps)
	fmt.Printf("%-32s", "variant")
	for _, p := range phaseNames {
		fmt.Printf(" %8s", p)
	}
	fmt.Printf(" %8s %9s\n", "total", "vs tar-xf")
	for _, n := range names {
		fmt.Printf("%-32s", n)
		if n != "tar-xf" {
			for i := range phaseNames {
				fmt.Printf(" %8.3f", col(n, func(s sample) time.Duration { return s.d[i] }).Seconds())
			}
		} else {
			fmt.Printf("%s", strings.Repeat(" "+strings.Repeat(" ", 7)+"-", len(phaseNames)))
		}
		t := col(n, func(s sample) time.Duration { return s.total })
		fmt.Printf(" %8.3f %8.2fx\n", t.Seconds(), t.Seconds()/base.Seconds())
	}
	fmt.Printf("\nMiB written (medians): to the data loop device / to the disk under it, per step; MiB provisioned in the pool\n\n")
	for _, n := range names[1:] {
		fmt.Printf("%-32s", n)
		for i, p := range phaseNames {
			var l, d []float64
			for _, s := range samples[n] {
				l, d = append(l, s.loopMiB[i]), append(d, s.diskMiB[i])
			}
			fmt.Printf(" %s %.0f/%.0f", p, medf(l), medf(d))
		}
		var pr []float64
		for _, s := range samples[n] {
			pr = append(pr, s.provisionedMiB)
		}
		fmt.Printf("  provisioned %.0f\n", medf(pr))
	}
	fmt.Println("\nmin..max of the totals:")
	for _, n := range names {
		var ds []time.Duration
		for _, s := range samples[n] {
			ds = append(ds, s.total)
		}
		fmt.Printf("  %-32s %s .. %s\n", n, slices.Min(ds).Round(time.Millisecond), slices.Max(ds).Round(time.Millisecond))
	}
}

// loopOf names the loop device bound to file ("loop0").
func loopOf(file string) (string, error) {
	d, err := loopback.Find(file)
	if err != nil {
		return "", err
	}
	defer d.Close()
	return filepath.Base(d.Path()), nil
}

// diskOf names the whole disk holding file's filesystem ("vda"), or ""
// when it is not on a disk (tmpfs).
func diskOf(file string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(file, &st); err != nil {
		return "", err
	}
	link, err := os.Readlink(fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev)))
	if err != nil {
		return "", nil
	}
	return filepath.Base(link), nil
}

// sectorsWritten reads the sectors written to block device name (0 if it
// has no stat file).
func sectorsWritten(name string) int64 {
	if name == "" {
		return 0
	}
	data, err := os.ReadFile(filepath.Join("/sys/class/block", name, "stat"))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(data))
	if len(f) < 7 {
		return 0
	}
	n, _ := strconv.ParseInt(f[6], 10, 64)
	return n
}

// setDirectIO switches the loop device bound to file to direct I/O.
func setDirectIO(file string) error {
	d, err := loopback.Find(file)
	if err != nil {
		return err
	}
	defer d.Close()
	fd, err := unix.Open(d.Path(), unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.IoctlSetInt(fd, unix.LOOP_SET_DIRECT_IO, 1); err != nil {
		return fmt.Errorf("LOOP_SET_DIRECT_IO on %s: %w", d.Path(), err)
	}
	st, err := d.Status()
	if err != nil {
		return err
	}
	if !st.Flags.Has(loopback.FlagDirectIO) {
		return fmt.Errorf("%s: direct I/O not enabled (flags %v)", d.Path(), st.Flags)
	}
	return nil
}

// runPhasesIn runs runPhases in a new directory under workDir, removed
// afterwards.
func runPhasesIn(tarFile string, reps int, spec, workDir string) (err error) {
	if tarFile == "" {
		return errors.New("-tar is required")
	}
	dir, err := os.MkdirTemp(workDir, "bench-phases-")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, os.RemoveAll(dir)) }()
	return runPhases(tarFile, reps, spec, dir)
}
