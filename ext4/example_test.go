package ext4_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/dmthin/dmthin/ext4"
)

// Format a file (a block device works the same) and read its superblock
// back in Go. Needs mkfs.ext4 (e2fsprogs), no root.
func ExampleFormat() {
	dir, err := os.MkdirTemp("", "ext4-example-")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	img := filepath.Join(dir, "fs.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		fmt.Println(err)
		return
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		fmt.Println(err)
		return
	}

	err = ext4.Format(context.Background(), img, ext4.FormatOptions{Label: "layer", ExtraArgs: []string{"-b", "4096"}})
	if err != nil {
		fmt.Println(err)
		return
	}
	sb, err := ext4.ReadSuperblockFile(img)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("label:", sb.Label)
	fmt.Println("block size:", sb.BlockSize)
	fmt.Println("size:", sb.BlockCount*uint64(sb.BlockSize)>>20, "MiB")
	// Output:
	// label: layer
	// block size: 4096
	// size: 64 MiB
}

// A superblock saved from a real filesystem (testdata/; dumpe2fs -h of the
// same filesystem is beside it).
func ExampleReadSuperblockFile() {
	sb, err := ext4.ReadSuperblockFile("testdata/4k-64bit-label.sb")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("label %q, %d-byte blocks, %d blocks\n", sb.Label, sb.BlockSize, sb.BlockCount)
	// Output:
	// label "dmthin-base", 4096-byte blocks, 16384 blocks
}
