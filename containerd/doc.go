// Package containerd is a containerd snapshotter (containerd v2's
// snapshots.Snapshotter and snapshots.Cleaner) on dmthin's thin pool, and
// cmd/dmthin-snapshotter serves it to containerd as a proxy plugin.
//
// Every snapshot is a thin snapshot of its parent's device; one without a
// parent is a snapshot of a base device formatted once, so Prepare never
// runs mkfs. With no pool_name the snapshotter makes its own loopback pool
// under root_path: there is nothing to set up. Its metadata is kept in the
// thin devices' records, under the pool's crash protocol.
//
// It lives in a module of its own so that the core module never pulls in
// containerd, gRPC or their dependencies.
package containerd
