package testenv

import (
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"testing"
)

var thinDevice = regexp.MustCompile(`<device dev_id="(\d+)"`)

// ThinIDs runs thin_dump with args (a metadata file or device, with
// --metadata-snap for a live pool) and returns the thin ids the pool's
// metadata holds, sorted; nil when it holds none. Tests compare them with
// the records a store keeps: no thin id without a record, no record
// without a thin id.
func ThinIDs(t testing.TB, args ...string) []uint32 {
	t.Helper()
	out, err := exec.Command(RequireTool(t, "thin_dump"), args...).Output()
	if err != nil {
		t.Fatalf("thin_dump %q: %v", args, err)
	}
	var ids []uint32
	for _, m := range thinDevice.FindAllSubmatch(out, -1) {
		v, err := strconv.ParseUint(string(m[1]), 10, 32)
		if err != nil {
			t.Fatalf("thin_dump %q: dev_id %q: %v", args, m[1], err)
		}
		ids = append(ids, uint32(v))
	}
	slices.Sort(ids)
	return ids
}
