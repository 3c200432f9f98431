// Command bench-driver measures the storage driver next to what it replaces,
// side by side in one run, and prints the ratios:
//
//  1. a container layer's life (Create from an image layer, Get, write a
//     file, Put, Remove) through the driver with its default options, vs
//     the same kernel work done with raw ioctls from Go (create_snap
//     message, create + load + resume, mount, write, umount, discard,
//     remove, delete message) and with the dmsetup and mount CLIs, as a
//     shell script or an older engine would; rounds interleaved. The raw
//     and CLI sides use a pool with the driver's table (no block zeroing)
//     and the same chain: an image layer with the same file, snapshot of a
//     formatted base. For the driver it gives two numbers: what the caller
//     waits for, and the whole work including the background teardown
//     (Drain after Remove). Every figure is a median over the rounds (a
//     round's life is the sum of its phases): the emulated host stalls now
//     and then, and one stall would sway a mean;
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
	"slices"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/devmapper"
	"github.com/dmthin/dmthin/ext4"
	"github.com/dmthin/dmthin/graphdriver"
	"github.com/dmthin/dmthin/thinpool"
)

func main() {
	n := flag.Int("n", 30, "layer lives per side for the lifecycle table")
	files := flag.Int("files", 2000, "files in the ApplyDiff layer (0: skip ApplyDiff)")
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
	// The driver's default behaviour (discard on removal, asynchronous
	// removal, deactivation at Put in the background); only the sizes
	// are set, the same as the baselines'.
	d, err := graphdriver.Init(filepath.Join(dir, "driver"), []string{
		"dm.loopdatasize=4G", "dm.loopmetadatasize=256M", "dm.basesize=256M", "dm.min_free_space=0%",
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
	if files <= 0 {
		return nil
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
	// The driver's table for a pool it makes: no block zeroing.
	p, err := thinpool.Open(ctx, thinpool.Options{Root: root, LoopDataSize: 4 << 30, LoopMetadataSize: 256 << 20,
		MinFreeSpacePercent: &zero, SkipBlockZeroing: true})
	if err != nil {
		return nil, err
	}
	c := &cliPool{pool: p, size: size, mnt: filepath.Join(root, "mnt")}
	defer func() {
		if err != nil {
			err = errors.Join(err, p.Shutdown(ctx))
		}
	}()
	// base, formatted like the driver's base device, and the image layer
	// (origin) as its snapshot holding the same file as the driver's.
	if _, err := p.Create(ctx, "base", size); err != nil {
		return nil, err
	}
	node, err := p.Activate(ctx, "base")
	if err != nil {
		return nil, err
	}
	if err := ext4.Format(ctx, node, ext4.FormatOptions{}); err != nil {
		return nil, err
	}
	if err := p.Deactivate(ctx, "base", false); err != nil {
		return nil, err
	}
	dev, err := p.Snapshot(ctx, "origin", "base", size)
	if err != nil {
		return nil, err
	}
	c.originID = dev.ID
	if node, err = p.Activate(ctx, "origin"); err != nil {
		return nil, err
	}
	mp := filepath.Join(root, "origin-mnt")
	if err := os.MkdirAll(mp, 0o700); err != nil {
		return nil, err
	}
	if err := unix.Mount(node, mp, "ext4", 0, ""); err != nil {
		return nil, err
	}
	werr := writePayload(mp)
	if err := errors.Join(werr, unix.Unmount(mp, 0), os.Remove(mp)); err != nil {
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

// phases of a container layer's life, in order.
var phases = []struct{ name, driver, raw, cli string }{
	{"Create", "Create(id, image)", "create_snap message", "dmsetup message create_snap"},
	{"Get", "Get(id)", "create+load+resume, mount", "dmsetup create, mount"},
	{"write", "write 1 MiB", "write 1 MiB", "write 1 MiB"},
	{"Put", "Put(id)", "umount, discard, remove", "umount, blkdiscard, dmsetup remove"},
	{"Remove", "Remove(id)", "delete message", "dmsetup message delete"},
}

// side keeps one side's times, per phase and round.
type side struct{ t [5][]time.Duration }

// phase is the median time of phase i.
func (s *side) phase(i int) time.Duration { return median(s.t[i]) }

// life is the median over the rounds of a round's phases summed, plus
// extra[round] if given.
func (s *side) life(extra []time.Duration) time.Duration {
	var rounds []time.Duration
	for r := range s.t[0] {
		var d time.Duration
		for i := range s.t {
			d += s.t[i][r]
		}
		if extra != nil {
			d += extra[r]
		}
		rounds = append(rounds, d)
	}
	return median(rounds)
}

// timed runs the phases' functions in order, recording their times.
func (s *side) timed(fs ...func() error) error {
	for i, f := range fs {
		start := time.Now()
		err := f()
		s.t[i] = append(s.t[i], time.Since(start))
		if err != nil {
			return fmt.Errorf("%s: %w", phases[i].name, err)
		}
	}
	return nil
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

var payload = make([]byte, 1<<20)

func writePayload(dir string) error {
	return os.WriteFile(filepath.Join(dir, "payload"), payload, 0o644)
}

// discardAll discards every block of the block device at node, as the
// driver does before deleting a layer's device (dm.blkdiscard, on by
// default for a loopback pool).
func discardAll(node string, size int64) error {
	f, err := os.OpenFile(node, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	rng := [2]uint64{0, uint64(size)}
	_, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKDISCARD, uintptr(unsafe.Pointer(&rng[0])))
	cerr := f.Close()
	if e != 0 {
		return errors.Join(e, cerr)
	}
	return cerr
}

// lifecycle times n layer lives on each side, phase by phase, the sides
// interleaved round by round.
func lifecycle(d *graphdriver.Driver, c *cliPool, n int) error {
	ctx := context.Background()
	dm, err := devmapper.Open(devmapper.Options{})
	if err != nil {
		return err
	}
	defer dm.Close()

	// The image layer every container layer is made from.
	if err := d.Create("image", "", nil); err != nil {
		return err
	}
	root, err := d.Get("image", "")
	if err != nil {
		return err
	}
	if err := writePayload(root); err != nil {
		return err
	}
	if err := d.Put("image"); err != nil {
		return err
	}
	if err := d.Drain(ctx); err != nil {
		return err
	}

	var drv, raw, cli side
	var drain []time.Duration                           // the driver's background work left after Remove
	var rawUmount, rawDiscard, rawDeact []time.Duration // raw Put, step by step
	pool := c.pool.Name()
	dev := c.pool.Dev()
	table := func(thin int) devmapper.Table {
		return devmapper.Table{{Start: 0, Length: devmapper.Sectors(c.size / 512),
			Params: devmapper.ThinParams{Pool: dev, ID: devmapper.ThinID(thin)}}}
	}
	const rawBase, cliBase = 1 << 22, 1 << 23
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("bench-%d", i)
		var root string
		err := drv.timed(
			func() error { return d.Create(id, "image", nil) },
			func() (err error) { root, err = d.Get(id, ""); return err },
			func() error { return writePayload(root) },
			func() error { return d.Put(id) },
			func() error { return d.Remove(id) },
		)
		if err != nil {
			return fmt.Errorf("driver: %w", err)
		}
		start := time.Now()
		if err := d.Drain(ctx); err != nil {
			return fmt.Errorf("driver: drain: %w", err)
		}
		drain = append(drain, time.Since(start))

		thin := rawBase + i
		name := fmt.Sprintf("bench-raw-%d", i)
		mp := filepath.Join(c.mnt, name)
		err = raw.timed(
			func() error {
				_, err := dm.Message(pool, 0, fmt.Sprintf("create_snap %d %d", thin, c.originID))
				return err
			},
			func() error {
				if _, err := dm.Activate(name, "", table(thin), false); err != nil {
					return err
				}
				if err := os.Mkdir(mp, 0o700); err != nil {
					return err
				}
				return unix.Mount(dm.NodePath(name), mp, "ext4", 0, "")
			},
			func() error { return writePayload(mp) },
			func() error {
				t0 := time.Now()
				if err := unix.Unmount(mp, 0); err != nil {
					return err
				}
				if err := os.Remove(mp); err != nil {
					return err
				}
				t1 := time.Now()
				if err := discardAll(dm.NodePath(name), c.size); err != nil {
					return err
				}
				t2 := time.Now()
				err := dm.Remove(name, devmapper.RemoveOptions{})
				rawUmount, rawDiscard, rawDeact = append(rawUmount, t1.Sub(t0)), append(rawDiscard, t2.Sub(t1)), append(rawDeact, time.Since(t2))
				return err
			},
			func() error {
				_, err := dm.Message(pool, 0, fmt.Sprintf("delete %d", thin))
				return err
			},
		)
		if err != nil {
			return fmt.Errorf("raw ioctls: %w", err)
		}

		thin = cliBase + i
		name = fmt.Sprintf("bench-cli-%d", i)
		mp = filepath.Join(c.mnt, name)
		tableText := fmt.Sprintf("0 %d thin %d:%d %d", c.size/512, dev.Major, dev.Minor, thin)
		err = cli.timed(
			func() error {
				return sh("dmsetup", "message", pool, "0", fmt.Sprintf("create_snap %d %d", thin, c.originID))
			},
			func() error {
				if err := sh("dmsetup", "create", "--noudevsync", name, "--table", tableText); err != nil {
					return err
				}
				if err := os.Mkdir(mp, 0o700); err != nil {
					return err
				}
				return sh("mount", "-t", "ext4", "/dev/mapper/"+name, mp)
			},
			func() error { return writePayload(mp) },
			func() error {
				if err := sh("umount", mp); err != nil {
					return err
				}
				if err := os.Remove(mp); err != nil {
					return err
				}
				if err := sh("blkdiscard", "/dev/mapper/"+name); err != nil {
					return err
				}
				return sh("dmsetup", "remove", "--noudevsync", name)
			},
			func() error {
				return sh("dmsetup", "message", pool, "0", fmt.Sprintf("delete %d", thin))
			},
		)
		if err != nil {
			return fmt.Errorf("CLI: %w", err)
		}
	}

	fmt.Printf("\nA container layer's life (Create from an image layer, Get, write 1 MiB, Put, Remove), %d rounds,\n", n)
	fmt.Printf("the driver with default options vs raw ioctls from Go vs the dmsetup and mount CLIs, interleaved;\n")
	fmt.Printf("medians over the rounds\n\n")
	fmt.Printf("%-7s %-18s %10s   %-26s %10s   %-36s %10s\n", "phase", "driver", "median", "raw ioctls", "median", "CLI", "median")
	for i, ph := range phases {
		fmt.Printf("%-7s %-18s %10s   %-26s %10s   %-36s %10s\n", ph.name, ph.driver, round(drv.phase(i)), ph.raw, round(raw.phase(i)), ph.cli, round(cli.phase(i)))
	}
	fmt.Printf("%-7s %-18s %10s   %-26s %10s\n", "", "", "", "  of which umount", round(median(rawUmount)))
	fmt.Printf("%-7s %-18s %10s   %-26s %10s\n", "", "", "", "  of which discard", round(median(rawDiscard)))
	fmt.Printf("%-7s %-18s %10s   %-26s %10s\n", "", "", "", "  of which remove", round(median(rawDeact)))
	fmt.Printf("%-7s %-18s %10s\n", "drain", "(background)", round(median(drain)))
	wait, whole, rawFull, cliFull := drv.life(nil), drv.life(drain), raw.life(nil), cli.life(nil)
	fmt.Printf("%-7s %-18s %10s   %-26s %10s   %-36s %10s\n", "life", "caller waits", round(wait), "", round(rawFull), "", round(cliFull))
	fmt.Printf("%-7s %-18s %10s\n", "", "whole work", round(whole))
	fmt.Printf("\ndriver, what the caller waits for / raw full life: %.2fx (goal <= 0.8x)\n", float64(wait)/float64(rawFull))
	fmt.Printf("driver, whole work incl. background teardown / raw full life: %.2fx (goal <= 1.2x)\n", float64(whole)/float64(rawFull))
	fmt.Printf("CLI full life / raw full life: %.2fx\n", float64(cliFull)/float64(rawFull))
	fmt.Println("\nThe driver does more than the raw sequence: it commits each create and removal")
	fmt.Println("to its metadata store (fsync'd) before the kernel is told, so a crash at any")
	fmt.Println("point is settled at the next start; Get checks the layer's root directory.")
	fmt.Println("Put unmounts and leaves the deactivation to a background worker (after 1s idle);")
	fmt.Println("Remove retires the device (one store commit, a rename if active) and the worker")
	fmt.Println("discards and deletes it: \"drain\" is what was left of that when Remove returned.")
	return nil
}

func round(d time.Duration) time.Duration { return d.Round(time.Microsecond) }
