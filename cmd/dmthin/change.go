package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"

	"github.com/docker/go-units"

	"github.com/dmthin/dmthin/thinpool"
)

func gcFlags(fs *flag.FlagSet, c *cmdCtx) {
	fs.BoolVar(&c.yes, "yes", false, "remove without asking")
	fs.BoolVar(&c.discard, "discard", false, "discard an orphan thin id's blocks before deleting it (gives a loopback file's space back)")
}

func growFlags(fs *flag.FlagSet, c *cmdCtx) {
	fs.StringVar(&c.dataSize, "data", "", "new size of the loopback data file, e.g. 200G")
	fs.StringVar(&c.metaSize, "metadata", "", "new size of the loopback metadata file, e.g. 4G")
}

// errInUse says why a changing command refuses while the engine runs.
func errInUse(root, what string) error {
	return fmt.Errorf("the pool under %s is in use by another process (the engine, or another dmthin): %s needs it to itself; stop the engine first (status, ls, tree, check and du work while it runs)", root, what)
}

// openPool opens the pool the inspector describes, for a changing command.
// close puts the kernel back as found: a pool that was not active (its
// engine stopped cleanly) is shut down again.
func (c *cmdCtx) openPool(ctx context.Context, in *thinpool.Inspector, what string) (p *thinpool.Pool, closePool func() error, err error) {
	r, err := in.Report(ctx)
	if err != nil {
		return nil, nil, err
	}
	if in.InUse() && !in.HolderDying() {
		return nil, nil, errInUse(r.Root, what)
	}
	opts, err := in.Options()
	if err != nil {
		return nil, nil, err
	}
	opts.Logger = c.log
	wasActive := in.Active()
	p, err = thinpool.Open(ctx, opts)
	if errors.Is(err, thinpool.ErrLocked) {
		return nil, nil, errors.Join(errInUse(r.Root, what), err)
	}
	if err != nil {
		return nil, nil, err
	}
	closePool = p.Close
	if !wasActive {
		closePool = func() error { return p.Shutdown(context.Background()) }
	}
	return p, closePool, nil
}

// gcResult is what gc --json prints.
type gcResult struct {
	Found   []thinpool.Finding `json:"found"`
	Removed []thinpool.Finding `json:"removed"`
	Errors  []string           `json:"errors"`
}

func runGC(ctx context.Context, c *cmdCtx) (err error) {
	if err := c.noArgs(); err != nil {
		return err
	}
	in, err := c.inspect()
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, in.Close()) }()
	if in.InUse() && !in.HolderDying() {
		return errInUse(c.root, "gc")
	}
	rep, err := in.Check(ctx)
	if err != nil {
		return err
	}
	res := gcResult{Found: rep.Orphans(), Removed: []thinpool.Finding{}, Errors: []string{}}
	if res.Found == nil {
		res.Found = []thinpool.Finding{}
	}
	if len(res.Found) == 0 {
		if c.json {
			return c.printJSON(res)
		}
		fmt.Fprintln(c.stdout, "nothing to remove")
		if !rep.Complete() {
			fmt.Fprintf(c.stdout, "(the pool's thin ids could not be read: %s)\n", rep.ThinIDsError)
		}
		return nil
	}
	if !c.json {
		for _, f := range res.Found {
			fmt.Fprintf(c.stdout, "orphan %s: %s\n", f.Kind, f.Detail)
		}
	}
	if !c.yes {
		if !c.tty(c.stdin) {
			return usagef("%d orphan(s) found; not asking on a non-terminal: pass --yes to remove them", len(res.Found))
		}
		fmt.Fprintf(c.stderr, "remove %d orphan(s)? [y/N] ", len(res.Found))
		line, _ := bufio.NewReader(c.stdin).ReadString('\n')
		if a := strings.ToLower(strings.TrimSpace(line)); a != "y" && a != "yes" {
			fmt.Fprintln(c.stderr, "nothing removed")
			return exitCode(exitProblems)
		}
	}
	p, closePool, err := c.openPool(ctx, in, "gc")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, closePool()) }()
	prog := c.progress()
	removed, gcErr := p.RemoveOrphans(ctx, res.Found, thinpool.GCOptions{Discard: c.discard, Progress: prog.update})
	prog.done()
	res.Removed = append(res.Removed, removed...)
	if gcErr != nil {
		res.Errors = append(res.Errors, gcErr.Error())
	}
	if c.json {
		if err := c.printJSON(res); err != nil {
			return err
		}
	} else {
		for _, f := range removed {
			fmt.Fprintf(c.stdout, "removed %s: %s\n", f.Kind, f.Detail)
		}
		if n := len(res.Found) - len(removed); n > 0 && gcErr == nil {
			fmt.Fprintf(c.stdout, "%d orphan(s) were settled by opening the pool (or changed since the check)\n", n)
		}
		if gcErr != nil {
			fmt.Fprintf(c.stderr, "dmthin gc: %v\n", gcErr)
		}
	}
	if gcErr != nil {
		return exitCode(exitProblems)
	}
	return nil
}

func parseSize(flagName, v string) (int64, error) {
	if v == "" {
		return 0, nil
	}
	n, err := units.RAMInBytes(v)
	if err != nil || n <= 0 {
		return 0, usagef("--%s %q: want a size such as 200G", flagName, v)
	}
	if n%512 != 0 {
		return 0, usagef("--%s %q: not a multiple of 512 bytes", flagName, v)
	}
	return n, nil
}

func runGrow(ctx context.Context, c *cmdCtx) (err error) {
	if err := c.noArgs(); err != nil {
		return err
	}
	data, err := parseSize("data", c.dataSize)
	if err != nil {
		return err
	}
	meta, err := parseSize("metadata", c.metaSize)
	if err != nil {
		return err
	}
	if meta > 16<<30 {
		return usagef("--metadata %s: a pool uses at most 16GiB of metadata", c.metaSize)
	}
	in, err := c.inspect()
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, in.Close()) }()
	if in.InUse() && !in.HolderDying() {
		return errInUse(c.root, "grow")
	}
	// Every check before anything changes: opening the pool activates it.
	switch in.Kind() {
	case thinpool.KindExternal:
		return usagef("the pool is an existing device-mapper device made elsewhere: grow it where it was made")
	case thinpool.KindDirect:
		return usagef("the pool is on a whole device: grow the device; the engine grows the pool into it at its next start (or with Pool.Grow while it runs)")
	case thinpool.KindDevices:
		if data != 0 || meta != 0 {
			return usagef("the pool is over block devices: grow them (lvextend...), then run dmthin grow without sizes to reload the pool")
		}
	case thinpool.KindLoopback:
		if data == 0 && meta == 0 {
			return usagef("give --data SIZE, --metadata SIZE or both")
		}
		opts, err := in.Options()
		if err != nil {
			return err
		}
		for _, f := range []struct {
			name      string
			want, has int64
		}{{"data", data, opts.LoopDataSize}, {"metadata", meta, opts.LoopMetadataSize}} {
			if f.want != 0 && f.want < f.has {
				return usagef("--%s %s is smaller than the %s file (%s): shrinking is not supported", f.name, size(f.want), f.name, size(f.has))
			}
		}
	}
	p, closePool, err := c.openPool(ctx, in, "grow")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, closePool()) }()
	prog := c.progress()
	prog.step("growing the pool")
	gerr := p.Grow(ctx, data, meta)
	prog.done()
	if gerr != nil {
		return gerr
	}
	st, err := p.Status(ctx)
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(st)
	}
	fmt.Fprintf(c.stdout, "pool %s: data %s, metadata %s\n", st.Name, size(st.DataTotal), size(st.MetadataTotal))
	return nil
}
