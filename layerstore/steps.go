package layerstore

// Named steps of the store's multi-step changes, passed to
// Options.StepHook. A crash test kills the process at one of them and
// checks what Open makes of it.
const (
	// StepBaseCreated: the base thin device was made, not formatted.
	StepBaseCreated = "base:created"
	// StepBaseFormatting: the base device is about to be formatted (the
	// formatting tool is started next).
	StepBaseFormatting = "base:formatting"
	// StepBaseFormatted: the base device was formatted.
	StepBaseFormatted = "base:formatted"
	// StepBaseMounted: the base is mounted on its temporary mount point
	// (to make the rootfs directory, or to grow it online).
	StepBaseMounted = "base:mounted"
	// StepBaseRecorded: base.json records the new base's UUID.
	StepBaseRecorded = "base:recorded"
	// StepBaseResized: the base device was made bigger, its filesystem
	// not grown yet.
	StepBaseResized = "base:resized"

	// StepCreateSnapshot: the layer's thin device was made (snapshot of
	// its parent), its filesystem not grown yet.
	StepCreateSnapshot = "create:snapshot"
	// StepCreateMounted: the layer is mounted to grow its filesystem.
	StepCreateMounted = "create:mounted"
	// StepCreateGrown: the layer's filesystem was grown to its size.
	StepCreateGrown = "create:grown"
	// StepCreateDone: the layer is complete (its incomplete label, if
	// it had one, cleared).
	StepCreateDone = "create:done"

	// StepGetMounted: Get mounted the layer.
	StepGetMounted = "get:mounted"
	// StepPutUnmounted: the last Put unmounted the layer; the worker
	// deactivates its device later.
	StepPutUnmounted = "put:unmounted"
	// StepPutDeactivated: the worker deactivated the device of a layer
	// whose last Put unmounted it.
	StepPutDeactivated = "put:deactivated"

	// StepRemoveMarked (SyncRemove): the layer is durably marked removing;
	// nothing of it was changed yet.
	StepRemoveMarked = "remove:marked"
	// StepRemoveUnmounted: the layer was unmounted, its device not yet
	// deleted.
	StepRemoveUnmounted = "remove:unmounted"
	// StepRemoveRetired: the layer's device was retired (its name is
	// free, its record kept under a tombstone name); the worker deletes it.
	StepRemoveRetired = "remove:retired"
	// StepRemoveDeleted: the layer's device was deleted (by Remove with
	// SyncRemove, or by the worker).
	StepRemoveDeleted = "remove:deleted"
)
