package moby

import (
	"testing"

	"github.com/moby/moby/v2/daemon/graphdriver"
	"github.com/moby/moby/v2/daemon/graphdriver/graphtest"
	"github.com/moby/sys/user"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dmthin/dmthin/internal/testenv"
)

// moby's conformance suite (daemon/graphdriver/graphtest), every DriverTest*
// and DriverBench* it exports, at the sizes moby's overlay2 tests use.
//
// graphtest makes a fresh root under os.TempDir for each driver it opens.
// DriverTestSetQuota opens its driver without options and asks for a 50M
// layer, so the driver under test is registered as testName with options
// that keep the pool small and the base device below 50M (a layer cannot
// be smaller than the base). The options come first: graphtest's own
// options, if any, override them.
const testName = "dmthin-graphtest"

var testOptions = []string{
	"dm.loopdatasize=8G",
	"dm.loopmetadatasize=128M",
	"dm.basesize=32M",
	"dm.blkdiscard=false",
}

// benchOptions: the benchmarks write up to 10,000 files in a layer, more
// inodes than mkfs.ext4 gives the 32M base (8,192); they take a 256M one.
var benchOptions = []string{"dm.basesize=256M"}

func init() {
	err := graphdriver.Register(testName, func(root string, options []string, idMap user.IdentityMapping) (graphdriver.Driver, error) {
		return Init(root, append(append([]string(nil), testOptions...), options...), idMap)
	})
	if err != nil {
		panic(err) // a test binary: the name is ours alone
	}
}

// The registry hands out this package's driver under its name, and refuses
// what dmthin cannot do (needs no device-mapper).
func TestRegistered(t *testing.T) {
	_, err := graphdriver.New(Name, graphdriver.Options{Root: t.TempDir(), IDMap: user.IdentityMapping{
		UIDMaps: []user.IDMap{{ID: 0, ParentID: 100000, Count: 65536}},
		GIDMaps: []user.IDMap{{ID: 0, ParentID: 100000, Count: 65536}},
	}})
	require.Error(t, err)
	assert.True(t, graphdriver.IsDriverNotSupported(err), "%v", err)
	assert.ErrorIs(t, err, graphdriver.ErrNotSupported)
	assert.ErrorContains(t, err, "user namespace remapping")
}

// The driver under the registry's name, opened through graphdriver.New:
// one layer round trip.
func TestNewThroughRegistry(t *testing.T) {
	testenv.RequireDM(t)
	d, err := graphdriver.New(Name, graphdriver.Options{Root: t.TempDir(), DriverOptions: testOptions})
	require.NoError(t, err)
	assert.Equal(t, Name, d.String())
	require.NoError(t, d.Create("a", "", &graphdriver.CreateOpts{StorageOpt: map[string]string{"size": "40M"}}))
	require.NoError(t, d.CreateReadWrite("b", "a", nil))
	_, err = d.Get("b", "")
	require.NoError(t, err)
	require.NoError(t, d.Put("b"))
	meta, err := d.GetMetadata("a")
	require.NoError(t, err)
	assert.Equal(t, "41943040", meta["DeviceSize"])
	require.NoError(t, d.Remove("b"))
	require.NoError(t, d.Remove("a"))
	require.NoError(t, d.Cleanup())
}

// Setup keeps one driver open for the DriverTest* functions (they share
// graphtest's reference-counted driver); Teardown closes it.
func TestGraphtestSetup(t *testing.T) {
	testenv.RequireDM(t)
	graphtest.GetDriver(t, testName)
}

func TestGraphtestCreateEmpty(t *testing.T) {
	testenv.RequireDM(t)
	graphtest.DriverTestCreateEmpty(t, testName)
}

func TestGraphtestCreateBase(t *testing.T) {
	testenv.RequireDM(t)
	graphtest.DriverTestCreateBase(t, testName)
}

func TestGraphtestCreateSnap(t *testing.T) {
	testenv.RequireDM(t)
	graphtest.DriverTestCreateSnap(t, testName)
}

func TestGraphtest128LayerRead(t *testing.T) {
	testenv.RequireDM(t)
	graphtest.DriverTestDeepLayerRead(t, 128, testName)
}

func TestGraphtestDiffApply10Files(t *testing.T) {
	testenv.RequireDM(t)
	graphtest.DriverTestDiffApply(t, 10, testName)
}

func TestGraphtestChanges(t *testing.T) {
	testenv.RequireDM(t)
	graphtest.DriverTestChanges(t, testName)
}

// A layer created with size=50M holds 25M and refuses 50M more (ENOSPC):
// the thin device and its ext4 are that big. required=true: no skip.
func TestGraphtestSetQuota(t *testing.T) {
	testenv.RequireDM(t)
	graphtest.DriverTestSetQuota(t, testName, true)
}

func TestGraphtestTeardown(t *testing.T) {
	testenv.RequireDM(t)
	graphtest.PutDriver(t)
}

func BenchmarkExists(b *testing.B) {
	testenv.RequireDM(b)
	graphtest.DriverBenchExists(b, testName, benchOptions...)
}

func BenchmarkGetEmpty(b *testing.B) {
	testenv.RequireDM(b)
	graphtest.DriverBenchGetEmpty(b, testName, benchOptions...)
}

func BenchmarkDiffBase(b *testing.B) {
	testenv.RequireDM(b)
	graphtest.DriverBenchDiffBase(b, testName, benchOptions...)
}

func BenchmarkDiffSmallUpper(b *testing.B) {
	testenv.RequireDM(b)
	graphtest.DriverBenchDiffN(b, 10, 10, testName, benchOptions...)
}

func BenchmarkDiff10KFileUpper(b *testing.B) {
	testenv.RequireDM(b)
	graphtest.DriverBenchDiffN(b, 10, 10000, testName, benchOptions...)
}

func BenchmarkDiff10KFilesBottom(b *testing.B) {
	testenv.RequireDM(b)
	graphtest.DriverBenchDiffN(b, 10000, 10, testName, benchOptions...)
}

func BenchmarkDiffApply100(b *testing.B) {
	testenv.RequireDM(b)
	graphtest.DriverBenchDiffApplyN(b, 100, testName, benchOptions...)
}

func BenchmarkDiff20Layers(b *testing.B) {
	testenv.RequireDM(b)
	graphtest.DriverBenchDeepLayerDiff(b, 20, testName, benchOptions...)
}

func BenchmarkRead20Layers(b *testing.B) {
	testenv.RequireDM(b)
	graphtest.DriverBenchDeepLayerRead(b, 20, testName, benchOptions...)
}
