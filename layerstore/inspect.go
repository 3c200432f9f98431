package layerstore

import "github.com/dmthin/dmthin/thinpool"

// BaseDevice is the thin device every layer descends from.
const BaseDevice = baseDevice

// LayerOf tells what a thin device of a store's pool is: the layer name of
// a layer's device, or false for the base device and anything the store
// did not make. Tools that inspect a pool (cmd/dmthin) show layers by it.
func LayerOf(device string) (string, bool) { return layerName(device) }

// LayerState is a layer device's progress through a multi-step change
// (StateIncomplete, StateRemoving), or "" for a complete layer.
func LayerState(dev thinpool.Device) string { return dev.Labels[LabelState] }
