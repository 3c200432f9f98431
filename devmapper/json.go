package devmapper

import "fmt"

// Text forms, so the status types marshal to JSON (and YAML, TOML...) as the
// kernel prints them: "rw", "queue_if_no_space", "254:0".

var poolModes = []PoolMode{PoolReadWrite, PoolReadOnly, PoolOutOfDataSpace, PoolFailed, PoolError}

// MarshalText prints the mode as the status line does ("rw", "ro",
// "out_of_data_space", "Fail", "Error").
func (m PoolMode) MarshalText() ([]byte, error) {
	for _, k := range poolModes {
		if k == m {
			return []byte(m.String()), nil
		}
	}
	return nil, fmt.Errorf("%w: unknown pool mode %d", ErrBadStatus, int(m))
}

// UnmarshalText reads what MarshalText prints.
func (m *PoolMode) UnmarshalText(b []byte) error {
	for _, k := range poolModes {
		if k.String() == string(b) {
			*m = k
			return nil
		}
	}
	return fmt.Errorf("%w: unknown pool mode %q", ErrBadStatus, b)
}

// String prints the policy as the status line does.
func (p NoSpacePolicy) String() string {
	switch p {
	case QueueIfNoSpace:
		return "queue_if_no_space"
	case ErrorIfNoSpace:
		return "error_if_no_space"
	}
	return fmt.Sprintf("NoSpacePolicy(%d)", int(p))
}

// MarshalText prints "queue_if_no_space" or "error_if_no_space".
func (p NoSpacePolicy) MarshalText() ([]byte, error) {
	if p != QueueIfNoSpace && p != ErrorIfNoSpace {
		return nil, fmt.Errorf("%w: unknown no-space policy %d", ErrBadStatus, int(p))
	}
	return []byte(p.String()), nil
}

// UnmarshalText reads what MarshalText prints.
func (p *NoSpacePolicy) UnmarshalText(b []byte) error {
	for _, k := range []NoSpacePolicy{QueueIfNoSpace, ErrorIfNoSpace} {
		if k.String() == string(b) {
			*p = k
			return nil
		}
	}
	return fmt.Errorf("%w: unknown no-space policy %q", ErrBadStatus, b)
}

// MarshalText prints "MAJ:MIN".
func (d Dev) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText reads "MAJ:MIN" (ParseDev).
func (d *Dev) UnmarshalText(b []byte) error {
	v, err := ParseDev(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}
