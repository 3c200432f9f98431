// Package moby registers dmthin with moby's graphdriver registry
// (github.com/moby/moby/v2/daemon/graphdriver), so an engine built on moby
// gets it by importing this package for its side effect:
//
//	import _ "github.com/dmthin/dmthin/moby"
//
// and selects it as the storage driver named "dmthin" with Docker's dm.*
// options (see github.com/dmthin/dmthin/graphdriver.ParseOptions).
//
// Init is moby's graphdriver.InitFunc and Driver implements moby's
// graphdriver.Driver; both are checked when this package compiles, and
// moby's own conformance suite (daemon/graphdriver/graphtest) runs against
// it on a real device-mapper in this module's tests.
//
// This is a module of its own (github.com/dmthin/dmthin/moby), so that the
// library's module does not depend on moby. It is not for containerd: that
// is a snapshotter, a different interface.
package moby
