package graphdriver

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dmthin/dmthin/ext4"
	"github.com/dmthin/dmthin/internal/testenv"
	"github.com/dmthin/dmthin/thinpool"
)

// The driver next to what it replaces, measured side by side in each
// iteration so the ratio is fair under emulation (make bench runs these in
// the VM). examples/bench-driver prints the same comparisons as a table,
// step by step.

func benchDriver(b *testing.B) *Driver {
	testenv.RequireDM(b)
	home := filepath.Join(b.TempDir(), "home-"+testenv.Suffix(b))
	d, err := Init(home, []string{"dm.loopdatasize=4G", "dm.loopmetadatasize=256M", "dm.basesize=256M",
		"dm.blkdiscard=false", "dm.min_free_space=0%"}, nil)
	require.NoError(b, err)
	b.Cleanup(func() { require.NoError(b, d.Cleanup()) })
	return d
}

// BenchmarkLayerLifeVsCLI: ten container layer lives per iteration, each
// Create+Get+Put+Remove through the driver, then create_snap, dmsetup
// create, mount, umount, dmsetup remove, delete through the CLIs on a pool
// of the same shape. ns/op is the driver's time per life.
func BenchmarkLayerLifeVsCLI(b *testing.B) {
	d := benchDriver(b)
	ctx := context.Background()
	zero := 0
	p, err := thinpool.Open(ctx, thinpool.Options{Root: filepath.Join(b.TempDir(), "cli-"+testenv.Suffix(b)),
		LoopDataSize: 4 << 30, LoopMetadataSize: 256 << 20, MinFreeSpacePercent: &zero})
	require.NoError(b, err)
	b.Cleanup(func() { require.NoError(b, p.Shutdown(ctx)) })
	const size = 256 << 20
	origin, err := p.Create(ctx, "origin", size)
	require.NoError(b, err)
	node, err := p.Activate(ctx, "origin")
	require.NoError(b, err)
	require.NoError(b, ext4.Format(ctx, node, ext4.FormatOptions{}))
	require.NoError(b, p.Deactivate(ctx, "origin", false))
	mnt := b.TempDir()
	sh := func(args ...string) {
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		require.NoError(b, err, "%v: %s", args, out)
	}

	const lives = 10
	var drv, cli time.Duration
	n, thin := 0, 1<<23
	for b.Loop() {
		start := time.Now()
		for i := 0; i < lives; i++ {
			id := fmt.Sprintf("life-%d", i)
			require.NoError(b, d.Create(id, "", nil))
			_, err := d.Get(id, "")
			require.NoError(b, err)
			require.NoError(b, d.Put(id))
			require.NoError(b, d.Remove(id))
		}
		drv += time.Since(start)

		start = time.Now()
		for i := 0; i < lives; i++ {
			thin++
			name := fmt.Sprintf("bench-cli-%d", thin)
			mp := filepath.Join(mnt, name)
			sh("dmsetup", "message", p.Name(), "0", fmt.Sprintf("create_snap %d %d", thin, origin.ID))
			sh("dmsetup", "create", "--noudevsync", name, "--table",
				fmt.Sprintf("0 %d thin %d:%d %d", size/512, p.Dev().Major, p.Dev().Minor, thin))
			require.NoError(b, os.Mkdir(mp, 0o700))
			sh("mount", "-t", "ext4", "/dev/mapper/"+name, mp)
			sh("umount", mp)
			require.NoError(b, os.Remove(mp))
			sh("dmsetup", "remove", "--noudevsync", name)
			sh("dmsetup", "message", p.Name(), "0", fmt.Sprintf("delete %d", thin))
		}
		cli += time.Since(start)
		n += lives
	}
	b.ReportMetric(float64(drv.Nanoseconds())/float64(n), "ns/op")
	b.ReportMetric(float64(cli.Nanoseconds())/float64(n), "cli-ns/op")
	b.ReportMetric(float64(cli)/float64(drv), "cli/driver")
}

// smallFilesTar is a layer of n files of 512 B to 16 KiB, 50 per directory.
func smallFilesTar(b *testing.B, n int) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	r := rand.New(rand.NewPCG(1, 2))
	content := make([]byte, 16<<10)
	for i := range content {
		content[i] = byte(r.Uint32())
	}
	for i := 0; i < n; i++ {
		if i%50 == 0 {
			require.NoError(b, tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("lib/pkg%03d/", i/50), Typeflag: tar.TypeDir, Mode: 0o755}))
		}
		size := 512 + r.IntN(16<<10-512)
		require.NoError(b, tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("lib/pkg%03d/f%05d", i/50, i), Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(size)}))
		_, err := tw.Write(content[:size])
		require.NoError(b, err)
	}
	require.NoError(b, tw.Close())
	return buf.Bytes()
}

// writePlainTree writes the layer's directories and files with plain
// calls, no tar handling beyond reading the stream.
func writePlainTree(b *testing.B, dst string, layer []byte) {
	tr := tar.NewReader(bytes.NewReader(layer))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return
		}
		require.NoError(b, err)
		p := filepath.Join(dst, hdr.Name)
		if hdr.Typeflag == tar.TypeDir {
			require.NoError(b, os.MkdirAll(p, 0o755))
			continue
		}
		data, err := io.ReadAll(tr)
		require.NoError(b, err)
		require.NoError(b, os.WriteFile(p, data, 0o644))
	}
}

// BenchmarkApplyDiffVsPlainDir: three times per iteration, ApplyDiff of a
// 2000-file layer into a new layer, then the same files written with
// os.WriteFile into a plain directory of the machine (a tmpfs in the VM).
// ns/op is the driver's time per layer.
func BenchmarkApplyDiffVsPlainDir(b *testing.B) {
	d := benchDriver(b)
	const files = 2000
	layer := smallFilesTar(b, files)
	dir := b.TempDir()
	const reps = 3
	var drv, plain time.Duration
	n := 0
	for b.Loop() {
		for range reps {
			id := fmt.Sprintf("apply-%d", n)
			require.NoError(b, d.Create(id, "", nil))
			start := time.Now()
			_, err := d.ApplyDiff(id, "", bytes.NewReader(layer))
			drv += time.Since(start)
			require.NoError(b, err)
			require.NoError(b, d.Remove(id))

			dst := filepath.Join(dir, id)
			start = time.Now()
			writePlainTree(b, dst, layer)
			plain += time.Since(start)
			require.NoError(b, os.RemoveAll(dst))
			n++
		}
	}
	b.ReportMetric(float64(drv.Nanoseconds())/float64(n), "ns/op")
	b.ReportMetric(float64(files*n)/drv.Seconds(), "driver-files/s")
	b.ReportMetric(float64(files*n)/plain.Seconds(), "plain-files/s")
	b.ReportMetric(float64(drv)/float64(plain), "driver/plain")
}
