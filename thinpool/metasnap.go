package thinpool

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/devmapper"
	"github.com/dmthin/dmthin/internal/retry"
	"github.com/dmthin/dmthin/internal/toolexec"
)

// Reading the pool's own metadata (which thin ids it holds, how many blocks
// each one maps and shares) is the job of thin-provisioning-tools: thin_dump
// and thin_ls. On a live pool they read a metadata snapshot, which the pool
// makes on reserve_metadata_snap and drops on release_metadata_snap; the
// pool keeps working meanwhile.

// ErrToolMissing: a thin-provisioning-tools program is not installed; what
// it would have told is unknown.
var ErrToolMissing = errors.New("thinpool: thin-provisioning-tools program not installed")

// ErrSnapshotHeld: the pool holds a metadata snapshot already (another
// check is running, or a killed one left it: release it with
// `dmsetup message POOL 0 release_metadata_snap`).
var ErrSnapshotHeld = errors.New("thinpool: the pool holds a metadata snapshot already")

// ThinUsage is one thin device as the pool's metadata describes it.
type ThinUsage struct {
	ID uint32 `json:"id"`
	// MappedBytes is what the device maps; ExclusiveBytes the part no
	// other device shares; SharedBytes the rest.
	MappedBytes    int64 `json:"mapped_bytes"`
	ExclusiveBytes int64 `json:"exclusive_bytes"`
	SharedBytes    int64 `json:"shared_bytes"`
}

// thinTools finds and runs the thin-provisioning-tools programs: in PATH,
// then in the sbin directories a non-root PATH often lacks.
var thinTools = toolexec.Finder{
	Dirs:     []string{"/usr/local/sbin", "/usr/sbin", "/sbin"},
	Package:  "thin-provisioning-tools",
	Sentinel: ErrToolMissing,
}

func lookTool(name string) (string, error) { return thinTools.Look(name) }

// runTool runs a thin-provisioning-tools program and returns its output;
// a failure is a *toolexec.ExecError with what the program printed.
func runTool(ctx context.Context, name string, args ...string) ([]byte, error) {
	out, err := thinTools.Output(ctx, name, nil, args...)
	if err != nil {
		return nil, fmt.Errorf("thinpool: %w", err)
	}
	return []byte(out), nil
}

var dumpDevice = regexp.MustCompile(`<device dev_id="(\d+)"`)

// parseThinDumpIDs reads the thin ids of thin_dump's XML, sorted.
func parseThinDumpIDs(xml []byte) ([]uint32, error) {
	if !bytes.Contains(xml, []byte("<superblock")) {
		return nil, errors.New("thinpool: thin_dump printed no superblock")
	}
	var ids []uint32
	for _, m := range dumpDevice.FindAllSubmatch(xml, -1) {
		v, err := strconv.ParseUint(string(m[1]), 10, 32)
		if err != nil {
			return nil, fmt.Errorf("thinpool: thin_dump dev_id %q: %w", m[1], err)
		}
		ids = append(ids, uint32(v))
	}
	slices.Sort(ids)
	return ids, nil
}

// parseThinLs reads the output of thin_ls -o
// DEV,MAPPED_BYTES,EXCLUSIVE_BYTES,SHARED_BYTES --no-headers.
func parseThinLs(out []byte) (map[uint32]ThinUsage, error) {
	res := map[uint32]ThinUsage{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for line := 1; sc.Scan(); line++ {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if len(f) != 4 {
			return nil, fmt.Errorf("thinpool: thin_ls line %d %q: want 4 fields", line, sc.Text())
		}
		var n [4]uint64
		for i, s := range f {
			v, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("thinpool: thin_ls line %d field %d %q: %w", line, i+1, s, err)
			}
			n[i] = v
		}
		if n[0] >= 1<<24 {
			return nil, fmt.Errorf("thinpool: thin_ls line %d: thin id %d out of range", line, n[0])
		}
		res[uint32(n[0])] = ThinUsage{ID: uint32(n[0]), MappedBytes: int64(n[1]), ExclusiveBytes: int64(n[2]), SharedBytes: int64(n[3])}
	}
	return res, sc.Err()
}

// metaReader reads a pool's metadata with the tools: through a metadata
// snapshot when the pool device is active, or the metadata file or
// device itself when it is not (nothing else has it open then).
type metaReader struct {
	dm   *devmapper.Client
	root string // the pool's Root, where the snapshot's lock file is
	pool string // active pool device, "" when not active
	path string // metadata file or device node
	// cleanup removes the node made for path, if any.
	cleanup func() error
}

// newMetaReader finds where the metadata of the active pool device pool is
// ("" for none; then inactivePath, when known, is read directly).
func newMetaReader(dm *devmapper.Client, root, pool, inactivePath string) (*metaReader, error) {
	r := &metaReader{dm: dm, root: root, pool: pool, path: inactivePath, cleanup: func() error { return nil }}
	if pool == "" {
		if inactivePath == "" {
			return nil, errors.New("thinpool: the pool is not active and its metadata device is unknown")
		}
		return r, nil
	}
	tab, err := dm.Table(pool)
	if err != nil {
		return nil, fmt.Errorf("thinpool: table of %s: %w", pool, err)
	}
	tp, ok := tab[0].Params.(devmapper.ThinPoolParams)
	if len(tab) != 1 || !ok {
		return nil, fmt.Errorf("thinpool: %q is not a thin pool", pool)
	}
	md := tp.Metadata
	// A loop device is read through its file: the pool writes the file
	// through the loop driver, and the file's page cache sees it all.
	if b, err := os.ReadFile(fmt.Sprintf("/sys/dev/block/%d:%d/loop/backing_file", md.Major, md.Minor)); err == nil {
		if p := strings.TrimSpace(string(b)); p != "" {
			if _, err := os.Stat(p); err == nil {
				r.path = p
				return r, nil
			}
		}
	}
	dir, err := os.MkdirTemp("", "dmthin-meta-")
	if err != nil {
		return nil, fmt.Errorf("thinpool: %w", err)
	}
	node := filepath.Join(dir, "metadata")
	if err := unix.Mknod(node, unix.S_IFBLK|0o600, int(unix.Mkdev(md.Major, md.Minor))); err != nil {
		return nil, errors.Join(fmt.Errorf("thinpool: node for metadata device %s: %w", md, err), os.RemoveAll(dir))
	}
	r.path = node
	r.cleanup = func() error { return os.RemoveAll(dir) }
	return r, nil
}

func (r *metaReader) close() error { return r.cleanup() }

// run runs a tool over the metadata: with --metadata-snap on a snapshot it
// reserves and releases around the run, on a live pool.
func (r *metaReader) run(ctx context.Context, tool string, args ...string) (out []byte, err error) {
	if r.pool == "" {
		return runTool(ctx, tool, append(args, r.path)...)
	}
	if _, err := lookTool(tool); err != nil {
		return nil, err
	}
	unlock, err := lockMetadataSnapshot(r.root)
	if err != nil {
		return nil, fmt.Errorf("%w (%s; another check is running): %w", ErrSnapshotHeld, r.pool, err)
	}
	defer unlock()
	if err := reserveMetadataSnapshot(ctx, r.dm, r.pool); err != nil {
		return nil, err
	}
	defer func() {
		if rerr := releaseMetadataSnapshot(ctx, r.dm, r.pool); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}()
	return runTool(ctx, tool, append(append([]string{"--metadata-snap"}, args...), r.path)...)
}

// A metadata snapshot is the pool's, not a process's: a reader killed while
// it holds one leaves it held, and every later reader would be refused
// (EBUSY) while the pool keeps the old metadata blocks for it. So the
// reader that holds one also holds an flock on metasnapLock under the
// pool's Root; a snapshot held while that lock is free was left behind,
// and the next reader (or Open) releases it.
const metasnapLock = "metasnap.lock"

// lockMetadataSnapshot takes the snapshot's lock without waiting.
func lockMetadataSnapshot(root string) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(root, metasnapLock), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return nil, errors.Join(fmt.Errorf("flock %s: %w", f.Name(), err), f.Close())
	}
	return func() { _ = f.Close() }, nil
}

// snapshotRetry bounds the retries of a reserve or release that fails.
var snapshotRetry = retry.Policy{Tries: 3, Base: 10 * time.Millisecond}

// reserveMetadataSnapshot reserves one; a snapshot left by a reader that
// died (the caller holds the lock) is released first.
func reserveMetadataSnapshot(ctx context.Context, dm *devmapper.Client, pool string) error {
	_, err := dm.Message(pool, 0, "reserve_metadata_snap")
	if errors.Is(err, unix.EBUSY) {
		if rerr := releaseMetadataSnapshot(ctx, dm, pool); rerr != nil {
			return errors.Join(fmt.Errorf("%w (%s): %w", ErrSnapshotHeld, pool, err), rerr)
		}
		_, err = dm.Message(pool, 0, "reserve_metadata_snap")
	}
	if err != nil {
		return fmt.Errorf("thinpool: reserve metadata snapshot of %s: %w", pool, err)
	}
	return nil
}

// releaseMetadataSnapshot releases the pool's metadata snapshot, retrying.
func releaseMetadataSnapshot(ctx context.Context, dm *devmapper.Client, pool string) error {
	err := retry.Do(ctx, snapshotRetry, func(error) bool { return true }, func() error {
		_, err := dm.Message(pool, 0, "release_metadata_snap")
		return err
	})
	if err != nil {
		return fmt.Errorf("thinpool: release metadata snapshot of %s: %w", pool, err)
	}
	return nil
}

// releaseLeftSnapshot releases a metadata snapshot of the pool that no
// reader holds (one a killed check left), at Open.
func (p *Pool) releaseLeftSnapshot(ctx context.Context, ps devmapper.ThinPoolStatus) {
	if ps.HeldMetadataRoot == nil {
		return
	}
	unlock, err := lockMetadataSnapshot(p.opts.Root)
	if err != nil {
		return // a check is running
	}
	defer unlock()
	if err := releaseMetadataSnapshot(ctx, p.dm, p.name); err != nil {
		p.log.WithError(err).Warn("recovery: a metadata snapshot a killed check left could not be released")
		return
	}
	p.log.Info("recovery: released a metadata snapshot a killed check left")
}

// thinIDs lists the thin ids the metadata holds, sorted.
func (r *metaReader) thinIDs(ctx context.Context) ([]uint32, error) {
	out, err := r.run(ctx, "thin_dump", "--skip-mappings")
	if err != nil {
		return nil, err
	}
	return parseThinDumpIDs(out)
}

// usage gives every thin device's mapped, exclusive and shared bytes.
func (r *metaReader) usage(ctx context.Context) (map[uint32]ThinUsage, error) {
	out, err := r.run(ctx, "thin_ls", "--no-headers", "-o", "DEV,MAPPED_BYTES,EXCLUSIVE_BYTES,SHARED_BYTES")
	if err != nil {
		return nil, err
	}
	return parseThinLs(out)
}
