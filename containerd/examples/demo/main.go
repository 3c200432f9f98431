// Command demo serves the dmthin snapshotter on a unix socket, as
// dmthin-snapshotter does, and drives it through that socket with
// containerd's own gRPC client, the way containerd does when it pulls an
// image and starts a container:
//
//	base (empty ext4, formatted once)
//	  └─ os       an image layer: Prepare, mount, write, Commit
//	      └─ app  a second image layer on top of it
//	          ├─ container  Prepare, mount, write (its writable layer)
//	          └─ view       a read-only View of app
//
// After each step it prints the pool's data usage, to show that a layer
// costs what it changed, and at the end removes everything.
//
// It needs root and a kernel with dm-thin-pool; elsewhere run it in the
// project's VM: `make demo-containerd`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/docker/go-units"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/dmthin/dmthin/containerd"
)

func main() {
	root := flag.String("root", "", "snapshotter root_path (default: a new directory under $TMPDIR, removed at the end)")
	flag.Parse()
	if err := run(*root); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(root string) (err error) {
	if root == "" {
		dir, err := os.MkdirTemp("", "dmthin-snapshotter-demo-")
		if err != nil {
			return err
		}
		defer func() { err = errors.Join(err, os.RemoveAll(dir)) }()
		root = dir
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The server side: what dmthin-snapshotter runs.
	cfg := containerd.Config{RootPath: filepath.Join(root, "state"), BaseImageSize: "1GB", LoopbackDataSize: "4GB", LoopbackMetadataSize: "64MB"}
	start := time.Now()
	sn, err := containerd.New(ctx, cfg, nil)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, sn.Close()) }()
	fmt.Printf("snapshotter ready in %s (loopback pool %s, base filesystem %s, formatted once)\n",
		time.Since(start).Round(time.Millisecond), cfg.LoopbackDataSize, cfg.BaseImageSize)
	address := filepath.Join(root, "snapshotter.sock")
	served := make(chan error, 1)
	go func() { served <- containerd.Serve(ctx, sn, address) }()
	defer func() { cancel(); err = errors.Join(err, <-served) }()

	// The client side: containerd's proxy over the socket.
	var conn *grpc.ClientConn
	for i := 0; ; i++ {
		if _, serr := os.Stat(address); serr == nil {
			break
		} else if i == 100 {
			return fmt.Errorf("no socket at %s", address)
		}
		time.Sleep(20 * time.Millisecond)
	}
	conn, err = grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "dmthin")
	fmt.Printf("client connected to %s\n\n", address)

	usage := func(what string) error {
		st, err := sn.Store().PoolStatus(ctx)
		if err != nil {
			return err
		}
		fmt.Printf("  pool data used: %-10s (%s)\n", units.BytesSize(float64(st.DataUsed)), what)
		return nil
	}
	if err := usage("base device only"); err != nil {
		return err
	}
	mp := filepath.Join(root, "mnt")
	if err := os.MkdirAll(mp, 0o755); err != nil {
		return err
	}
	// layer prepares key from parent, writes files into it and commits it
	// as name: what an image pull does for each layer.
	layer := func(name, parent string, files map[string]string) error {
		key := "extract-" + name
		t := time.Now()
		m, err := client.Prepare(ctx, key, parent)
		if err != nil {
			return err
		}
		if err := mount.All(m, mp); err != nil {
			return err
		}
		werr := writeFiles(mp, files)
		if err := errors.Join(werr, mount.UnmountAll(mp, 0)); err != nil {
			return err
		}
		if err := client.Commit(ctx, name, key); err != nil {
			return err
		}
		u, err := client.Usage(ctx, name)
		if err != nil {
			return err
		}
		fmt.Printf("layer %-4s parent %-4q  Prepare+mount+write+Commit %s, device maps %s\n",
			name, parent, time.Since(t).Round(time.Millisecond), units.BytesSize(float64(u.Size)))
		return usage("after " + name)
	}
	if err := layer("os", "", map[string]string{"etc/os-release": "NAME=demo\n", "bin/sh": strings.Repeat("\x7fELF", 1<<18)}); err != nil {
		return err
	}
	if err := layer("app", "os", map[string]string{"app/server": strings.Repeat("app", 1<<18), "etc/app.conf": "port=80\n"}); err != nil {
		return err
	}

	// A container: its writable snapshot of app, mounted and written.
	t := time.Now()
	m, err := client.Prepare(ctx, "container-1", "app")
	if err != nil {
		return err
	}
	fmt.Printf("\ncontainer-1 prepared from app in %s: mount %s %s %v\n", time.Since(t).Round(time.Millisecond), m[0].Type, m[0].Source, m[0].Options)
	if err := mount.All(m, mp); err != nil {
		return err
	}
	werr := writeFiles(mp, map[string]string{"var/log/app.log": "started\n"})
	seen, rerr := os.ReadFile(filepath.Join(mp, "etc/os-release"))
	if err := errors.Join(werr, rerr, mount.UnmountAll(mp, 0)); err != nil {
		return err
	}
	fmt.Printf("  the container sees the os layer's /etc/os-release: %q\n", strings.TrimSpace(string(seen)))
	if err := usage("after container-1 wrote its log"); err != nil {
		return err
	}

	// A read-only view of app.
	m, err = client.View(ctx, "view-1", "app")
	if err != nil {
		return err
	}
	if err := mount.All(m, mp); err != nil {
		return err
	}
	werr = os.WriteFile(filepath.Join(mp, "x"), nil, 0o644)
	if err := mount.UnmountAll(mp, 0); err != nil {
		return err
	}
	fmt.Printf("view-1 of app mounted %v; a write there fails: %v\n", m[0].Options, werr)

	fmt.Println("\nsnapshots (Walk):")
	err = client.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		fmt.Printf("  %-11s %-9s parent %q\n", info.Name, info.Kind, info.Parent)
		return nil
	})
	if err != nil {
		return err
	}
	if err := client.Remove(ctx, "app"); err != nil {
		fmt.Printf("\nRemove of app while container-1 and view-1 use it is refused: %v\n", err)
	}
	for _, k := range []string{"view-1", "container-1", "app", "os"} {
		if err := client.Remove(ctx, k); err != nil {
			return err
		}
	}
	fmt.Println("removed view-1, container-1, app, os")
	return usage("everything removed")
}

func writeFiles(root string, files map[string]string) error {
	for name, content := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}
