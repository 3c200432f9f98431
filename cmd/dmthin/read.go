package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/docker/go-units"

	"github.com/dmthin/dmthin/layerstore"
	"github.com/dmthin/dmthin/thinpool"
)

func size(b int64) string { return units.BytesSize(float64(b)) }

// view is the shape of the read-only commands: no arguments, get reads
// from an inspector of the pool, and what it read is printed as JSON with
// --json, by text otherwise.
func view[T any](c *cmdCtx, get func(*thinpool.Inspector) (T, error), text func(T) error) error {
	if err := c.noArgs(); err != nil {
		return err
	}
	in, err := c.inspect()
	if err != nil {
		return err
	}
	defer in.Close()
	v, err := get(in)
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(v)
	}
	return text(v)
}

func runStatus(ctx context.Context, c *cmdCtx) error {
	return view(c, func(in *thinpool.Inspector) (thinpool.Report, error) { return in.Report(ctx) },
		func(r thinpool.Report) error { return printStatus(c, r) })
}

func printStatus(c *cmdCtx, r thinpool.Report) error {
	w := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	state := []string{r.Kind}
	if r.Active {
		state = append(state, "active")
	} else {
		state = append(state, "not active (engine stopped)")
	}
	switch {
	case r.HolderDying:
		state = append(state, "held by a process that was killed and has not exited")
	case r.InUse:
		state = append(state, "in use by another process")
	}
	fmt.Fprintf(w, "pool\t%s (%s)\n", r.Name, strings.Join(state, ", "))
	if len(r.Suspended) > 0 {
		fmt.Fprintf(w, "suspended\t%s (I/O to them waits: dmthin gc --yes, or the engine's next start, resumes them)\n", strings.Join(r.Suspended, ", "))
	}
	fmt.Fprintf(w, "root\t%s\n", r.Root)
	mode := r.Mode
	if r.NeedsCheck {
		mode += ", needs_check"
	}
	fmt.Fprintf(w, "mode\t%s\n", mode)
	if r.Active {
		fmt.Fprintf(w, "data\t%s used of %s, %s free\n", size(r.DataUsed), size(r.DataTotal), size(r.DataAvailable))
		fmt.Fprintf(w, "metadata\t%s used of %s, %s free\n", size(r.MetadataUsed), size(r.MetadataTotal), size(r.MetadataAvailable))
		fmt.Fprintf(w, "low-water mark\t%s free data\n", size(r.LowWaterMark))
	}
	fmt.Fprintf(w, "min free space\t%d%% (new layers refused below it)\n", r.MinFreeSpacePercent)
	fmt.Fprintf(w, "block size\t%s\n", size(r.BlockSize))
	fmt.Fprintf(w, "devices\t%d (%d deferred deletes, %d faulty)\n", r.Devices, r.DeferredDeletes, r.Faulty)
	if len(r.Deleting) > 0 {
		fmt.Fprintf(w, "being deleted\t%s\n", strings.Join(r.Deleting, ", "))
	}
	for _, f := range r.FaultyDevices {
		fmt.Fprintf(w, "faulty\t%s: %s\n", f.Name, f.Reason)
	}
	if r.Active {
		fmt.Fprintf(w, "transaction id\tpool %d, records %d\n", r.TransactionID, r.StoreTransactionID)
	} else {
		fmt.Fprintf(w, "transaction id\trecords %d\n", r.StoreTransactionID)
	}
	if r.MetadataSnapshotHeld {
		fmt.Fprintf(w, "metadata snapshot\theld\n")
	}
	if r.DataFile != "" {
		fmt.Fprintf(w, "data file\t%s\nmetadata file\t%s\n", r.DataFile, r.MetadataFile)
	}
	if r.DataDevice != "" {
		fmt.Fprintf(w, "data device\t%s\nmetadata device\t%s\n", r.DataDevice, r.MetadataDevice)
	}
	return w.Flush()
}

// entry is one device as ls and tree show it.
type entry struct {
	thinpool.Device
	// Layer is the layer name of a layer's device ("" for the base and
	// other devices); LayerState its progress label ("" when complete).
	Layer      string   `json:"layer,omitempty"`
	LayerState string   `json:"layer_state,omitempty"`
	Mounts     []string `json:"mounts"`
	Children   []*entry `json:"children,omitempty"`
}

func (c *cmdCtx) entries(in *thinpool.Inspector) ([]*entry, error) {
	devs, err := in.Devices()
	if err != nil {
		return nil, err
	}
	mounts, err := in.Mounts()
	if err != nil {
		return nil, err
	}
	out := make([]*entry, 0, len(devs))
	for _, d := range devs {
		e := &entry{Device: d, LayerState: layerstore.LayerState(d), Mounts: mounts[d.Name]}
		if e.Mounts == nil {
			e.Mounts = []string{}
		}
		if layer, ok := layerstore.LayerOf(d.Name); ok {
			e.Layer = layer
		}
		out = append(out, e)
	}
	return out, nil
}

func (e *entry) state() string {
	s := string(e.State)
	if e.LayerState != "" {
		s += "/" + e.LayerState
	}
	return s
}

func (e *entry) active() string {
	switch {
	case len(e.Mounts) > 0:
		return "mounted"
	case e.OpenCount > 0:
		return fmt.Sprintf("open(%d)", e.OpenCount)
	case e.Active:
		return "active"
	}
	return "-"
}

func (e *entry) mapped() string {
	if !e.Active {
		return "-"
	}
	return size(e.MappedBytes)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func runLs(ctx context.Context, c *cmdCtx) error {
	return view(c, c.entries, func(es []*entry) error { return printLs(c, es) })
}

func printLs(c *cmdCtx, es []*entry) error {
	w := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "DEVICE\tLAYER\tID\tSIZE\tMAPPED\tSTATE\tACTIVE\tPARENT\tMOUNTS")
	for _, e := range es {
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Name, orDash(e.Layer), e.ID, size(e.Size), e.mapped(),
			e.state(), e.active(), orDash(e.Parent), orDash(strings.Join(e.Mounts, ",")))
	}
	return w.Flush()
}

// tree links entries to their parents; the roots are devices without a
// parent, or whose parent is gone (snapshots outlive their origins).
func tree(es []*entry) []*entry {
	byName := make(map[string]*entry, len(es))
	for _, e := range es {
		byName[e.Name] = e
	}
	var roots []*entry
	for _, e := range es {
		if p := byName[e.Parent]; e.Parent != "" && p != nil && p != e {
			p.Children = append(p.Children, e)
		} else {
			roots = append(roots, e)
		}
	}
	for _, e := range es {
		slices.SortFunc(e.Children, func(a, b *entry) int { return strings.Compare(a.Name, b.Name) })
	}
	return roots
}

func runTree(ctx context.Context, c *cmdCtx) error {
	roots := func(in *thinpool.Inspector) ([]*entry, error) {
		es, err := c.entries(in)
		return tree(es), err
	}
	return view(c, roots, func(roots []*entry) error { printTree(c, roots); return nil })
}

func printTree(c *cmdCtx, roots []*entry) {
	var walk func(e *entry, prefix string, last, top bool)
	walk = func(e *entry, prefix string, last, top bool) {
		branch, next := "", ""
		if !top {
			branch, next = "├── ", "│   "
			if last {
				branch, next = "└── ", "    "
			}
		}
		desc := []string{fmt.Sprintf("id %d", e.ID), size(e.Size), e.state()}
		if e.Layer != "" {
			desc = append([]string{"layer " + e.Layer}, desc...)
		}
		if a := e.active(); a != "-" {
			desc = append(desc, a)
		}
		if e.Parent != "" && top {
			desc = append(desc, "parent "+e.Parent+" gone")
		}
		fmt.Fprintf(c.stdout, "%s%s%s (%s)\n", prefix, branch, e.Name, strings.Join(desc, ", "))
		for i, ch := range e.Children {
			walk(ch, prefix+next, i == len(e.Children)-1, false)
		}
	}
	for _, r := range roots {
		walk(r, "", true, true)
	}
}

func runCheck(ctx context.Context, c *cmdCtx) error {
	var r thinpool.CheckReport
	check := func(in *thinpool.Inspector) (_ thinpool.CheckReport, err error) {
		r, err = in.Check(ctx)
		return r, err
	}
	if err := view(c, check, func(r thinpool.CheckReport) error { printCheck(c, r); return nil }); err != nil {
		return err
	}
	switch {
	case len(r.Findings) > 0:
		return exitCode(exitProblems)
	case !r.Complete():
		return exitCode(exitIncomplete)
	}
	return nil
}

func printCheck(c *cmdCtx, r thinpool.CheckReport) {
	ids := "unknown"
	if r.Complete() {
		ids = fmt.Sprint(r.ThinIDs)
	}
	fmt.Fprintf(c.stdout, "pool %s: %d records, %d device-mapper devices, %s thin ids\n", r.Pool, r.Records, r.DMDevices, ids)
	if !r.Complete() {
		fmt.Fprintf(c.stdout, "thin ids unknown: %s\n", r.ThinIDsError)
	}
	if len(r.Pending) > 0 {
		fmt.Fprintf(c.stdout, "in the middle of a change (the engine, or its next start, finishes them): %s\n", strings.Join(r.Pending, ", "))
	}
	for _, f := range r.Findings {
		tag := ""
		switch {
		case f.Kind == thinpool.FindingSuspended:
			tag = " [gc resumes it]"
		case f.Orphan():
			tag = " [orphan: gc removes it]"
		}
		fmt.Fprintf(c.stdout, "%s: %s%s\n", f.Kind, f.Detail, tag)
	}
	switch {
	case len(r.Findings) > 0:
		fmt.Fprintf(c.stdout, "NOT HEALTHY: %d problem(s)\n", len(r.Findings))
	case !r.Complete():
		fmt.Fprintf(c.stdout, "INCOMPLETE: nothing found, but the pool's thin ids could not be read\n")
	default:
		fmt.Fprintf(c.stdout, "healthy\n")
	}
}

func runDu(ctx context.Context, c *cmdCtx) error {
	if len(c.args) == 0 {
		return usagef("name at least one layer or device")
	}
	in, err := c.inspect()
	if err != nil {
		return err
	}
	defer in.Close()
	devs, err := in.Devices()
	if err != nil {
		return err
	}
	have := map[string]bool{}
	for _, d := range devs {
		have[d.Name] = true
	}
	// A name is a device's, or a layer's (its device is l-NAME).
	names := make([]string, 0, len(c.args))
	for _, a := range c.args {
		switch {
		case have[layerstore.DeviceName(a)] && a != layerstore.BaseDevice:
			names = append(names, layerstore.DeviceName(a))
		case have[a]:
			names = append(names, a)
		default:
			return usagef("no layer or device %q", a)
		}
	}
	us, err := in.Usage(ctx, names...)
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(us)
	}
	w := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "DEVICE\tLAYER\tSIZE\tMAPPED\tEXCLUSIVE\tSHARED")
	for _, u := range us {
		layer, ok := layerstore.LayerOf(u.Name)
		if !ok {
			layer = ""
		}
		if !u.Known {
			fmt.Fprintf(w, "%s\t%s\t%s\tunknown\tunknown\tunknown\n", u.Name, orDash(layer), size(u.Size))
			continue
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", u.Name, orDash(layer), size(u.Size), size(u.PoolMappedBytes), size(u.ExclusiveBytes), size(u.SharedBytes))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	for _, u := range us {
		if !u.Known {
			fmt.Fprintf(c.stderr, "dmthin du: %s: unknown: %s\n", u.Name, u.UsageError)
		}
	}
	return nil
}
