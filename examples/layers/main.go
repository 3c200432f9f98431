// Command layers builds, on a real thin pool, the chain of layers a
// container engine builds for one container, and shows what each layer
// sees, what each layer's diff holds and what the pool pays for it:
//
//	base device (empty ext4, or xfs with -opt dm.fs=xfs)
//	  └─ os         an operating system image layer
//	      └─ app    an application layer: adds, changes and deletes files
//	          └─ container   the container's own writable layer
//
// Every layer is a copy-on-write snapshot of the one below, so the pool's
// data usage grows by what each layer changed, not by the size of what it
// shows.
//
// It needs root and a kernel with dm-thin-pool. On a machine without one,
// run it in the project's test VM:
//
//	make demo
//
// or by hand:
//
//	CGO_ENABLED=0 go build -o /tmp/layers ./examples/layers
//	hack/vm.sh run --file /tmp/layers:/layers -- /layers
//
// Without -opt, the pool is Docker's default loopback pool (100GB, sparse),
// unless the filesystem holding the home is too small for it (the VM's /tmp
// is a tmpfs of a few GB): then the demo picks a smaller dm.loopdatasize
// and says so.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/docker/go-units"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/graphdriver"
	"github.com/dmthin/dmthin/thinpool"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	home := flag.String("home", "", "driver home directory (default: a new directory under $TMPDIR, removed at the end unless -keep)")
	keep := flag.Bool("keep", false, "keep the layers and the home directory (run again with the same -home to see them)")
	verbose := flag.Bool("v", false, "show the driver's log")
	var opts multiFlag
	flag.Var(&opts, "opt", "a dm.* driver option, e.g. -opt dm.basesize=20G (repeatable)")
	flag.Parse()

	if err := run(*home, *keep, *verbose, opts); err != nil {
		fmt.Fprintln(os.Stderr, "layers:", err)
		os.Exit(1)
	}
}

func run(home string, keep, verbose bool, opts []string) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("run me as root: making thin devices and mounting them needs CAP_SYS_ADMIN")
	}
	if _, err := os.Stat("/dev/mapper/control"); err != nil && !deviceMapperListed() {
		return errors.New("this kernel has no device-mapper; run the demo in the test VM:\n" +
			"  CGO_ENABLED=0 go build -o /tmp/layers ./examples/layers\n" +
			"  make demo")
	}
	madeHome := false
	if home == "" {
		if home, err = os.MkdirTemp("", "dmthin-demo-"); err != nil {
			return err
		}
		madeHome = true
	}
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	if verbose {
		log.SetLevel(logrus.DebugLevel)
	}

	out := newPrinter()
	out.title("dmthin: a container's layers as thin snapshots")
	note := ""
	if len(opts) == 0 {
		opts, note = fitPool(home)
	}
	out.para("Driver home: %s\nOptions: %s%s", home, orNone(opts), note)

	d, err := graphdriver.Init(home, opts, log)
	var space *thinpool.SpaceError
	if errors.As(err, &space) && space.What == "data" && len(opts) == 0 {
		return fmt.Errorf("%w\n\nThe filesystem holding %s has too little free space for Docker's default\n"+
			"100GB pool with 10%% of it kept free. Give the pool a size that fits, e.g.\n"+
			"  -opt dm.loopdatasize=8G\nor a -home on a bigger filesystem", err, home)
	}
	if err != nil {
		return err
	}
	demo := &demo{d: d, out: out, ctx: context.Background()}
	defer func() {
		err = errors.Join(err, demo.finish(keep, madeHome))
	}()
	return demo.run()
}

// fitPool picks a smaller loopback pool when the filesystem holding home
// cannot take Docker's default one: 100GB, of which 10% must stay free
// (the test VM's /tmp is a tmpfs of a few GB). It says what it chose.
func fitPool(home string) ([]string, string) {
	var st unix.Statfs_t
	if err := unix.Statfs(home, &st); err != nil {
		return nil, ""
	}
	free := int64(st.Bavail) * st.Bsize
	const need = 12 * units.GiB // 10% of 100GB, the base device, room to write
	if free >= need {
		return nil, ""
	}
	gib := free * 4 / units.GiB // the pool's 10% then fits in well under half the free space
	if gib < 1 {
		return nil, ""
	}
	return []string{fmt.Sprintf("dm.loopdatasize=%dG", gib)}, fmt.Sprintf(
		"\n  (chosen by the demo: %s is free where the home is, too little for Docker's\n"+
			"  default 100GB pool, which keeps 10%% of its space free)", size(free))
}

func orNone(opts []string) string {
	if len(opts) == 0 {
		return "none (Docker's defaults: a 100GB sparse loopback pool, a 10GB base device)"
	}
	return strings.Join(opts, " ")
}

type demo struct {
	d   *graphdriver.Driver
	out *printer
	ctx context.Context
	// rows of the closing table
	rows []summaryRow
	// pool data used by the base device alone
	baseUsed int64
}

type summaryRow struct {
	layer, parent  string
	device, seen   int64
	poolAdded      int64
	changedContent int64
}

func (m *demo) run() error {
	st, err := m.d.PoolStatus(m.ctx)
	if err != nil {
		return err
	}
	m.out.section("The pool")
	m.out.para("A thin pool lends blocks to thin devices as they write. %s", describePool(st.DataFile, st.MetadataFile, st.DataDevice, st.External))
	m.out.table([][]string{
		{"pool device", st.Name},
		{"data space", fmt.Sprintf("%s used of %s", size(st.DataUsed), size(st.DataTotal))},
		{"metadata space", fmt.Sprintf("%s used of %s", size(st.MetadataUsed), size(st.MetadataTotal))},
		{"block size", size(st.BlockSize)},
	})
	if m.d.Exists("os") {
		return m.showExisting()
	}
	m.baseUsed = st.DataUsed
	fs := statusValue(m.d, "Backing Filesystem")
	if fs == "" {
		fs = "ext4"
	}
	m.out.para("The data already used (%s) is the base device: a %s %s filesystem, formatted\n"+
		"once with its metadata written out, empty, that every layer starts from.",
		size(st.DataUsed), statusValue(m.d, "Base Device Size"), fs)

	steps := []struct {
		id, parent, what string
		change           func(root string) error
	}{
		{"os", "", "an operating system image layer, made from the base device", buildOS},
		{"app", "os", "an application layer on \"os\": adds the app, changes a config file, deletes the docs", buildApp},
		{"container", "app", "the container's writable layer on \"app\": what the running program writes", buildContainer},
	}
	for _, s := range steps {
		if err := m.layer(s.id, s.parent, s.what, s.change); err != nil {
			return fmt.Errorf("layer %s: %w", s.id, err)
		}
	}
	return m.summary()
}

// showExisting shows the layers a -keep run left: they survived the
// driver's Cleanup and this new Init.
func (m *demo) showExisting() error {
	m.out.section("Layers from an earlier run")
	m.out.para("This home already holds the demo's layers (kept by -keep). They outlived the\n" +
		"last run's Cleanup, which tore the pool down; this run's Init brought it back.")
	parent := ""
	for _, id := range []string{"os", "app", "container"} {
		if !m.d.Exists(id) {
			break
		}
		root, err := m.d.Get(id, "")
		if err != nil {
			return err
		}
		view, err := listTree(root)
		if err := errors.Join(err, m.d.Put(id)); err != nil {
			return err
		}
		m.out.sub(fmt.Sprintf("Layer %q sees", id))
		m.out.lines(view.lines)
		m.rows = append(m.rows, summaryRow{layer: id, parent: parentName(parent)})
		parent = id
	}
	return nil
}

func describePool(dataFile, metaFile, dev string, external bool) string {
	switch {
	case external:
		return "This one existed\nbefore (dm.thinpooldev)."
	case dataFile != "":
		return "This one is a\nloopback pool, as Docker makes by default: two sparse files on loop devices,\n" +
			"    " + dataFile + "\n    " + metaFile
	default:
		return "This one is made\nover the block device " + dev + "."
	}
}

// statusValue is one value of the driver's Status.
func statusValue(d *graphdriver.Driver, key string) string {
	for _, kv := range d.Status() {
		if kv[0] == key {
			return kv[1]
		}
	}
	return "?"
}

// layer creates one layer, changes its files, and shows its view, diff
// and cost.
func (m *demo) layer(id, parent, what string, change func(root string) error) error {
	m.out.section(fmt.Sprintf("Layer %q", id))
	m.out.para("%s.", capitalise(what))
	before, err := m.d.PoolStatus(m.ctx)
	if err != nil {
		return err
	}
	if err := m.d.Create(id, parent, nil); err != nil {
		return err
	}
	root, err := m.d.Get(id, "")
	if err != nil {
		return err
	}
	m.out.para("Create made a snapshot of %s; Get mounted it and returned %s.", parentName(parent), root)
	if err := change(root); err != nil {
		return errors.Join(err, m.d.Put(id))
	}
	view, err := listTree(root)
	if err != nil {
		return errors.Join(err, m.d.Put(id))
	}
	// Put unmounts: the filesystem writes everything back, so the pool's
	// usage below is final.
	if err := m.d.Put(id); err != nil {
		return err
	}
	after, err := m.d.PoolStatus(m.ctx)
	if err != nil {
		return err
	}

	m.out.sub("What the layer sees (its root, as a container would)")
	m.out.lines(view.lines)
	m.out.para("%d files, %s of file contents.", view.files, size(view.bytes))

	m.out.sub(fmt.Sprintf("What its diff holds (Diff(%q, %q): the tar an engine would push)", id, parent))
	entries, err := m.diffEntries(id, parent)
	if err != nil {
		return err
	}
	m.out.lines(entries.lines)
	dsize, err := m.d.DiffSize(id, parent)
	if err != nil {
		return err
	}
	m.out.para("DiffSize: %s of file contents changed in this layer.", size(dsize))

	meta, err := m.d.GetMetadata(id)
	if err != nil {
		return err
	}
	var devSize int64
	fmt.Sscan(meta["DeviceSize"], &devSize)
	added := after.DataUsed - before.DataUsed
	m.out.sub("What it cost the pool")
	m.out.para("Thin device %s (id %s) is %s big and shows %s of files,\n"+
		"yet the pool's data usage grew by %s: %s -> %s.",
		meta["DeviceName"], meta["DeviceId"], size(devSize), size(view.bytes), size(added), size(before.DataUsed), size(after.DataUsed))
	m.rows = append(m.rows, summaryRow{layer: id, parent: parentName(parent), device: devSize, seen: view.bytes, poolAdded: added, changedContent: dsize})
	return nil
}

func parentName(parent string) string {
	if parent == "" {
		return "the base device"
	}
	return fmt.Sprintf("layer %q", parent)
}

func (m *demo) summary() error {
	m.out.section("Blocks are shared")
	rows := [][]string{{"layer", "made from", "device size", "files it shows", "changed in it", "pool data added"}}
	var seen, added, changed int64
	for _, r := range m.rows {
		rows = append(rows, []string{r.layer, r.parent, size(r.device), size(r.seen), size(r.changedContent), size(r.poolAdded)})
		seen += r.seen
		added += r.poolAdded
		changed += r.changedContent
	}
	rows = append(rows, []string{"total", "", "", size(seen), size(changed), size(added)})
	m.out.grid(rows)
	copies := int64(len(m.rows))*m.baseUsed + seen
	m.out.para("Each layer is a complete %s filesystem. Made as separate devices, they would\n"+
		"take %s each for the empty filesystem plus %s of files: %s in all.\n"+
		"As snapshots they took %s: about what was changed in them (%s), plus\n"+
		"filesystem metadata and journal blocks, copied %s at a time.",
		statusValue(m.d, "Base Device Size"), size(m.baseUsed), size(seen), size(copies),
		size(added), size(changed), size(m.blockSize()))
	st, err := m.d.PoolStatus(m.ctx)
	if err != nil {
		return err
	}
	m.out.para("Pool now: %s of data used of %s, %d thin devices (the base and %d layers).",
		size(st.DataUsed), size(st.DataTotal), st.Devices, len(m.rows))
	return nil
}

func (m *demo) blockSize() int64 {
	st, err := m.d.PoolStatus(m.ctx)
	if err != nil {
		return 0
	}
	return st.BlockSize
}

// finish removes the layers (unless keep) and releases the pool.
func (m *demo) finish(keep, madeHome bool) error {
	var errs []error
	m.out.section("Cleaning up")
	if keep {
		m.out.para("Keeping the layers (-keep). Run again with -home %s to find them.", m.d.Home())
	} else {
		for i := len(m.rows) - 1; i >= 0; i-- {
			if err := m.d.Remove(m.rows[i].layer); err != nil {
				errs = append(errs, err)
			}
		}
		m.out.para("Removed the layers.")
	}
	if err := m.d.Cleanup(); err != nil {
		errs = append(errs, err)
	}
	m.out.para("Cleanup unmounted everything, deactivated the thin devices, removed the pool\nand detached its loop devices; the files under the home directory stay.")
	if madeHome && !keep && len(errs) == 0 {
		if err := os.RemoveAll(m.d.Home()); err != nil {
			errs = append(errs, err)
		} else {
			m.out.para("Removed %s.", m.d.Home())
		}
	}
	return errors.Join(errs...)
}

func size(n int64) string {
	if n < 0 {
		return "-" + units.BytesSize(float64(-n))
	}
	return units.BytesSize(float64(n))
}

func capitalise(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func deviceMapperListed() bool {
	b, err := os.ReadFile("/proc/misc")
	return err == nil && strings.Contains(string(b), "device-mapper")
}
