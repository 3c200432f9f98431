// Package tarapply applies an uncompressed OCI/Docker layer tar to a
// directory: the work behind graphdriver's ApplyDiff.
//
// It does what github.com/moby/go-archive's ApplyUncompressedLayer does
// (regular files, directories, symlinks, hard links, device nodes and fifos
// with their owner, mode, times and extended attributes; ".wh.NAME"
// whiteouts and ".wh..wh..opq" opaque directories; refusal of entries that
// would land outside the root) with fewer system calls per entry:
//
//   - Parent directories are resolved once with openat2(RESOLVE_IN_ROOT)
//     and kept open, so an absolute symlink in the layer resolves inside the
//     root and no entry is created outside it; entries are then made with
//     *at calls relative to that descriptor, not by resolving their path
//     again component by component for every step.
//   - File contents are written by a small pool of goroutines, each file
//     with one openat(O_EXCL), its writes, fchown, fchmod and futimens on the
//     open descriptor. Entries that depend on earlier ones (hard links,
//     whiteouts, replacing what is already there) wait for the pool first.
//   - Modes are set explicitly with fchmod, so the process umask, which all
//     threads share, is neither read nor changed.
//   - Directory times are set last, after their contents, and one syncfs
//     makes the whole layer durable (Options.Sync), not one fsync per file.
//
// It is not a general tar extractor: it neither decompresses, nor remaps
// ids, nor supports AUFS's ".wh..wh.plnk" hard-link directory (such
// entries are skipped, a hard link into it is refused). It needs Linux 5.6
// or newer (openat2) and /proc for extended attributes of entries other
// than regular files and directories.
package tarapply
