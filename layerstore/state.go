package layerstore

import (
	"github.com/dmthin/dmthin/thinpool"
)

// A layer's progress through a multi-step change is kept in its thin
// device's record, as a label: thinpool stores it atomically with the
// device's creation (WithLabels) and durably when it changes (SetLabels),
// so the pool's records are the one store of truth. A layer is usable
// only when its record is ready and carries no state label.
const (
	// LabelState is the label key where the store keeps a layer's (or the
	// base device's) progress. It is absent once the layer is complete.
	LabelState = "layerstore.state"
	// StateIncomplete: the device was made, its filesystem is not finished
	// (not yet grown to the layer's size; for the base, not yet formatted
	// and recorded). Open rolls such a layer back (deletes it); Create over
	// it does the same.
	StateIncomplete = "incomplete"
	// StateRemoving: Remove decided to delete the layer; the deletion may
	// not have happened yet. The layer no longer exists for the caller;
	// Open finishes the deletion.
	StateRemoving = "removing"
)

// usable reports whether a layer's device is complete and not on its way
// out: what Exists, Get and Create's parent check accept.
func usable(dev thinpool.Device) bool {
	return dev.State == thinpool.StateReady && dev.Labels[LabelState] == ""
}

// deleting reports whether a device is on its way out in the pool: its
// deletion is deferred until it is closed, or was started and did not
// finish. Such a device is the pool's to finish.
func deleting(dev thinpool.Device) bool {
	return dev.DeferredDelete || dev.State == thinpool.StateDeleting
}

// stateLabels is the label set that records state s ("" clears it).
func stateLabels(s string) map[string]string { return map[string]string{LabelState: s} }
