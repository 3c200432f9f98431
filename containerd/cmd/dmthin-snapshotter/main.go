// Command dmthin-snapshotter serves a dmthin thin-provisioning snapshotter
// to containerd over its snapshots gRPC API on a unix socket. containerd
// loads it as a proxy plugin:
//
//	[proxy_plugins.dmthin]
//	  type = "snapshot"
//	  address = "/run/dmthin-snapshotter.sock"
//
// It stops cleanly on SIGTERM or SIGINT: it stops serving, then releases
// the pool (devices containerd still has mounted stay active for it).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/sirupsen/logrus"

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
	lvl, err := logrus.ParseLevel(*level)
	if err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	log := logrus.New()
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
	err = containerd.Serve(ctx, sn, *address)
	log.Info("stopping")
	return errors.Join(err, sn.Close())
}
