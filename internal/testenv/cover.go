package testenv

import (
	"os"
	"runtime/coverage"
)

// FlushCoverage writes the process's coverage data into $GOCOVERDIR, if it
// is set. A crash-test child calls it just before it SIGKILLs itself: a
// killed process never runs the exit hook that would write it, so without
// this the statements a crash child ran would count as uncovered. In a
// binary built without -cover the writes fail; that is ignored.
func FlushCoverage() {
	dir := os.Getenv("GOCOVERDIR")
	if dir == "" {
		return
	}
	_ = coverage.WriteMetaDir(dir)
	_ = coverage.WriteCountersDir(dir)
}
