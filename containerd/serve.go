package containerd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"google.golang.org/grpc"
)

// Serve serves sn over containerd's snapshots gRPC API on a unix socket at
// address until ctx ends, then stops gracefully (requests under way
// finish) and removes the socket. It does not close sn. A socket left at
// address by a process that is gone is replaced.
func Serve(ctx context.Context, sn *Snapshotter, address string) error {
	if err := os.MkdirAll(filepath.Dir(address), 0o711); err != nil {
		return err
	}
	if err := removeSocket(address); err != nil {
		return err
	}
	l, err := net.Listen("unix", address)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", address, err)
	}
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	sn.log.WithField("address", address).Info("serving containerd's snapshots API")
	select {
	case <-ctx.Done():
		srv.GracefulStop()
		err = <-served
	case err = <-served:
	}
	return errors.Join(err, removeSocket(address))
}

// removeSocket removes a unix socket; anything else at the path is an
// error, and nothing there is fine.
func removeSocket(address string) error {
	fi, err := os.Lstat(address)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket", address)
	}
	return os.Remove(address)
}
