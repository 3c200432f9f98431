package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// recorder is a testing.TB whose Fatalf and Skipf record the message and
// stop the goroutine, as the real ones do, without ending the test.
type recorder struct {
	testing.TB
	fatal, skip string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.fatal = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (r *recorder) Skipf(format string, args ...any) {
	r.skip = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// requireTool runs RequireTool against a recorder in its own goroutine.
func requireTool(t *testing.T, name string) (r *recorder, path string) {
	r = &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		path = RequireTool(r, name)
	}()
	<-done
	return r, path
}

func TestRequireTool(t *testing.T) {
	dir := t.TempDir()
	tool := filepath.Join(dir, "dmthin-fake-tool")
	if err := os.WriteFile(tool, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	const absent = "dmthin-no-such-tool"

	for _, required := range []string{"", "1"} {
		t.Run("DMTHIN_REQUIRE_DM="+required, func(t *testing.T) {
			t.Setenv("DMTHIN_REQUIRE_DM", required)

			r, path := requireTool(t, "dmthin-fake-tool")
			if r.fatal != "" || r.skip != "" || path != tool {
				t.Errorf("installed tool: path %q, fatal %q, skip %q; want path %q and no fatal or skip", path, r.fatal, r.skip, tool)
			}

			r, path = requireTool(t, absent)
			if path != "" {
				t.Errorf("missing tool: got path %q", path)
			}
			if required == "1" {
				if r.fatal == "" || r.skip != "" {
					t.Errorf("missing tool under DMTHIN_REQUIRE_DM=1 must fail, not skip: fatal %q, skip %q", r.fatal, r.skip)
				}
				if !strings.Contains(r.fatal, absent) {
					t.Errorf("the failure should name the tool: %q", r.fatal)
				}
			} else {
				if r.skip == "" || r.fatal != "" {
					t.Errorf("missing tool without DMTHIN_REQUIRE_DM=1 must skip: fatal %q, skip %q", r.fatal, r.skip)
				}
				if !strings.Contains(r.skip, absent) {
					t.Errorf("the skip should name the tool: %q", r.skip)
				}
			}
		})
	}
}

func TestLookToolSbin(t *testing.T) {
	// Tools in an sbin directory are found with a PATH that lacks them, as
	// a non-root user's often does: any executable there will do.
	t.Setenv("PATH", t.TempDir())
	for _, dir := range sbinDirs {
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			fi, err := os.Stat(filepath.Join(dir, e.Name()))
			if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
				continue
			}
			p, err := LookTool(e.Name())
			if err != nil {
				t.Fatalf("LookTool(%q): %v, want it found in the sbin directories", e.Name(), err)
			}
			if filepath.Base(p) != e.Name() {
				t.Fatalf("LookTool(%q) = %q", e.Name(), p)
			}
			return
		}
	}
	t.Skip("skipped: no executable in any sbin directory of this machine")
}
