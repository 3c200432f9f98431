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

	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/devmapper"
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
	pool string // active pool device, "" when not active
	path string // metadata file or device node
	// cleanup removes the node made for path, if any.
	cleanup func() error
}

// newMetaReader finds where the metadata of the active pool device pool is
// ("" for none; then inactivePath, when known, is read directly).
func newMetaReader(dm *devmapper.Client, pool, inactivePath string) (*metaReader, error) {
	r := &metaReader{dm: dm, pool: pool, path: inactivePath, cleanup: func() error { return nil }}
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
	if _, err := r.dm.Message(r.pool, 0, "reserve_metadata_snap"); err != nil {
		if errors.Is(err, unix.EBUSY) {
			return nil, fmt.Errorf("%w (%s; another check is running, or a killed one left it: dmsetup message %s 0 release_metadata_snap): %w", ErrSnapshotHeld, r.pool, r.pool, err)
		}
		return nil, fmt.Errorf("thinpool: reserve metadata snapshot of %s: %w", r.pool, err)
	}
	defer func() {
		if _, rerr := r.dm.Message(r.pool, 0, "release_metadata_snap"); rerr != nil {
			err = errors.Join(err, fmt.Errorf("thinpool: release metadata snapshot of %s: %w", r.pool, rerr))
		}
	}()
	return runTool(ctx, tool, append(append([]string{"--metadata-snap"}, args...), r.path)...)
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
