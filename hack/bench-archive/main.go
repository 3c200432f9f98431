// Command bench-archive measures applying a real layer (a tar of a source
// tree, e.g. Go's own src/) side by side, interleaved in one run, and
// prints each method's time relative to GNU `tar -xf`:
//
//   - tar -xf into a plain directory (and tar -xf followed by sync),
//   - github.com/moby/go-archive's ApplyUncompressedLayer (what
//     graphdriver used before internal/tarapply),
//   - containerd's archive.Apply,
//   - internal/tarapply into a plain directory,
//   - the driver's ApplyDiff into a new layer (thin device mounted, tar
//     applied, syncfs, unmounted).
//
// Plain directories are on the same filesystem as the pool's loop files.
// It is a module of its own so that containerd, needed only here, stays
// out of dmthin's go.mod. It needs root and dm-thin-pool; `make bench`
// runs it in the test VM, where emulation inflates every time: compare
// the ratios, not the figures.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	ctrarchive "github.com/containerd/containerd/v2/pkg/archive"
	archive "github.com/moby/go-archive"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/graphdriver"
	"github.com/dmthin/dmthin/internal/tarapply"
)

// method applies the layer in file to a fresh directory dst.
type method struct {
	name string
	run  func(file, dst string) error
}

func main() {
	tarFile := flag.String("tar", "", "uncompressed layer tar to apply (required)")
	reps := flag.Int("reps", 5, "rounds; each round runs every method once, in a rotated order")
	only := flag.String("only", "", "comma-separated method names to run (default all)")
	workDir := flag.String("dir", os.TempDir(), "directory for the plain directories and the pool")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run here")
	phases := flag.String("phases", "", "instead: time ApplyDiff's steps for these comma-separated variants (see phases.go), e.g. zero,nozero,nozero+dio")
	flag.Parse()
	if *phases != "" {
		if err := runPhasesIn(*tarFile, *reps, *phases, *workDir); err != nil {
			fmt.Fprintln(os.Stderr, "bench-archive:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*tarFile, *reps, *only, *workDir, *cpuProfile); err != nil {
		fmt.Fprintln(os.Stderr, "bench-archive:", err)
		os.Exit(1)
	}
}

func run(tarFile string, reps int, only, workDir, cpuProfile string) (err error) {
	if tarFile == "" {
		return errors.New("-tar is required")
	}
	st, err := os.Stat(tarFile)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp(workDir, "bench-archive-")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, os.RemoveAll(dir)) }()

	methods := []method{
		{"tar-xf", func(f, dst string) error { return sh("tar", "-xf", f, "-C", dst) }},
		{"tar-xf+sync", func(f, dst string) error {
			if err := sh("tar", "-xf", f, "-C", dst); err != nil {
				return err
			}
			return syncfs(dst)
		}},
		{"go-archive", func(f, dst string) error {
			return withFile(f, func(r *os.File) error {
				_, err := archive.ApplyUncompressedLayer(dst, r, &archive.TarOptions{})
				return err
			})
		}},
		{"containerd", func(f, dst string) error {
			return withFile(f, func(r *os.File) error {
				_, err := ctrarchive.Apply(context.Background(), dst, r)
				return err
			})
		}},
		{"tarapply", func(f, dst string) error {
			return withFile(f, func(r *os.File) error {
				_, err := tarapply.Apply(dst, r, tarapply.Options{})
				return err
			})
		}},
		{"tarapply+sync", func(f, dst string) error {
			return withFile(f, func(r *os.File) error {
				_, err := tarapply.Apply(dst, r, tarapply.Options{Sync: true})
				return err
			})
		}},
	}
	var d *graphdriver.Driver
	want := func(name string) bool {
		return only == "" || slices.Contains(strings.Split(only, ","), name)
	}
	if want("ApplyDiff") {
		d, err = graphdriver.Init(filepath.Join(dir, "driver"), []string{
			"dm.loopdatasize=8G", "dm.loopmetadatasize=512M", "dm.basesize=2G",
			"dm.blkdiscard=false", "dm.min_free_space=0%",
		}, nil)
		if err != nil {
			return err
		}
		defer func() { err = errors.Join(err, d.Cleanup()) }()
	}
	methods = slices.DeleteFunc(methods, func(m method) bool { return !want(m.name) })

	if cpuProfile != "" {
		f, err := os.Create(cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}

	times := map[string][]time.Duration{}
	names := []string{}
	for _, m := range methods {
		names = append(names, m.name)
	}
	if d != nil {
		names = append(names, "ApplyDiff")
	}
	for rep := 0; rep < reps; rep++ {
		for i := range names {
			name := names[(i+rep)%len(names)]
			var dur time.Duration
			if name == "ApplyDiff" {
				dur, err = applyDiff(d, tarFile, rep)
			} else {
				m := methods[slices.IndexFunc(methods, func(m method) bool { return m.name == name })]
				dur, err = plain(m, tarFile, filepath.Join(dir, fmt.Sprintf("%s-%d", m.name, rep)))
			}
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			times[name] = append(times[name], dur)
		}
	}
	report(tarFile, st.Size(), reps, names, times)
	return nil
}

// plain times m into a new directory, after a sync so that writeback of
// the previous method is not charged to it; the directory is removed
// afterwards, untimed.
func plain(m method, file, dst string) (time.Duration, error) {
	if err := os.Mkdir(dst, 0o755); err != nil {
		return 0, err
	}
	unix.Sync()
	start := time.Now()
	err := m.run(file, dst)
	dur := time.Since(start)
	return dur, errors.Join(err, os.RemoveAll(dst))
}

// applyDiff times ApplyDiff (Get, apply, syncfs, Put) into a new layer.
func applyDiff(d *graphdriver.Driver, file string, rep int) (time.Duration, error) {
	id := fmt.Sprintf("apply-%d", rep)
	if err := d.Create(id, "", nil); err != nil {
		return 0, err
	}
	unix.Sync()
	start := time.Now()
	err := withFile(file, func(r *os.File) error {
		_, err := d.ApplyDiff(id, "", r)
		return err
	})
	dur := time.Since(start)
	return dur, errors.Join(err, d.Remove(id))
}

func report(file string, size int64, reps int, names []string, times map[string][]time.Duration) {
	median := func(ds []time.Duration) time.Duration {
		s := slices.Clone(ds)
		slices.Sort(s)
		return s[len(s)/2]
	}
	var base time.Duration
	if len(times["tar-xf"]) > 0 {
		base = median(times["tar-xf"])
	}
	fmt.Printf("\nApplying %s (%.1f MiB), %d interleaved rounds, same boot\n\n", filepath.Base(file), float64(size)/(1<<20), reps)
	fmt.Printf("%-16s %10s %10s %10s %10s\n", "method", "median", "min", "max", "vs tar-xf")
	for _, n := range names {
		ds := times[n]
		ratio := "-"
		if base > 0 {
			ratio = fmt.Sprintf("%.2fx", median(ds).Seconds()/base.Seconds())
		}
		fmt.Printf("%-16s %10s %10s %10s %10s\n", n, median(ds).Round(time.Millisecond),
			slices.Min(ds).Round(time.Millisecond), slices.Max(ds).Round(time.Millisecond), ratio)
	}
	if c, a := times["containerd"], times["ApplyDiff"]; len(c) > 0 && len(a) > 0 {
		fmt.Printf("\nApplyDiff / containerd archive.Apply: %.2fx\n", median(a).Seconds()/median(c).Seconds())
	}
	fmt.Println("\n\"vs tar-xf\" is the median time relative to GNU tar -xf into a plain directory")
	fmt.Println("(lower is faster). ApplyDiff includes mounting the layer, one syncfs and unmounting.")
}

func withFile(name string, f func(*os.File) error) error {
	r, err := os.Open(name)
	if err != nil {
		return err
	}
	defer r.Close()
	return f(r)
}

func syncfs(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Syncfs(fd)
}

func sh(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %v: %w: %s", name, args, err, out)
	}
	return nil
}
