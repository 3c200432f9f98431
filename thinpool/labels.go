package thinpool

import (
	"context"
	"fmt"
	"maps"
)

// CreateOption modifies Create and Snapshot.
type CreateOption func(*createConfig)

type createConfig struct {
	labels map[string]string
}

// WithLabels stores labels in the new device's record. They are committed
// with the record itself, so a device that exists has its labels. Keys must
// not be empty; an empty value is not stored.
func WithLabels(labels map[string]string) CreateOption {
	return func(c *createConfig) {
		if c.labels == nil {
			c.labels = make(map[string]string, len(labels))
		}
		for k, v := range labels {
			if v != "" {
				c.labels[k] = v
			}
		}
	}
}

func newCreateConfig(opts []CreateOption) (createConfig, error) {
	var c createConfig
	for _, o := range opts {
		o(&c)
	}
	if err := checkLabels(c.labels); err != nil {
		return c, err
	}
	return c, nil
}

func checkLabels(labels map[string]string) error {
	if _, ok := labels[""]; ok {
		return fmt.Errorf("thinpool: label with an empty key")
	}
	return nil
}

// SetLabels merges labels into the device's labels: a key with the value ""
// is removed, any other value replaces or adds. The change is committed to
// the store before SetLabels returns.
func (p *Pool) SetLabels(ctx context.Context, name string, labels map[string]string) error {
	if err := checkLabels(labels); err != nil {
		return err
	}
	rec, release, err := p.lockDevice(name)
	if err != nil {
		return err
	}
	defer release()
	if err := ctx.Err(); err != nil {
		return err
	}
	merged := maps.Clone(rec.Labels)
	if merged == nil {
		merged = make(map[string]string, len(labels))
	}
	for k, v := range labels {
		if v == "" {
			delete(merged, k)
		} else {
			merged[k] = v
		}
	}
	if len(merged) == 0 {
		merged = nil
	}
	rec.Labels = merged
	return p.st.update(func(tx txn) error { return putRecord(tx, rec) })
}
