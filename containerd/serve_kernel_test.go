package containerd

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/dmthin/dmthin/internal/testenv"
)

// envServe makes the test binary a snapshotter server, as the
// dmthin-snapshotter command is: New, Serve until SIGTERM, Close.
const envServe = "DMTHIN_SNAPSHOTTER_SERVE"

type servePlan struct {
	Config  Config
	Address string
}

// serveChild runs the server the parent asked for; TestMain exits with
// its result.
func serveChild(v string) error {
	var plan servePlan
	if err := json.Unmarshal([]byte(v), &plan); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	log := logrus.New()
	log.SetOutput(os.Stderr)
	sn, err := New(ctx, plan.Config, log)
	if err != nil {
		return err
	}
	return errors.Join(Serve(ctx, sn, plan.Address), sn.Close())
}

// startServer starts a server process and waits for its socket (or its
// exit).
func startServer(t *testing.T, cfg Config, address string) (*exec.Cmd, *strings.Builder, <-chan error) {
	t.Helper()
	plan, err := json.Marshal(servePlan{Config: cfg, Address: address})
	require.NoError(t, err)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envServe+"="+string(plan))
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	return cmd, out, exited
}

func waitSocket(t *testing.T, address string, exited <-chan error, out *strings.Builder) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if fi, err := os.Stat(address); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return
		}
		select {
		case err := <-exited:
			t.Fatalf("server exited before serving (%v): %s", err, out)
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("server did not serve on %s: %s", address, out)
}

func dial(t *testing.T, address string) snapshots.Snapshotter {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "dmthin")
}

// TestServe drives a served snapshotter as containerd does, through its
// socket: a second server on the same root is refused, SIGTERM stops the
// server cleanly while a mount handed out is still held, and the next
// stop leaves no device, pool or loop device behind.
func TestServe(t *testing.T) {
	testenv.RequireDM(t)
	ctx := context.Background()
	dir := t.TempDir()
	cfg := testConfig(filepath.Join(dir, "root"))
	address := filepath.Join(dir, "run", "snapshotter.sock")
	cmd, out, exited := startServer(t, cfg, address)
	waitSocket(t, address, exited, out)
	sn := dial(t, address)

	// An image layer, a container on it, a view.
	mounts, err := sn.Prepare(ctx, "layer-active", "")
	require.NoError(t, err)
	mp := t.TempDir()
	require.NoError(t, mount.All(mounts, mp))
	require.NoError(t, errors.Join(os.WriteFile(filepath.Join(mp, "f"), []byte("layer"), 0o644), mount.UnmountAll(mp, 0)))
	require.NoError(t, sn.Commit(ctx, "layer", "layer-active"))
	mounts, err = sn.Prepare(ctx, "container", "layer")
	require.NoError(t, err)
	require.NoError(t, mount.All(mounts, mp)) // held across the SIGTERM below
	got, err := os.ReadFile(filepath.Join(mp, "f"))
	require.NoError(t, err)
	require.Equal(t, "layer", string(got))
	u, err := sn.Usage(ctx, "layer")
	require.NoError(t, err)
	require.Positive(t, u.Size)

	// A second server on the same root is refused, and the first serves on.
	other := filepath.Join(dir, "run", "other.sock")
	_, out2, exited2 := startServer(t, cfg, other)
	select {
	case err := <-exited2:
		require.Error(t, err, "a second server on the same root_path ran: %s", out2)
		require.Contains(t, out2.String(), "another process holds root_path")
	case <-time.After(time.Minute):
		t.Fatal("a second server on the same root_path is still running")
	}
	_, err = sn.Stat(ctx, "layer")
	require.NoError(t, err)

	// SIGTERM: a clean stop, the held mount untouched.
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-exited:
		require.NoError(t, err, "server after SIGTERM: %s", out)
	case <-time.After(time.Minute):
		t.Fatalf("server did not stop on SIGTERM: %s", out)
	}
	_, err = os.Lstat(address)
	require.True(t, errors.Is(err, os.ErrNotExist), "socket left behind: %v", err)
	got, err = os.ReadFile(filepath.Join(mp, "f"))
	require.NoError(t, err, "the mount containerd holds broke at the stop")
	require.Equal(t, "layer", string(got))
	require.NoError(t, mount.UnmountAll(mp, 0))

	// Again, with nothing held: the next stop leaves nothing.
	cmd, out, exited = startServer(t, cfg, address)
	waitSocket(t, address, exited, out)
	sn = dial(t, address)
	info, err := sn.Stat(ctx, "container")
	require.NoError(t, err)
	require.Equal(t, "layer", info.Parent)
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, <-exited, "%s", out)
	dm, err := exec.Command("dmsetup", "ls").CombinedOutput()
	require.NoError(t, err, "%s", dm)
	require.NotContains(t, string(dm), "dmthin-", "device-mapper devices left after the stop")
	loops, err := exec.Command("losetup", "-a").CombinedOutput()
	require.NoError(t, err, "%s", loops)
	require.NotContains(t, string(loops), cfg.RootPath, "loop devices left after the stop")
}
