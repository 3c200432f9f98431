package layerstore

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "base.json")
	require.NoError(t, writeFileAtomic(p, []byte("one\n")))
	require.NoError(t, writeFileAtomic(p, []byte("two\n")))
	data, err := os.ReadFile(p)
	require.NoError(t, err)
	assert.Equal(t, "two\n", string(data))
	fi, err := os.Stat(p)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 1, "no temporary file left")
}

// Issue 7 item 16: a damaged base.json keeps the parse error as the cause.
func TestReadBaseRecordKeepsCause(t *testing.T) {
	s := &Store{root: t.TempDir()}
	require.NoError(t, os.WriteFile(s.baseRecordPath(), []byte(`{"filesystem": "ext4", "uuid": `), 0o600))
	_, err := s.readBaseRecord()
	var syntax *json.SyntaxError
	require.ErrorAs(t, err, &syntax, "the JSON error is kept: %v", err)
	assert.Contains(t, err.Error(), s.baseRecordPath())

	require.NoError(t, os.WriteFile(s.baseRecordPath(), []byte(`{"filesystem": "ext4"}`), 0o600))
	_, err = s.readBaseRecord()
	assert.ErrorContains(t, err, "no uuid")

	require.NoError(t, os.Remove(s.baseRecordPath()))
	r, err := s.readBaseRecord()
	assert.NoError(t, err)
	assert.Nil(t, r)
}
