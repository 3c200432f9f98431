package main

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	archive "github.com/moby/go-archive"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/ext4"
	"github.com/dmthin/dmthin/graphdriver"
	"github.com/dmthin/dmthin/loopback"
)

// smallFilesLayer is an uncompressed layer tar of n files of 512 B to 16 KiB
// in directories of 50, like a language runtime's library tree.
func smallFilesLayer(n int) (data []byte, contentBytes int64, err error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	r := rand.New(rand.NewPCG(1, 2))
	now := time.Unix(1700000000, 0)
	content := make([]byte, 16<<10)
	for i := range content {
		content[i] = byte(r.Uint32())
	}
	for i := 0; i < n; i++ {
		if i%50 == 0 {
			err = tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("lib/pkg%03d/", i/50), Typeflag: tar.TypeDir, Mode: 0o755, ModTime: now})
			if err != nil {
				return nil, 0, err
			}
		}
		size := 512 + r.IntN(16<<10-512)
		hdr := &tar.Header{Name: fmt.Sprintf("lib/pkg%03d/file%05d.py", i/50, i), Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(size), ModTime: now}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, 0, err
		}
		if _, err := tw.Write(content[:size]); err != nil {
			return nil, 0, err
		}
		contentBytes += int64(size)
	}
	return buf.Bytes(), contentBytes, tw.Close()
}

// writePlain writes the tar's directories and files with plain calls: what
// writing the same files to a directory costs, without any tar handling.
func writePlain(dst string, layer []byte) error {
	tr := tar.NewReader(bytes.NewReader(layer))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		p := filepath.Join(dst, hdr.Name)
		switch hdr.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, 0o755)
		case tar.TypeReg:
			var b []byte
			if b, err = io.ReadAll(tr); err == nil {
				err = os.WriteFile(p, b, 0o644)
			}
		}
		if err != nil {
			return err
		}
	}
}

type result struct {
	what string
	dur  time.Duration
}

func applyDiff(d *graphdriver.Driver, dir string, files, reps int) (err error) {
	ctx := context.Background()
	layer, content, err := smallFilesLayer(files)
	if err != nil {
		return err
	}
	var results []result
	measure := func(what string, setup func(rep int) (func() error, func() error, error)) error {
		var total time.Duration
		for rep := 0; rep < reps; rep++ {
			f, teardown, err := setup(rep)
			if err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
			start := time.Now()
			ferr := f()
			total += time.Since(start)
			if err := errors.Join(ferr, teardown()); err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
		}
		results = append(results, result{what, total / time.Duration(reps)})
		return nil
	}
	noop := func() error { return nil }

	// 1. A plain directory (the VM's /tmp is a tmpfs).
	err = measure("plain directory, os.WriteFile per file", func(rep int) (func() error, func() error, error) {
		dst := filepath.Join(dir, fmt.Sprintf("plain-%d", rep))
		return func() error { return writePlain(dst, layer) }, func() error { return os.RemoveAll(dst) }, nil
	})
	if err != nil {
		return err
	}
	err = measure("plain directory, same untar code", func(rep int) (func() error, func() error, error) {
		dst := filepath.Join(dir, fmt.Sprintf("untar-%d", rep))
		if err := os.Mkdir(dst, 0o755); err != nil {
			return nil, nil, err
		}
		return func() error {
			_, err := archive.ApplyUncompressedLayer(dst, bytes.NewReader(layer), &archive.TarOptions{})
			return err
		}, func() error { return os.RemoveAll(dst) }, nil
	})
	if err != nil {
		return err
	}

	// 2. ext4 on a loop device, no device-mapper: mount, untar, umount.
	img := filepath.Join(dir, "ext4.img")
	if err := loopback.CreateSparse(img, 1<<30); err != nil {
		return err
	}
	loop, err := loopback.Attach(img, loopback.Options{})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, loop.Detach()) }()
	if err := ext4.Format(ctx, loop.Path(), ext4.FormatOptions{}); err != nil {
		return err
	}
	mp := filepath.Join(dir, "ext4-mnt")
	if err := os.Mkdir(mp, 0o700); err != nil {
		return err
	}
	err = measure("ext4 on a loop device: mount, untar, umount", func(rep int) (func() error, func() error, error) {
		return func() error {
			if err := unix.Mount(loop.Path(), mp, "ext4", 0, ""); err != nil {
				return err
			}
			dst := filepath.Join(mp, fmt.Sprintf("run-%d", rep))
			aerr := os.Mkdir(dst, 0o755)
			if aerr == nil {
				_, aerr = archive.ApplyUncompressedLayer(dst, bytes.NewReader(layer), &archive.TarOptions{})
			}
			return errors.Join(aerr, unix.Unmount(mp, 0))
		}, noop, nil
	})
	if err != nil {
		return err
	}

	// 3. The driver: ApplyDiff into a fresh layer (Get, untar, Put).
	err = measure("driver: ApplyDiff into a new layer", func(rep int) (func() error, func() error, error) {
		id := fmt.Sprintf("apply-%d", rep)
		if err := d.Create(id, "", nil); err != nil {
			return nil, nil, err
		}
		return func() error {
			n, err := d.ApplyDiff(id, "", bytes.NewReader(layer))
			if err == nil && n != content {
				err = fmt.Errorf("applied %d bytes, the layer holds %d", n, content)
			}
			return err
		}, func() error { return d.Remove(id) }, nil
	})
	if err != nil {
		return err
	}

	fmt.Printf("\nApplyDiff of a layer of %d small files (%.1f MiB of contents), mean of %d, same run\n\n",
		files, float64(content)/(1<<20), reps)
	fmt.Printf("%-46s %11s %10s %9s %10s\n", "where the files go", "per layer", "files/s", "MiB/s", "vs plain")
	plain := results[0].dur
	for _, r := range results {
		secs := r.dur.Seconds()
		fmt.Printf("%-46s %11s %10.0f %9.1f %9.2fx\n", r.what, r.dur.Round(time.Millisecond),
			float64(files)/secs, float64(content)/(1<<20)/secs, secs/plain.Seconds())
	}
	fmt.Println("\n\"vs plain\" is time relative to the first row (higher is slower). The driver's and")
	fmt.Println("the loop device's rows include mounting and unmounting, which writes the files back.")
	return nil
}
