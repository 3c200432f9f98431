package moby

import (
	"context"
	"fmt"
	"os"

	"github.com/containerd/log"
	"github.com/moby/moby/v2/daemon/graphdriver"
	"github.com/moby/sys/user"

	dmthin "github.com/dmthin/dmthin/graphdriver"
)

// Name is the driver's name in moby's registry (dmthin.DriverName).
const Name = dmthin.DriverName

// Compile-time checks: moby's exact InitFunc and Driver interface.
var (
	_ graphdriver.InitFunc = Init
	_ graphdriver.Driver   = (*Driver)(nil)
)

func init() {
	// Register fails only when the name is taken; moby's drivers register
	// the same way, and graphdriver.New then reports which driver it got.
	if err := graphdriver.Register(Name, Init); err != nil {
		log.G(context.TODO()).WithError(err).Warn("dmthin: not registered with moby's graphdriver registry")
	}
}

// Driver is dmthin's graphdriver.Driver with moby's CreateOpts.
type Driver struct {
	*dmthin.Driver
}

// controlPath is the device-mapper's control node.
const controlPath = "/dev/mapper/control"

// Init opens the driver whose state lives under root with Docker's dm.*
// options. Where the kernel has no device-mapper it returns (wrapping)
// graphdriver.ErrNotSupported, so moby moves on to its next driver. dmthin
// does not remap user namespaces: a non-empty idMap is refused.
func Init(root string, options []string, idMap user.IdentityMapping) (graphdriver.Driver, error) {
	if !idMap.Empty() {
		return nil, &notSupportedError{reason: "user namespace remapping is not supported"}
	}
	if _, err := os.Stat(controlPath); err != nil {
		return nil, &notSupportedError{reason: "no device-mapper", err: err}
	}
	d, err := dmthin.Init(root, options, log.G(context.TODO()))
	if err != nil {
		return nil, err
	}
	return &Driver{Driver: d}, nil
}

// notSupportedError is graphdriver.ErrNotSupported with the reason.
// graphdriver.IsDriverNotSupported tests the error's type, not its chain,
// so the error itself has the NotSupported method; it unwraps to
// graphdriver.ErrNotSupported and the cause.
type notSupportedError struct {
	reason string
	err    error
}

func (e *notSupportedError) Error() string {
	if e.err != nil {
		return fmt.Sprintf("dmthin: %s: %s: %v", graphdriver.ErrNotSupported, e.reason, e.err)
	}
	return fmt.Sprintf("dmthin: %s: %s", graphdriver.ErrNotSupported, e.reason)
}

func (e *notSupportedError) Unwrap() []error { return []error{graphdriver.ErrNotSupported, e.err} }

// NotSupported marks the error for graphdriver.IsDriverNotSupported.
func (e *notSupportedError) NotSupported() {}

// Create makes a read-only layer id on top of parent ("" for none).
func (d *Driver) Create(id, parent string, opts *graphdriver.CreateOpts) error {
	return d.Driver.Create(id, parent, convert(opts))
}

// CreateReadWrite makes a container's read-write layer.
func (d *Driver) CreateReadWrite(id, parent string, opts *graphdriver.CreateOpts) error {
	return d.Driver.CreateReadWrite(id, parent, convert(opts))
}

func convert(opts *graphdriver.CreateOpts) *dmthin.CreateOpts {
	if opts == nil {
		return nil
	}
	return &dmthin.CreateOpts{MountLabel: opts.MountLabel, StorageOpt: opts.StorageOpt}
}
