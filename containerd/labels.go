package containerd

import (
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/filters"
	"github.com/containerd/containerd/v2/pkg/labels"
	"github.com/containerd/errdefs"
)

// A snapshot's metadata lives in its thin device's labels. Keys and
// parents are base64: containerd allows any byte in them, and the records
// are JSON, which keeps only valid UTF-8. containerd's own labels are
// stored under labelUser+key, as given (they must be UTF-8).
const (
	labelKey     = "ctrd.key"     // base64 of the key (active, view) or name (committed)
	labelKind    = "ctrd.kind"    // active, view, committed
	labelParent  = "ctrd.parent"  // base64 of the parent's name, absent for none
	labelCreated = "ctrd.created" // RFC 3339, nanoseconds
	labelUpdated = "ctrd.updated"
	labelUsage   = "ctrd.usage"   // committed: mapped bytes at commit
	labelRemoved = "ctrd.removed" // "1": removed with async_remove, the device not yet deleted
	labelUser    = "ctrd.label."
)

var b64 = base64.RawURLEncoding

func kindString(k snapshots.Kind) string {
	switch k {
	case snapshots.KindActive:
		return "active"
	case snapshots.KindView:
		return "view"
	case snapshots.KindCommitted:
		return "committed"
	}
	return "unknown"
}

func parseKind(s string) (snapshots.Kind, bool) {
	switch s {
	case "active":
		return snapshots.KindActive, true
	case "view":
		return snapshots.KindView, true
	case "committed":
		return snapshots.KindCommitted, true
	}
	return snapshots.KindUnknown, false
}

// encodeInfo is the label set that records info.
func encodeInfo(info snapshots.Info) map[string]string {
	m := map[string]string{
		labelKey:     b64.EncodeToString([]byte(info.Name)),
		labelKind:    kindString(info.Kind),
		labelCreated: info.Created.UTC().Format(time.RFC3339Nano),
		labelUpdated: info.Updated.UTC().Format(time.RFC3339Nano),
	}
	if info.Parent != "" {
		m[labelParent] = b64.EncodeToString([]byte(info.Parent))
	}
	for k, v := range info.Labels {
		m[labelUser+k] = v
	}
	return m
}

// labelDiff is the SetLabels argument that turns labels from into to: keys
// of from that to lacks map to "" (removed).
func labelDiff(from, to map[string]string) map[string]string {
	d := maps.Clone(to)
	for k := range from {
		if _, ok := to[k]; !ok {
			d[k] = ""
		}
	}
	return d
}

// decodeEntry reads a layer's labels back. An error means the layer holds
// no (complete) snapshot: made by a Prepare that did not finish.
func decodeEntry(layer string, m map[string]string) (e *entry, removed bool, err error) {
	key, ok := m[labelKey]
	if !ok {
		return nil, false, errors.New("the layer has no snapshot key")
	}
	name, err := b64.DecodeString(key)
	if err != nil {
		return nil, false, fmt.Errorf("label %s: %w", labelKey, err)
	}
	kind, ok := parseKind(m[labelKind])
	if !ok {
		return nil, false, fmt.Errorf("label %s = %q", labelKind, m[labelKind])
	}
	info := snapshots.Info{Kind: kind, Name: string(name)}
	if p, ok := m[labelParent]; ok {
		parent, err := b64.DecodeString(p)
		if err != nil {
			return nil, false, fmt.Errorf("label %s: %w", labelParent, err)
		}
		info.Parent = string(parent)
	}
	if info.Created, err = time.Parse(time.RFC3339Nano, m[labelCreated]); err != nil {
		return nil, false, fmt.Errorf("label %s: %w", labelCreated, err)
	}
	if info.Updated, err = time.Parse(time.RFC3339Nano, m[labelUpdated]); err != nil {
		return nil, false, fmt.Errorf("label %s: %w", labelUpdated, err)
	}
	for k, v := range m {
		if uk, ok := strings.CutPrefix(k, labelUser); ok {
			if info.Labels == nil {
				info.Labels = map[string]string{}
			}
			info.Labels[uk] = v
		}
	}
	e = &entry{layer: layer, info: info}
	if u, ok := m[labelUsage]; ok {
		if e.usage, err = strconv.ParseInt(u, 10, 64); err != nil {
			return nil, false, fmt.Errorf("label %s: %w", labelUsage, err)
		}
	}
	return e, m[labelRemoved] == "1", nil
}

func cloneInfo(info snapshots.Info) snapshots.Info {
	info.Labels = maps.Clone(info.Labels)
	return info
}

// validateLabels applies containerd's limits, and asks for UTF-8 (the
// records are JSON).
func validateLabels(m map[string]string) error {
	for k, v := range m {
		if err := labels.Validate(k, v); err != nil {
			return fmt.Errorf("%w: %w", errdefs.ErrInvalidArgument, err)
		}
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return fmt.Errorf("label %q: not valid UTF-8: %w", k, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// parseFilters compiles containerd filter strings over a snapshot's kind,
// name, parent and labels. No filter matches everything.
func parseFilters(fs []string) (func(snapshots.Info) bool, error) {
	f, err := filters.ParseAll(fs...)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errdefs.ErrInvalidArgument, err)
	}
	return func(info snapshots.Info) bool {
		return f.Match(filters.AdapterFunc(func(fp []string) (string, bool) {
			if len(fp) == 0 {
				return "", false
			}
			switch fp[0] {
			case "kind":
				return kindString(info.Kind), true
			case "name":
				return info.Name, true
			case "parent":
				return info.Parent, true
			case "labels":
				if len(fp) < 2 {
					return "", false
				}
				v, ok := info.Labels[strings.Join(fp[1:], ".")]
				return v, ok
			}
			return "", false
		}))
	}, nil
}
