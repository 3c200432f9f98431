package main

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"

	"github.com/docker/go-units"
)

// The files the demo's layers write. Contents are pseudo-random (seeded by
// name), as real binaries are: nothing for the pool to get for free.

func writeFile(root, rel string, n int) error {
	data := make([]byte, n)
	r := rand.New(rand.NewPCG(uint64(len(rel)), uint64(n)))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	return writeText(root, rel, string(data))
}

func writeText(root, rel, text string) error {
	p := filepath.Join(root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, []byte(text), 0o644)
}

func buildOS(root string) error {
	return errors.Join(
		writeText(root, "etc/os-release", "NAME=\"Demo Linux\"\nVERSION_ID=1\n"),
		writeText(root, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
		writeText(root, "etc/hostname", "demo\n"),
		writeFile(root, "bin/sh", 1*units.MiB),
		writeFile(root, "bin/ls", 512*units.KiB),
		writeFile(root, "lib/libc.so.6", 2*units.MiB),
		writeFile(root, "usr/share/doc/os/README", 64*units.KiB),
		writeFile(root, "usr/share/doc/os/LICENSE", 16*units.KiB),
	)
}

func buildApp(root string) error {
	passwd := filepath.Join(root, "etc/passwd")
	f, err := os.OpenFile(passwd, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, werr := f.WriteString("app:x:1000:1000:app:/app:/bin/sh\n")
	return errors.Join(werr, f.Close(),
		writeFile(root, "app/server", 4*units.MiB),
		writeText(root, "app/config.yaml", "listen: :8080\nworkers: 4\n"),
		os.RemoveAll(filepath.Join(root, "usr/share/doc")),
	)
}

func buildContainer(root string) error {
	return errors.Join(
		writeFile(root, "var/log/app.log", 256*units.KiB),
		writeFile(root, "tmp/cache.db", 1*units.MiB),
		writeText(root, "app/config.yaml", "listen: :9090\nworkers: 8\n"),
		os.Remove(filepath.Join(root, "bin/ls")),
	)
}

type listing struct {
	lines []string
	files int
	bytes int64
}

// listTree lists every entry under root, directories with a trailing "/".
func listTree(root string) (listing, error) {
	var l listing
	var rows [][2]string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		if d.IsDir() {
			rows = append(rows, [2]string{"/" + rel + "/", ""})
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		l.files++
		l.bytes += fi.Size()
		rows = append(rows, [2]string{"/" + rel, units.BytesSize(float64(fi.Size()))})
		return nil
	})
	l.lines = twoColumns(rows)
	if len(l.lines) == 0 {
		l.lines = []string{"(empty)"}
	}
	return l, err
}

// diffEntries reads the layer's diff and describes each entry.
func (m *demo) diffEntries(id, parent string) (listing, error) {
	rc, err := m.d.Diff(id, parent)
	if err != nil {
		return listing{}, err
	}
	var l listing
	var rows [][2]string
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return l, errors.Join(err, rc.Close())
		}
		name := "/" + strings.TrimSuffix(hdr.Name, "/")
		dir, base := filepath.Split(name)
		switch {
		case strings.HasPrefix(base, ".wh."):
			rows = append(rows, [2]string{hdr.Name, "whiteout: " + dir + strings.TrimPrefix(base, ".wh.") + " is deleted"})
		case hdr.Typeflag == tar.TypeDir:
			rows = append(rows, [2]string{hdr.Name, "directory"})
		case hdr.Typeflag == tar.TypeReg:
			l.files++
			l.bytes += hdr.Size
			rows = append(rows, [2]string{hdr.Name, "file, " + units.BytesSize(float64(hdr.Size))})
		default:
			rows = append(rows, [2]string{hdr.Name, fmt.Sprintf("type %c", hdr.Typeflag)})
		}
	}
	l.lines = twoColumns(rows)
	return l, rc.Close()
}

func twoColumns(rows [][2]string) []string {
	w := 0
	for _, r := range rows {
		w = max(w, len(r[0]))
	}
	out := make([]string, 0, len(rows))
	for _, r := range rows {
		out = append(out, strings.TrimRight(fmt.Sprintf("%-*s  %s", w, r[0], r[1]), " "))
	}
	return out
}
