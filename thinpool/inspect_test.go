package thinpool

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A copy of a store that another open handle keeps writing is always
// consistent: every record the copy holds is complete and its ids bucket
// agrees with its devices bucket.
func TestCopyStoreWhileWriting(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "metadata.db")
	st, err := openStore(path)
	require.NoError(t, err)
	defer st.close()
	require.NoError(t, st.update(func(tx txn) error { return tx.Bucket(bucketMeta).Put(keyPrefix, []byte("dmthin-test")) }))

	inUse, err := storeInUse(path)
	require.NoError(t, err)
	assert.True(t, inUse, "an open store is in use")

	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; !stop.Load(); i++ {
			// Each commit rewrites one of 20 records with its own
			// transaction id, and a big label so pages are freed and
			// reused.
			err := st.update(func(tx txn) error {
				return putRecord(tx, &record{Name: fmt.Sprintf("dev-%d", i%20), ID: uint32(i % 20), State: StateReady, TxID: uint64(tx.ID()),
					Labels: map[string]string{"pad": string(make([]byte, 3000+i%5000))}})
			})
			if err != nil {
				t.Error(err)
				return
			}
		}
	}()
	// Every first attempt of a copy reads the meta pages, waits while the
	// writer commits, then reads the rest: a copy that must be refused.
	copyPause = func(attempt int) {
		if attempt == 0 {
			time.Sleep(20 * time.Millisecond)
		}
	}
	defer func() { copyPause = nil }()
	copies := 0
	for copies < 30 {
		cp, drop, err := copyStore(path, dir)
		if err != nil {
			// Under a writer committing without pause a copy may not
			// find a quiet moment; that is reported, never a torn copy.
			assert.ErrorContains(t, err, "keeps changing")
			continue
		}
		recs, err := cp.all()
		require.NoError(t, err)
		var copyTx uint64
		require.NoError(t, cp.db.View(func(tx txn) error { copyTx = uint64(tx.ID()); return nil }))
		newest := uint64(0)
		for _, r := range recs {
			newest = max(newest, r.TxID)
			assert.Equal(t, fmt.Sprintf("dev-%d", r.ID), r.Name, "the record reads back whole")
		}
		if len(recs) > 0 {
			// The copy shows transaction copyTx and nothing newer.
			assert.Equal(t, copyTx, newest, "the copy's newest record is its own transaction's")
		}
		prefix, err := cp.metaString(keyPrefix)
		require.NoError(t, err)
		assert.Equal(t, "dmthin-test", prefix)
		require.NoError(t, drop())
		copies++
	}
	stop.Store(true)
	wg.Wait()
	left, err := filepath.Glob(filepath.Join(dir, "dmthin-metadata-*"))
	require.NoError(t, err)
	assert.Empty(t, left, "copies are removed")
}

func TestCopyStoreRefusesOtherFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "metadata.db")
	require.NoError(t, os.WriteFile(path, make([]byte, 8192), 0o600))
	_, _, err := copyStore(path, dir)
	assert.ErrorContains(t, err, "no valid meta page")
	_, _, err = copyStore(filepath.Join(dir, "missing"), dir)
	assert.ErrorIs(t, err, os.ErrNotExist)
}

func TestParseThinDumpAndThinLs(t *testing.T) {
	// thin_dump 0.9.0 of metadata made by thin_restore.
	xml := []byte(`<superblock uuid="" time="1" transaction="5" flags="0" version="2" data_block_size="128" nr_data_blocks="1000">
  <device dev_id="7" mapped_blocks="12" transaction="3" creation_time="1" snap_time="1">
    <range_mapping origin_begin="0" data_begin="0" length="10" time="0"/>
    <range_mapping origin_begin="20" data_begin="10" length="2" time="1"/>
    <single_mapping origin_block="17" data_block="30" time="1"/>
  </device>
  <device dev_id="1" mapped_blocks="10" transaction="1" creation_time="0" snap_time="1">
  </device>
</superblock>
`)
	ids, err := parseThinDumpIDs(xml)
	require.NoError(t, err)
	assert.Equal(t, []uint32{1, 7}, ids)
	end, err := parseThinDumpExtent(xml)
	require.NoError(t, err)
	assert.Equal(t, uint64(22), end)
	ids, err = parseThinDumpIDs([]byte("<superblock uuid=\"\" time=\"0\">\n</superblock>\n"))
	require.NoError(t, err)
	assert.Empty(t, ids)
	_, err = parseThinDumpIDs([]byte("bad checksum in superblock\n"))
	assert.Error(t, err)
	// Numbers past 64 bits are refused, naming the element; so is output
	// with no superblock.
	sb := "<superblock uuid=\"\" time=\"1\">\n  <device dev_id=\"1\" mapped_blocks=\"1\">\n%s\n  </device>\n</superblock>\n"
	for _, bad := range []string{
		`<range_mapping origin_begin="99999999999999999999" data_begin="0" length="1" time="0"/>`,
		`<range_mapping origin_begin="0" data_begin="0" length="99999999999999999999" time="0"/>`,
		`<single_mapping origin_block="99999999999999999999" data_block="0" time="0"/>`,
	} {
		_, err := parseThinDumpExtent([]byte(fmt.Sprintf(sb, bad)))
		assert.ErrorContains(t, err, "thin_dump", bad)
		assert.ErrorIs(t, err, strconv.ErrRange, bad)
	}
	_, err = parseThinDumpExtent([]byte("bad checksum in superblock\n"))
	assert.Error(t, err)

	u, err := parseThinLs([]byte("1 655360      0 655360 \n7 786432 131072 655360 \n"))
	require.NoError(t, err)
	assert.Equal(t, map[uint32]ThinUsage{
		1: {ID: 1, MappedBytes: 655360, ExclusiveBytes: 0, SharedBytes: 655360},
		7: {ID: 7, MappedBytes: 786432, ExclusiveBytes: 131072, SharedBytes: 655360},
	}, u)
	for _, bad := range []string{"1 2 3\n", "1 2 3 x\n", "16777216 0 0 0\n"} {
		_, err := parseThinLs([]byte(bad))
		assert.Error(t, err, bad)
	}
}

func TestCompareViews(t *testing.T) {
	recs := []*record{
		{Name: "ok", ID: 1, State: StateReady},
		{Name: "lost", ID: 2, State: StateReady},
		{Name: "making", ID: 3, State: StateCreating},
		{Name: "going", ID: 4, State: StateDeleting},
		{Name: "broken", ID: 5, State: StateFaulty, Fault: "lost in a power cut"},
		{Name: "later", ID: 6, State: StateDeferredDelete},
		{Name: "retired-7", ID: 7, State: StateRetired, Retired: "old"},
	}
	dms := []string{"px-ok", "px-stray", "px-going", "px-retired-7"}
	f, pending := compareViews("px", recs, dms, []uint32{1, 4, 5, 6, 7, 9}, true)
	kinds := map[FindingKind][]string{}
	for _, x := range f {
		kinds[x.Kind] = append(kinds[x.Kind], x.Device+x.DM+fmt.Sprint(deref(x.ID)))
	}
	assert.Equal(t, map[FindingKind][]string{
		FindingRecordWithoutThin: {"lost2"},
		FindingThinWithoutRecord: {"9"},
		FindingDMWithoutRecord:   {"px-stray-1"},
		FindingFaulty:            {"broken5"},
	}, kinds)
	assert.Equal(t, []string{"going", "later", "making", "retired-7"}, pending)

	// Without the thin ids only the kernel's devices are compared.
	f, _ = compareViews("px", recs, dms, nil, false)
	for _, x := range f {
		assert.Contains(t, []FindingKind{FindingDMWithoutRecord, FindingFaulty}, x.Kind)
	}
}

func deref(p *uint32) int64 {
	if p == nil {
		return -1
	}
	return int64(*p)
}
