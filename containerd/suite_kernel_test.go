package containerd

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/dmthin/dmthin/internal/testenv"
)

// testConfig is a small pool and base filesystem under root, so that each
// of the suite's tests (each with its own root) sets up quickly. The data
// file stays small for another reason: on a failure, containerd's suite
// reads every file under root into memory (testutil.DumpDirOnFailure),
// sparse loop files included.
func testConfig(root string) Config {
	return Config{
		RootPath:             root,
		BaseImageSize:        "64MB",
		LoopbackDataSize:     "512MB",
		LoopbackMetadataSize: "32MB",
	}
}

// TestSnapshotterSuite runs containerd's conformance suite against the
// snapshotter, called directly.
func TestSnapshotterSuite(t *testing.T) {
	testenv.RequireDM(t)
	testsuite.SnapshotterSuite(t, "dmthin", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		sn, err := New(ctx, testConfig(root), testLogger(t))
		if err != nil {
			return nil, nil, err
		}
		return sn, sn.Close, nil
	})
}

// TestSnapshotterSuiteGRPC runs the suite through containerd's proxy
// client against the snapshotter served on a unix socket, as containerd
// reaches dmthin-snapshotter.
func TestSnapshotterSuiteGRPC(t *testing.T) {
	testenv.RequireDM(t)
	testsuite.SnapshotterSuite(t, "dmthin", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		sn, err := New(ctx, testConfig(root), testLogger(t))
		if err != nil {
			return nil, nil, err
		}
		client, stop, err := serve(sn, filepath.Join(root, "snapshotter.sock"))
		if err != nil {
			return nil, nil, errors.Join(err, sn.Close())
		}
		return client, func() error { return errors.Join(stop(), sn.Close()) }, nil
	})
}

// serve serves sn on a unix socket at address, as cmd/dmthin-snapshotter
// does, and returns containerd's proxy client for it.
func serve(sn snapshots.Snapshotter, address string) (snapshots.Snapshotter, func() error, error) {
	l, err := net.Listen("unix", address)
	if err != nil {
		return nil, nil, err
	}
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		srv.Stop()
		return nil, nil, errors.Join(err, <-served)
	}
	stop := func() error {
		cerr := conn.Close()
		srv.GracefulStop()
		return errors.Join(cerr, <-served)
	}
	return proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "dmthin"), stop, nil
}
