// Command dmthin-snapshotter serves a dmthin thin-provisioning snapshotter
// to containerd over its snapshots gRPC API on a unix socket. containerd
// loads it as a proxy plugin:
//
//	[proxy_plugins.dmthin]
//	  type = "snapshot"
//	  address = "/run/dmthin-snapshotter.sock"
//
// It stops cleanly on SIGTERM or SIGINT: it stops serving, then releases
// the pool (mounts handed to containerd stay containerd's).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"

	"github.com/dmthin/dmthin/containerd"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "dmthin-snapshotter:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("dmthin-snapshotter", flag.ContinueOnError)
	configPath := fs.String("config", "/etc/dmthin/snapshotter.toml", "TOML configuration file")
	address := fs.String("address", "/run/dmthin-snapshotter.sock", "unix socket to serve on")
	level := fs.String("log-level", "info", "log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	log := logrus.New()
	lvl, err := logrus.ParseLevel(*level)
	if err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	log.SetLevel(lvl)

	cfg, err := containerd.LoadConfig(*configPath)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	sn, err := containerd.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	l, err := listen(*address)
	if err != nil {
		return errors.Join(err, sn.Close())
	}
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	log.WithFields(logrus.Fields{"address": *address, "root": cfg.RootPath}).Info("dmthin snapshotter serving")

	select {
	case <-ctx.Done():
		log.Info("stopping")
		srv.GracefulStop()
		err = <-served
	case err = <-served:
	}
	return errors.Join(err, sn.Close(), removeSocket(*address))
}

// listen makes the socket's directory and replaces a socket left by a
// process that is gone. A second instance is refused before this by the
// snapshotter's lock on its root.
func listen(address string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(address), 0o711); err != nil {
		return nil, err
	}
	if err := removeSocket(address); err != nil {
		return nil, err
	}
	l, err := net.Listen("unix", address)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", address, err)
	}
	return l, nil
}

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
