package thinpool

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestMountOriginDuringSnapshot reproduces "Get of a parent fails with
// EBUSY while a child is being snapshotted". The cause, seen on the
// kernel: suspending a dm device freezes its block device (lockfs), and a
// mount of a frozen block device fails at once with EBUSY ("Can't mount,
// blockdev is frozen"). A parent that is active but not yet mounted (the
// graph driver's Get between Activate and mount) met that whenever a
// child's Snapshot suspended it. The mount must wait for the resume
// instead, and succeed.
func TestMountOriginDuringSnapshot(t *testing.T) {
	tp := openPool(t, nil)
	ctx := context.Background()
	_, err := tp.Create(ctx, "parent", 64*MiB)
	require.NoError(t, err)
	node, err := tp.Activate(ctx, "parent")
	require.NoError(t, err)
	out, err := exec.Command("mkfs.ext4", "-q", "-F", node).CombinedOutput()
	require.NoError(t, err, "%s", out)
	mnt := t.TempDir()

	// Deterministic: mount while the origin is suspended for a snapshot.
	mounted := make(chan error, 1)
	tp.hook = func(step string) {
		if step != "snapshot:suspended" {
			return
		}
		go func() { mounted <- unix.Mount(node, mnt, "ext4", 0, "") }()
		select {
		case err := <-mounted:
			mounted <- err // returned while suspended: only an error can
		case <-time.After(500 * time.Millisecond):
		}
	}
	_, err = tp.Snapshot(ctx, "child", "parent", 0)
	tp.hook = nil
	require.NoError(t, err)
	select {
	case err := <-mounted:
		require.NoError(t, err, "mount of the origin while a snapshot suspends it")
	case <-time.After(30 * time.Second):
		t.Fatal("mount did not finish after the snapshot resumed the origin")
	}
	require.NoError(t, unix.Unmount(mnt, 0))
	require.NoError(t, tp.Deactivate(ctx, "parent", false))

	// The shape of the report: goroutines getting (activate + mount +
	// unmount + deactivate) the parent while others snapshot it.
	var wg sync.WaitGroup
	var mountErrs []error
	var mu sync.Mutex
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := tp.Snapshot(ctx, fmt.Sprintf("c%d", i), "parent", 0); err != nil {
				mu.Lock()
				mountErrs = append(mountErrs, fmt.Errorf("snapshot: %w", err))
				mu.Unlock()
			}
		}
	}()
	dir := filepath.Join(t.TempDir(), "m")
	require.NoError(t, unix.Mkdir(dir, 0o755))
	for i := 0; i < 15; i++ {
		node, err := tp.Activate(ctx, "parent")
		require.NoError(t, err)
		if err := unix.Mount(node, dir, "ext4", 0, ""); err != nil {
			mu.Lock()
			mountErrs = append(mountErrs, fmt.Errorf("mount %d: %w", i, err))
			mu.Unlock()
		} else {
			require.NoError(t, unix.Unmount(dir, 0))
		}
		require.NoError(t, tp.Deactivate(ctx, "parent", false))
	}
	close(stop)
	wg.Wait()
	for _, err := range mountErrs {
		t.Error(err)
	}
	assertPoolMatchesRecords(t, tp.Pool)
}
