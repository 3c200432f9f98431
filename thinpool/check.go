package thinpool

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/dmthin/dmthin/devmapper"
)

// A consistency check compares three views of a pool's devices: the
// records in the store, the device-mapper devices in the kernel that carry
// the pool's prefix, and the thin ids in the pool's metadata (thin_dump,
// on a metadata snapshot when the pool is active).

// FindingKind names what a check found.
type FindingKind string

const (
	// FindingRecordWithoutThin: a record whose thin id the pool does not
	// have (the device's data is gone). Orphan: RemoveOrphans drops the
	// record.
	FindingRecordWithoutThin FindingKind = "record-without-thin-id"
	// FindingThinWithoutRecord: a thin id no record names (space the pool
	// keeps for nobody). Orphan: RemoveOrphans deletes it from the pool.
	FindingThinWithoutRecord FindingKind = "thin-id-without-record"
	// FindingDMWithoutRecord: a device-mapper device with the pool's
	// prefix that no record names. Orphan: RemoveOrphans removes it.
	FindingDMWithoutRecord FindingKind = "dm-device-without-record"
	// FindingFaulty: a record Open could not settle (see Device.Fault).
	// Not an orphan: delete the device through its owner.
	FindingFaulty FindingKind = "faulty"
	// FindingPool: the pool itself is not healthy (mode not rw, needs
	// check, failed).
	FindingPool FindingKind = "pool"
	// FindingSuspended: a device of the pool (the pool, a device under
	// it, a thin device) is suspended outside any operation: a process
	// was killed between a suspend and its resume, and I/O to it waits.
	// Orphan: opening the pool (RemoveOrphans' caller, or the engine's
	// next start) resumes it.
	FindingSuspended FindingKind = "suspended"
)

// Finding is one problem a check found.
type Finding struct {
	Kind FindingKind `json:"kind"`
	// Device is the record's name, when there is one.
	Device string `json:"device,omitempty"`
	// ID is the thin id (record or pool), when there is one.
	ID *uint32 `json:"id,omitempty"`
	// DM is the device-mapper device, for FindingDMWithoutRecord.
	DM     string `json:"dm,omitempty"`
	Detail string `json:"detail"`
}

// Orphan reports whether RemoveOrphans removes what f names.
func (f Finding) Orphan() bool {
	switch f.Kind {
	case FindingRecordWithoutThin, FindingThinWithoutRecord, FindingDMWithoutRecord, FindingSuspended:
		return true
	}
	return false
}

func (f Finding) key() string {
	id := int64(-1)
	if f.ID != nil {
		id = int64(*f.ID)
	}
	return fmt.Sprintf("%s\x00%s\x00%d\x00%s", f.Kind, f.Device, id, f.DM)
}

// CheckReport is the outcome of a check.
type CheckReport struct {
	Pool string `json:"pool"`
	// Active: the pool device was in the kernel.
	Active bool `json:"active"`
	// Live: another process had the pool open; only what two views in
	// a row showed is reported.
	Live      bool `json:"live"`
	Records   int  `json:"records"`
	DMDevices int  `json:"dm_devices"`
	// ThinIDs is how many thin ids the pool's metadata holds; -1 when
	// they could not be read (ThinIDsError says why), in which case no
	// record-without-thin-id or thin-id-without-record finding can be
	// made and the check is incomplete.
	ThinIDs      int    `json:"thin_ids"`
	ThinIDsError string `json:"thin_ids_error,omitempty"`
	// Pending names devices in the middle of a change (creating,
	// deleting, deferred delete, retired): the engine finishes them, and so does
	// the next Open.
	Pending  []string  `json:"pending"`
	Findings []Finding `json:"findings"`
}

// Complete reports whether every view could be read.
func (r CheckReport) Complete() bool { return r.ThinIDs >= 0 }

// Healthy reports a complete check that found nothing.
func (r CheckReport) Healthy() bool { return r.Complete() && len(r.Findings) == 0 }

// Orphans returns the findings RemoveOrphans acts on.
func (r CheckReport) Orphans() []Finding {
	var out []Finding
	for _, f := range r.Findings {
		if f.Orphan() {
			out = append(out, f)
		}
	}
	return out
}

// compareViews is the check proper: records against dm devices (names
// with the pool's prefix, the pool and the devices under it excluded: see
// prefixDMs) and thin ids (nil with idsKnown false when unknown).
func compareViews(prefix string, recs []*record, dms []string, ids []uint32, idsKnown bool) (findings []Finding, pending []string) {
	byName := make(map[string]*record, len(recs))
	byID := make(map[uint32]*record, len(recs))
	for _, r := range recs {
		byName[r.Name] = r
		byID[r.ID] = r
	}
	have := make(map[uint32]bool, len(ids))
	for _, id := range ids {
		have[id] = true
	}
	idp := func(v uint32) *uint32 { return &v }
	for _, r := range recs {
		switch r.State {
		case StateCreating, StateDeleting, StateDeferredDelete, StateRetired:
			pending = append(pending, r.Name)
		case StateFaulty:
			findings = append(findings, Finding{Kind: FindingFaulty, Device: r.Name, ID: idp(r.ID), Detail: r.Fault})
		}
		// A create or delete in flight may or may not have its thin id.
		if idsKnown && !have[r.ID] && r.State != StateCreating && r.State != StateDeleting {
			findings = append(findings, Finding{Kind: FindingRecordWithoutThin, Device: r.Name, ID: idp(r.ID),
				Detail: fmt.Sprintf("record %q (%s) names thin id %d, which the pool does not have", r.Name, r.State, r.ID)})
		}
	}
	for _, id := range ids {
		if byID[id] == nil {
			findings = append(findings, Finding{Kind: FindingThinWithoutRecord, ID: idp(id),
				Detail: fmt.Sprintf("thin id %d is in the pool, no record names it", id)})
		}
	}
	for _, dm := range dms {
		name := strings.TrimPrefix(dm, prefix+"-")
		if byName[name] == nil {
			findings = append(findings, Finding{Kind: FindingDMWithoutRecord, DM: dm,
				Detail: fmt.Sprintf("device-mapper device %s has the pool's prefix, no record names it", dm)})
		}
	}
	slices.Sort(pending)
	return findings, pending
}

// checkOnce takes one view of p (whose store, dm client, name and prefix
// are set) and compares it.
func checkOnce(ctx context.Context, p *Pool, active bool) (CheckReport, error) {
	rep := CheckReport{Pool: p.name, Active: active, ThinIDs: -1, Pending: []string{}, Findings: []Finding{}}
	recs, err := p.st.all()
	if err != nil {
		return rep, err
	}
	rep.Records = len(recs)
	dms, err := p.prefixDMs()
	if err != nil {
		return rep, err
	}
	rep.DMDevices = len(dms)
	var ids []uint32
	known := false
	poolName := ""
	if active {
		poolName = p.name
	}
	var inactivePath string
	if !active && !p.external && fileExists(p.metaPath) {
		inactivePath = p.metaPath
	}
	mr, err := newMetaReader(p.dm, p.opts.Root, poolName, inactivePath)
	if err == nil {
		ids, err = mr.thinIDs(ctx)
		err = errors.Join(err, mr.close())
	}
	if err != nil {
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
		rep.ThinIDsError = err.Error()
	} else {
		known = true
		rep.ThinIDs = len(ids)
	}
	suspended, err := p.suspendedDMs()
	if err != nil {
		return rep, err
	}
	for _, dm := range suspended {
		rep.Findings = append(rep.Findings, Finding{Kind: FindingSuspended, DM: dm,
			Detail: fmt.Sprintf("device-mapper device %s is suspended (a process was killed between a suspend and its resume); opening the pool resumes it", dm)})
	}
	if f, pending := compareViews(p.prefix, recs, dms, ids, known); len(f)+len(pending) > 0 {
		rep.Findings = append(rep.Findings, f...)
		rep.Pending = append(rep.Pending, pending...)
	}
	if active {
		ps, err := p.poolStatus()
		if err != nil {
			return rep, err
		}
		switch {
		case ps.Mode != devmapper.PoolReadWrite:
			rep.Findings = append(rep.Findings, Finding{Kind: FindingPool, Detail: fmt.Sprintf("pool %s is in mode %s", p.name, ps.Mode)})
		case ps.NeedsCheck:
			rep.Findings = append(rep.Findings, Finding{Kind: FindingPool, Detail: fmt.Sprintf("pool %s needs thin_check", p.name)})
		}
	}
	return rep, nil
}

// Check compares the records, the kernel's devices and the pool's thin
// ids. When the pool is in use by another process, it takes two views and
// reports only what both show (a change the engine makes between reading
// the records and the metadata looks like an orphan for an instant).
func (in *Inspector) Check(ctx context.Context) (CheckReport, error) {
	first, err := checkOnce(ctx, in.p, in.active)
	if err != nil || !in.inUse {
		return first, err
	}
	if err := in.refresh(); err != nil {
		return first, err
	}
	second, err := checkOnce(ctx, in.p, in.active)
	if err != nil {
		return second, err
	}
	second.Live = true
	seen := make(map[string]bool, len(first.Findings))
	for _, f := range first.Findings {
		seen[f.key()] = true
	}
	kept := second.Findings[:0]
	for _, f := range second.Findings {
		if seen[f.key()] || f.Kind == FindingPool || f.Kind == FindingFaulty {
			kept = append(kept, f)
		}
	}
	second.Findings = kept
	return second, nil
}

// Check compares the records, the kernel's devices and the pool's thin ids
// (see Inspector.Check); the pool is this process's, so one view is
// enough.
func (p *Pool) Check(ctx context.Context) (CheckReport, error) {
	done, err := p.enter()
	if err != nil {
		return CheckReport{}, err
	}
	defer done()
	p.msgMu.Lock()
	defer p.msgMu.Unlock()
	return checkOnce(ctx, p, true)
}

// Usage is one device's space, from the pool's metadata.
type Usage struct {
	Device
	// Known is false when the metadata could not be read (UsageError
	// says why): the byte counts are then unknown, not zero.
	Known          bool   `json:"known"`
	UsageError     string `json:"usage_error,omitempty"`
	ExclusiveBytes int64  `json:"exclusive_bytes"`
	SharedBytes    int64  `json:"shared_bytes"`
	// PoolMappedBytes is what the metadata says the device maps (Device's
	// MappedBytes is the kernel's, for an active device only).
	PoolMappedBytes int64 `json:"pool_mapped_bytes"`
}

// Usage gives each named device's exclusive and shared bytes (thin_ls on
// a metadata snapshot). Without thin_ls, or on a pool whose metadata cannot
// be read, Known is false. Names without a record are ErrNotFound.
func (in *Inspector) Usage(ctx context.Context, names ...string) ([]Usage, error) {
	devs, err := in.Devices()
	if err != nil {
		return nil, err
	}
	byName := make(map[string]Device, len(devs))
	for _, d := range devs {
		byName[d.Name] = d
	}
	out := make([]Usage, 0, len(names))
	for _, n := range names {
		d, ok := byName[n]
		if !ok {
			return nil, fmt.Errorf("%w: %q", ErrNotFound, n)
		}
		out = append(out, Usage{Device: d})
	}
	poolName, inactivePath := "", ""
	if in.active {
		poolName = in.p.name
	} else if !in.p.external && fileExists(in.p.metaPath) {
		inactivePath = in.p.metaPath
	}
	mr, err := newMetaReader(in.dm, in.root, poolName, inactivePath)
	var usage map[uint32]ThinUsage
	if err == nil {
		usage, err = mr.usage(ctx)
		err = errors.Join(err, mr.close())
	}
	for i := range out {
		if err != nil {
			out[i].UsageError = err.Error()
			continue
		}
		u, ok := usage[out[i].ID]
		if !ok {
			out[i].UsageError = fmt.Sprintf("the pool's metadata has no thin id %d", out[i].ID)
			continue
		}
		out[i].Known = true
		out[i].ExclusiveBytes, out[i].SharedBytes, out[i].PoolMappedBytes = u.ExclusiveBytes, u.SharedBytes, u.MappedBytes
	}
	if ctx.Err() != nil {
		return out, ctx.Err()
	}
	return out, nil
}
