// Command engine is the smallest program that embeds the storage driver the
// way a container engine does: an image layer unpacked from a tar, a
// container layer on it, the container's root mounted, used and released.
//
//	engine [-home DIR] [-layer image.tar] [-opt dm.basesize=1G]...
//
// Without -layer, a one-file image is made in memory. It needs root and a
// kernel with dm-thin-pool (or the project's test VM: hack/vm.sh run).
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/sirupsen/logrus"

	"github.com/dmthin/dmthin/graphdriver"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	home := flag.String("home", "/var/lib/dmthin-engine", "the driver's home directory")
	layer := flag.String("layer", "", "an uncompressed image layer tar (default: a tiny built-in one)")
	var opts multiFlag
	flag.Var(&opts, "opt", "a dm.* driver option (repeatable)")
	flag.Parse()
	if err := run(*home, *layer, opts); err != nil {
		fmt.Fprintln(os.Stderr, "engine:", err)
		os.Exit(1)
	}
}

func run(home, layerTar string, opts []string) (err error) {
	// 1. At start-up: one driver for the engine's lifetime.
	d, err := graphdriver.Init(home, opts, logrus.StandardLogger())
	if err != nil {
		return err
	}
	// At shutdown: unmount and deactivate everything; layers stay on disk.
	defer func() { err = errors.Join(err, d.Cleanup()) }()

	// 2. Pulling an image: a layer made from the base, filled from its tar.
	const image, container = "image-layer", "container-1"
	if !d.Exists(image) {
		if err := d.Create(image, "", nil); err != nil {
			return err
		}
		r, err := openLayer(layerTar)
		if err != nil {
			return err
		}
		n, err := d.ApplyDiff(image, "", r)
		if err != nil {
			return err
		}
		fmt.Printf("unpacked %d bytes into layer %s\n", n, image)
	}

	// 3. Creating a container: its writable layer on the image, 2G big.
	opt := &graphdriver.CreateOpts{StorageOpt: map[string]string{"size": "2G"}}
	if err := d.CreateReadWrite(container, image, opt); err != nil {
		return err
	}
	defer func() { err = errors.Join(err, d.Remove(container)) }()

	// 4. Starting it: Get gives the root to pivot_root into.
	root, err := d.Get(container, "")
	if err != nil {
		return err
	}
	fmt.Println("container root:", root)
	if err := os.WriteFile(filepath.Join(root, "written-by-container"), []byte("hello\n"), 0o644); err != nil {
		return errors.Join(err, d.Put(container))
	}
	// 5. Stopping it: Put unmounts at the last reference.
	if err := d.Put(container); err != nil {
		return err
	}

	// 6. docker diff / docker commit: what the container changed.
	changes, err := d.Changes(container, image)
	if err != nil {
		return err
	}
	for _, c := range changes {
		fmt.Println(c.String())
	}
	return nil
}

// openLayer returns the layer tar to apply.
func openLayer(path string) (io.Reader, error) {
	if path != "" {
		b, err := os.ReadFile(path)
		return bytes.NewReader(b), err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	body := "hello from the image\n"
	err := errors.Join(
		tw.WriteHeader(&tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}),
		tw.WriteHeader(&tar.Header{Name: "etc/motd", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))}),
	)
	if err == nil {
		_, err = tw.Write([]byte(body))
	}
	return &buf, errors.Join(err, tw.Close())
}
