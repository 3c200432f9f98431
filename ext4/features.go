package ext4

import (
	"math/bits"
	"strconv"
	"strings"
)

// CompatFeatures are the superblock's s_feature_compat flags: features an
// implementation that does not know them may still read and write.
type CompatFeatures uint32

// IncompatFeatures are the s_feature_incompat flags: a kernel that does not
// know one of them must refuse to mount.
type IncompatFeatures uint32

// ROCompatFeatures are the s_feature_ro_compat flags: a kernel that does not
// know one of them may only mount read-only.
type ROCompatFeatures uint32

// Compat feature flags (names as e2fsprogs prints them).
const (
	CompatDirPrealloc    CompatFeatures = 1 << 0  // dir_prealloc
	CompatImagicInodes   CompatFeatures = 1 << 1  // imagic_inodes
	CompatHasJournal     CompatFeatures = 1 << 2  // has_journal
	CompatExtAttr        CompatFeatures = 1 << 3  // ext_attr
	CompatResizeInode    CompatFeatures = 1 << 4  // resize_inode
	CompatDirIndex       CompatFeatures = 1 << 5  // dir_index
	CompatLazyBG         CompatFeatures = 1 << 6  // lazy_bg
	CompatSnapshotBitmap CompatFeatures = 1 << 8  // snapshot_bitmap
	CompatSparseSuper2   CompatFeatures = 1 << 9  // sparse_super2
	CompatFastCommit     CompatFeatures = 1 << 10 // fast_commit
	CompatStableInodes   CompatFeatures = 1 << 11 // stable_inodes
	CompatOrphanFile     CompatFeatures = 1 << 12 // orphan_file
)

// Incompat feature flags (names as e2fsprogs prints them).
const (
	IncompatCompression      IncompatFeatures = 1 << 0  // compression
	IncompatFiletype         IncompatFeatures = 1 << 1  // filetype
	IncompatRecover          IncompatFeatures = 1 << 2  // needs_recovery: the journal must be replayed
	IncompatJournalDev       IncompatFeatures = 1 << 3  // journal_dev: an external journal, not a filesystem
	IncompatMetaBG           IncompatFeatures = 1 << 4  // meta_bg
	IncompatExtents          IncompatFeatures = 1 << 6  // extent
	Incompat64Bit            IncompatFeatures = 1 << 7  // 64bit
	IncompatMMP              IncompatFeatures = 1 << 8  // mmp
	IncompatFlexBG           IncompatFeatures = 1 << 9  // flex_bg
	IncompatEAInode          IncompatFeatures = 1 << 10 // ea_inode
	IncompatMetadataCsumSeed IncompatFeatures = 1 << 13 // metadata_csum_seed
	IncompatLargeDir         IncompatFeatures = 1 << 14 // large_dir
	IncompatInlineData       IncompatFeatures = 1 << 15 // inline_data
	IncompatEncrypt          IncompatFeatures = 1 << 16 // encrypt
	IncompatCasefold         IncompatFeatures = 1 << 17 // casefold
)

// Read-only compat feature flags (names as e2fsprogs prints them).
const (
	ROCompatSparseSuper   ROCompatFeatures = 1 << 0  // sparse_super
	ROCompatLargeFile     ROCompatFeatures = 1 << 1  // large_file
	ROCompatHugeFile      ROCompatFeatures = 1 << 3  // huge_file
	ROCompatGDTCsum       ROCompatFeatures = 1 << 4  // uninit_bg
	ROCompatDirNlink      ROCompatFeatures = 1 << 5  // dir_nlink
	ROCompatExtraIsize    ROCompatFeatures = 1 << 6  // extra_isize
	ROCompatQuota         ROCompatFeatures = 1 << 8  // quota
	ROCompatBigalloc      ROCompatFeatures = 1 << 9  // bigalloc
	ROCompatMetadataCsum  ROCompatFeatures = 1 << 10 // metadata_csum
	ROCompatReplica       ROCompatFeatures = 1 << 11 // replica
	ROCompatReadOnly      ROCompatFeatures = 1 << 12 // read-only
	ROCompatProject       ROCompatFeatures = 1 << 13 // project
	ROCompatSharedBlocks  ROCompatFeatures = 1 << 14 // shared_blocks
	ROCompatVerity        ROCompatFeatures = 1 << 15 // verity
	ROCompatOrphanPresent ROCompatFeatures = 1 << 16 // orphan_present
)

var compatNames = map[CompatFeatures]string{
	CompatDirPrealloc: "dir_prealloc", CompatImagicInodes: "imagic_inodes",
	CompatHasJournal: "has_journal", CompatExtAttr: "ext_attr",
	CompatResizeInode: "resize_inode", CompatDirIndex: "dir_index",
	CompatLazyBG: "lazy_bg", CompatSnapshotBitmap: "snapshot_bitmap",
	CompatSparseSuper2: "sparse_super2", CompatFastCommit: "fast_commit",
	CompatStableInodes: "stable_inodes", CompatOrphanFile: "orphan_file",
}

var incompatNames = map[IncompatFeatures]string{
	IncompatCompression: "compression", IncompatFiletype: "filetype",
	IncompatRecover: "needs_recovery", IncompatJournalDev: "journal_dev",
	IncompatMetaBG: "meta_bg", IncompatExtents: "extent", Incompat64Bit: "64bit",
	IncompatMMP: "mmp", IncompatFlexBG: "flex_bg", IncompatEAInode: "ea_inode",
	IncompatMetadataCsumSeed: "metadata_csum_seed", IncompatLargeDir: "large_dir",
	IncompatInlineData: "inline_data", IncompatEncrypt: "encrypt",
	IncompatCasefold: "casefold",
}

var roCompatNames = map[ROCompatFeatures]string{
	ROCompatSparseSuper: "sparse_super", ROCompatLargeFile: "large_file",
	ROCompatHugeFile: "huge_file", ROCompatGDTCsum: "uninit_bg",
	ROCompatDirNlink: "dir_nlink", ROCompatExtraIsize: "extra_isize",
	ROCompatQuota: "quota", ROCompatBigalloc: "bigalloc",
	ROCompatMetadataCsum: "metadata_csum", ROCompatReplica: "replica",
	ROCompatReadOnly: "read-only", ROCompatProject: "project",
	ROCompatSharedBlocks: "shared_blocks", ROCompatVerity: "verity",
	ROCompatOrphanPresent: "orphan_present",
}

// featureNames lists the names of the bits set in v, lowest bit first;
// unnamed bits print as e2fsprogs prints them: FEATURE_<kind><bit>.
func featureNames[F ~uint32](v F, names map[F]string, kind byte) []string {
	var out []string
	for rest := uint32(v); rest != 0; rest &= rest - 1 {
		bit := bits.TrailingZeros32(rest)
		if n, ok := names[F(1)<<bit]; ok {
			out = append(out, n)
		} else {
			out = append(out, "FEATURE_"+string(kind)+strconv.Itoa(bit))
		}
	}
	return out
}

// Has reports whether all flags in x are set.
func (f CompatFeatures) Has(x CompatFeatures) bool { return f&x == x }

// Has reports whether all flags in x are set.
func (f IncompatFeatures) Has(x IncompatFeatures) bool { return f&x == x }

// Has reports whether all flags in x are set.
func (f ROCompatFeatures) Has(x ROCompatFeatures) bool { return f&x == x }

// Names returns the names of the set flags, lowest bit first.
func (f CompatFeatures) Names() []string { return featureNames(f, compatNames, 'C') }

// Names returns the names of the set flags, lowest bit first.
func (f IncompatFeatures) Names() []string { return featureNames(f, incompatNames, 'I') }

// Names returns the names of the set flags, lowest bit first.
func (f ROCompatFeatures) Names() []string { return featureNames(f, roCompatNames, 'R') }

// String returns the set flags' names separated by spaces.
func (f CompatFeatures) String() string { return strings.Join(f.Names(), " ") }

// String returns the set flags' names separated by spaces.
func (f IncompatFeatures) String() string { return strings.Join(f.Names(), " ") }

// String returns the set flags' names separated by spaces.
func (f ROCompatFeatures) String() string { return strings.Join(f.Names(), " ") }

// State is the superblock's s_state.
type State uint16

// State flags.
const (
	StateValid   State = 0x1 // cleanly unmounted (cleared while mounted without a journal, or after errors)
	StateErrors  State = 0x2 // errors detected: e2fsck -f is needed
	StateOrphans State = 0x4 // orphans being recovered
)

// Clean reports whether the filesystem was cleanly unmounted and has no
// recorded errors.
func (s State) Clean() bool { return s&StateValid != 0 && s&StateErrors == 0 }

// String prints the state the way dumpe2fs does: "clean", "not clean",
// "clean with errors" or "not clean with errors".
func (s State) String() string {
	out := "not clean"
	if s&StateValid != 0 {
		out = "clean"
	}
	if s&StateErrors != 0 {
		out += " with errors"
	}
	return out
}

// ErrorBehavior is s_errors: what the kernel does when it detects an error.
type ErrorBehavior uint16

// Error behaviours.
const (
	ErrorsContinue  ErrorBehavior = 1
	ErrorsRemountRO ErrorBehavior = 2
	ErrorsPanic     ErrorBehavior = 3
)

// String prints the behaviour the way dumpe2fs does.
func (e ErrorBehavior) String() string {
	switch e {
	case ErrorsContinue:
		return "Continue"
	case ErrorsRemountRO:
		return "Remount read-only"
	case ErrorsPanic:
		return "Panic"
	}
	return "Unknown (continue)"
}
