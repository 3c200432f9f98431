#!/bin/sh
# Runs every side-by-side benchmark in one boot (see `make bench`): each
# prints its own table of per-operation times and ratios.
set -e
cd /bench
echo "=== dmbench: devmapper package vs dmsetup CLI"
./dmbench -n 100
echo "=== poolbench: thinpool vs raw ioctls vs dmsetup; scaling; Open time"
./poolbench -n 100 -levels "${POOLBENCH_LEVELS:-10,1000,10000}"
echo "=== poolbench -rounds: thinpool snapshot/delete vs the raw message, interleaved rounds"
./poolbench -n 100 -rounds 6
echo "=== bench-driver: graphdriver vs dmsetup+mount CLIs; ApplyDiff vs plain directory"
./bench-driver
echo "=== bench-snapshotters: container life through containerd's snapshotter API: dmthin vs containerd's devmapper vs overlayfs"
./bench-snapshotters -rounds 20
echo "=== bench-archive: applying Go's src/ as a layer: ApplyDiff vs tar -xf, go-archive, containerd"
./bench-archive -tar /bench/gosrc.tar -reps "${APPLY_REPS:-5}"
