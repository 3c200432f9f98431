package thinpool

import (
	"fmt"
	"slices"

	"github.com/moby/sys/mountinfo"
)

// Mounts returns, for each device of the pool that is mounted in this
// process's mount namespace, its mount points (matched by device number,
// from /proc/self/mountinfo), sorted.
func (in *Inspector) Mounts() (map[string][]string, error) {
	live, err := in.dm.List()
	if err != nil {
		return nil, fmt.Errorf("thinpool: list dm devices: %w", err)
	}
	recs, err := in.p.st.all()
	if err != nil {
		return nil, err
	}
	byDM := make(map[string]string, len(recs))
	for _, r := range recs {
		byDM[in.p.dmName(r.Name)] = r.Name
	}
	type devnum struct{ major, minor int }
	byDev := map[devnum]string{}
	for _, l := range live {
		if name, ok := byDM[l.Name]; ok {
			byDev[devnum{int(l.Dev.Major), int(l.Dev.Minor)}] = name
		}
	}
	out := map[string][]string{}
	if len(byDev) == 0 {
		return out, nil
	}
	infos, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		_, ok := byDev[devnum{m.Major, m.Minor}]
		return !ok, false
	})
	if err != nil {
		return nil, fmt.Errorf("thinpool: read mountinfo: %w", err)
	}
	for _, m := range infos {
		name := byDev[devnum{m.Major, m.Minor}]
		out[name] = append(out[name], m.Mountpoint)
	}
	for _, v := range out {
		slices.Sort(v)
	}
	return out, nil
}
