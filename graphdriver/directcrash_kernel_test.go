package graphdriver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/go-units"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/dmthin/dmthin/layerstore"
	"github.com/dmthin/dmthin/loopback"
	"github.com/dmthin/dmthin/thinpool"
)

// killWhileToolRuns waits for a child process of this one (the tool a step
// starts), writes its pid to pidFile and kills this process.
func killWhileToolRuns(pidFile string) {
	me := os.Getpid()
	for {
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			if err != nil {
				continue
			}
			// pid (comm) state ppid ...
			f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
			if len(f) > 1 && f[1] == strconv.Itoa(me) {
				_ = os.WriteFile(pidFile, []byte(strconv.Itoa(pid)), 0o600)
				killSelf()
			}
		}
		time.Sleep(time.Millisecond)
	}
}

// goneOrZombie reports whether process pid has exited.
func goneOrZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && (f[0] == "Z" || f[0] == "X")
}

// TestDirectFirstLayoutCrash kills Init on a whole disk
// (dm.directlvm_device) at each step of its first layout, mkfs of the base
// included (killed while mkfs runs), and Inits again at once, as a process
// manager restarts an engine: Init works, the tool the killed Init started
// died with it, a layer can be made and used, check is healthy (records,
// dm devices and the pool's thin ids agree), and Cleanup leaves nothing.
func TestDirectFirstLayoutCrash(t *testing.T) {
	testenv.RequireDM(t)
	steps := []string{"direct:layout:label", "direct:linear", "pool:created",
		layerstore.StepBaseCreated, layerstore.StepBaseFormatting, layerstore.StepBaseFormatted}
	for _, step := range steps {
		t.Run(step, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "disk-"+testenv.Suffix(t))
			require.NoError(t, loopback.CreateSparse(file, 2*units.GiB))
			disk, err := loopback.Attach(file, loopback.Options{})
			require.NoError(t, err)
			t.Cleanup(func() { assert.NoError(t, disk.Detach()) })
			home := newHome(t)
			opts := []string{"dm.directlvm_device=" + disk.Path(), "dm.basesize=1G"}
			sp := crashSpec{Home: home, Options: opts, Op: "init", Step: step}
			if step == layerstore.StepBaseFormatting {
				sp.ToolPidFile = filepath.Join(t.TempDir(), "tool.pid")
			}
			runCrashChild(t, sp)
			if sp.ToolPidFile != "" {
				b, err := os.ReadFile(sp.ToolPidFile)
				require.NoError(t, err, "the child never saw its mkfs run")
				pid, err := strconv.Atoi(string(b))
				require.NoError(t, err)
				require.Eventually(t, func() bool { return goneOrZombie(pid) }, 200*time.Millisecond, 2*time.Millisecond,
					"the mkfs (pid %d) of the killed Init outlived it", pid)
			}

			d, err := Init(home, opts, testLogger(t))
			require.NoError(t, err, "Init at once after a kill at %s", step)
			t.Cleanup(func() { _ = d.Cleanup() })
			require.NoError(t, d.Create("l", "", nil))
			withLayer(t, d, "l", func(root string) {
				assert.Empty(t, dirNames(t, root), "the layer's root is the base's empty rootfs")
				writeFile(t, root, "f", "after a kill at "+step+"\n")
			})
			withLayer(t, d, "l", func(root string) {
				assert.Equal(t, "after a kill at "+step+"\n", readFile(t, root, "f"))
			})
			assertAccounted(t, d)
			require.NoError(t, d.Drain(context.Background()))

			in, err := thinpool.Inspect(thinpool.InspectOptions{Root: d.home})
			require.NoError(t, err)
			rep, err := in.Check(context.Background())
			require.NoError(t, err)
			require.NoError(t, in.Close())
			assert.True(t, rep.Healthy(), "check after a kill at %s: %+v", step, rep)
			assert.GreaterOrEqual(t, rep.ThinIDs, 2, "the base and the layer")
			cleanupAndCheck(t, d)
		})
	}
}
