package tarapply

import (
	"errors"
	"fmt"
)

// ErrOutsideRoot is returned for an entry whose name or hard-link target
// would lead outside the root ("../x", or a link target such as "../../x").
var ErrOutsideRoot = errors.New("tarapply: entry would land outside the root")

func fmtErr(err error) error { return fmt.Errorf("tarapply: %w", err) }
