package graphdriver

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// mountEntry is one line of a mountinfo file (proc(5)).
type mountEntry struct {
	MountPoint   string // escapes decoded
	Options      string // per-mount options: rw,nodev,noatime...
	FSType       string
	Source       string
	SuperOptions string // the filesystem's options
}

// parseMountInfo reads a mountinfo file (/proc/self/mountinfo):
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//
// fields 5 and 6 are the mount point and its options; after the optional
// fields and "-" come the filesystem type, the source and the superblock
// options.
func parseMountInfo(r io.Reader) ([]mountEntry, error) {
	var out []mountEntry
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		sep := -1
		for i := 6; i < len(fields); i++ {
			if fields[i] == "-" {
				sep = i
				break
			}
		}
		if len(fields) < 6 || sep < 0 || sep+3 > len(fields) {
			return nil, fmt.Errorf("graphdriver: malformed mountinfo line %q", line)
		}
		e := mountEntry{
			MountPoint: unescapeMountPath(fields[4]),
			Options:    fields[5],
			FSType:     fields[sep+1],
			Source:     unescapeMountPath(fields[sep+2]),
		}
		if sep+3 < len(fields) {
			e.SuperOptions = fields[sep+3]
		}
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("graphdriver: read mountinfo: %w", err)
	}
	return out, nil
}

// unescapeMountPath decodes the kernel's \ooo escapes (of space, tab,
// newline and backslash).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// mountsUnder returns the mounts of this process's mount namespace whose
// mount point is directly inside dir (dir/NAME), keyed by NAME.
func mountsUnder(dir string) (map[string]mountEntry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("graphdriver: %w", err)
	}
	defer f.Close()
	entries, err := parseMountInfo(f)
	if err != nil {
		return nil, err
	}
	prefix := strings.TrimSuffix(dir, "/") + "/"
	out := map[string]mountEntry{}
	for _, e := range entries {
		if name, ok := strings.CutPrefix(e.MountPoint, prefix); ok && name != "" && !strings.Contains(name, "/") {
			out[name] = e
		}
	}
	return out, nil
}
