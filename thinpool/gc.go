package thinpool

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/devmapper"
)

// GCOptions modify RemoveOrphans.
type GCOptions struct {
	// Discard the blocks of an orphan thin id before deleting it, so a
	// loopback file gives the space back (deleting alone frees the
	// blocks in the pool only).
	Discard bool
	// Progress, when set, is called as a long step advances: what it is,
	// and done of total bytes.
	Progress func(what string, done, total int64)
}

// RemoveOrphans removes what a check found orphaned (Finding.Orphan): it
// drops records without a thin id, deletes thin ids without a record and
// removes device-mapper devices without a record. The findings may be
// old: it checks again and acts only on what is still orphaned. It returns
// the findings it acted on; the errors of those it could not remove are
// joined.
func (p *Pool) RemoveOrphans(ctx context.Context, findings []Finding, opts GCOptions) ([]Finding, error) {
	done, err := p.enter()
	if err != nil {
		return nil, err
	}
	defer done()
	p.msgMu.Lock()
	now, err := checkOnce(ctx, p, true)
	p.msgMu.Unlock()
	if err != nil {
		return nil, err
	}
	still := map[string]bool{}
	for _, f := range now.Orphans() {
		still[f.key()] = true
	}
	var removed []Finding
	var errs []error
	for _, f := range findings {
		if !f.Orphan() || !still[f.key()] {
			continue
		}
		if err := ctx.Err(); err != nil {
			return removed, errors.Join(append(errs, err)...)
		}
		var err error
		switch f.Kind {
		case FindingDMWithoutRecord:
			err = p.removeDM(ctx, f.DM, false)
		case FindingThinWithoutRecord:
			err = p.removeOrphanThin(ctx, *f.ID, opts)
		case FindingRecordWithoutThin:
			err = p.dropOrphanRecord(ctx, f.Device, *f.ID)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.Detail, err))
			continue
		}
		p.log.WithField("finding", f.Detail).Info("gc: removed")
		removed = append(removed, f)
	}
	return removed, errors.Join(errs...)
}

// dropOrphanRecord drops the record of name, if it still names thin id id
// and the pool still lacks it, with its dm device if one is left.
func (p *Pool) dropOrphanRecord(ctx context.Context, name string, id uint32) error {
	unlock := p.locks.Lock(name)
	defer unlock()
	rec, err := p.st.get(name)
	if err != nil {
		return err
	}
	if rec.ID != id {
		return fmt.Errorf("thinpool: record %q now names thin id %d, not %d; left alone", name, rec.ID, id)
	}
	p.msgMu.Lock()
	defer p.msgMu.Unlock()
	ok, err := p.thinExists(id)
	if err != nil {
		return err
	}
	if ok {
		return fmt.Errorf("thinpool: thin id %d of %q exists; record kept", id, name)
	}
	if err := p.removeDM(ctx, p.dmName(name), false); err != nil {
		return err
	}
	return p.commitState(rec, "", 0)
}

// removeOrphanThin deletes thin id id, which no record names, after
// discarding its blocks if asked.
func (p *Pool) removeOrphanThin(ctx context.Context, id uint32, opts GCOptions) error {
	p.msgMu.Lock()
	defer p.msgMu.Unlock()
	recs, err := p.st.all() // staged outcomes included
	if err != nil {
		return err
	}
	for _, r := range recs {
		if r.ID == id {
			return fmt.Errorf("thinpool: thin id %d is now %q's; left alone", id, r.Name)
		}
	}
	if opts.Discard {
		if err := p.discardThinLocked(ctx, id, opts.Progress); err != nil {
			return err
		}
	}
	if err := p.deleteThinLocked(id); err != nil {
		return err
	}
	return p.commitMetadata()
}

// gcDMName is the scratch device a thin id is mapped into for its
// discard. "probe-" names are reserved (checkName), so no record's device
// can have it, and Open removes one a crash left.
func (p *Pool) gcDMName(id uint32) string { return fmt.Sprintf("%s-probe-gc-%d", p.prefix, id) }

// discardChunk is how much one BLKDISCARD covers, so progress can be told.
const discardChunk = 256 << 20

// discardThinLocked maps thin id id into a scratch device as long as its
// highest mapped block and discards it in chunks. Callers hold msgMu.
func (p *Pool) discardThinLocked(ctx context.Context, id uint32, progress func(string, int64, int64)) (err error) {
	mr, err := newMetaReader(p.dm, p.opts.Root, p.name, "")
	if err != nil {
		return err
	}
	out, err := mr.run(ctx, "thin_dump", "--dev-id", strconv.FormatUint(uint64(id), 10))
	err = errors.Join(err, mr.close())
	if err != nil {
		return err
	}
	blocks, err := parseThinDumpExtent(out)
	if err != nil {
		return err
	}
	size := int64(blocks) * int64(p.blockSize.Bytes())
	if size == 0 {
		return nil
	}
	dm := p.gcDMName(id)
	tab := devmapper.Table{{Length: devmapper.Sectors(size / devmapper.SectorSize), Params: devmapper.ThinParams{Pool: p.dev, ID: devmapper.ThinID(id)}}}
	if _, err := p.dm.Activate(dm, "", tab, false); err != nil {
		return fmt.Errorf("thinpool: map thin id %d for discard: %w", id, err)
	}
	defer func() {
		err = errors.Join(err, p.removeDM(ctx, dm, false))
	}()
	path, err := p.dm.EnsureNode(dm)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_EXCL, 0)
	if err != nil {
		return fmt.Errorf("thinpool: discard thin id %d: %w", id, err)
	}
	defer func() { err = errors.Join(err, f.Close()) }()
	what := fmt.Sprintf("discard thin id %d", id)
	for off := int64(0); off < size; off += discardChunk {
		if err := ctx.Err(); err != nil {
			return err
		}
		if progress != nil {
			progress(what, off, size)
		}
		rng := [2]uint64{uint64(off), uint64(min(discardChunk, size-off))}
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKDISCARD, uintptr(unsafe.Pointer(&rng[0]))); e != 0 {
			if e == unix.EOPNOTSUPP {
				return nil
			}
			return fmt.Errorf("thinpool: discard thin id %d: BLKDISCARD: %w", id, e)
		}
	}
	if progress != nil {
		progress(what, size, size)
	}
	return nil
}

var (
	dumpRange  = regexp.MustCompile(`<range_mapping origin_begin="(\d+)" data_begin="\d+" length="(\d+)"`)
	dumpSingle = regexp.MustCompile(`<single_mapping origin_block="(\d+)"`)
)

// parseThinDumpExtent returns one past the highest block the thin
// device in thin_dump's XML maps.
func parseThinDumpExtent(xml []byte) (uint64, error) {
	if _, err := parseThinDumpIDs(xml); err != nil {
		return 0, err
	}
	var end uint64
	for _, m := range dumpRange.FindAllSubmatch(xml, -1) {
		b, err1 := strconv.ParseUint(string(m[1]), 10, 64)
		n, err2 := strconv.ParseUint(string(m[2]), 10, 64)
		if err := errors.Join(err1, err2); err != nil {
			return 0, fmt.Errorf("thinpool: thin_dump range %q: %w", m[0], err)
		}
		end = max(end, b+n)
	}
	for _, m := range dumpSingle.FindAllSubmatch(xml, -1) {
		b, err := strconv.ParseUint(string(m[1]), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("thinpool: thin_dump mapping %q: %w", m[0], err)
		}
		end = max(end, b+1)
	}
	return end, nil
}
