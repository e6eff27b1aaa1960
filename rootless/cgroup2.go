package rootless

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	godbus "github.com/godbus/dbus/v5"

	"peapod/cgroups"
)

// On a cgroup v2 host a user's processes get cgroups of their own only
// where systemd delegated a subtree to them (Delegate=yes), and a cgroup
// that passes controllers down to children may hold no process itself
// ("no internal processes"). The parent readies such a subtree before the
// daemon starts; the daemon's pods then go to <subtree>/pods (see
// ParentOptions.PodCgroup), with cpu, memory, pids (and io, cpuset: what
// systemd delegates) enabled down to them.
//
// Which subtree:
//
//   - Run as a systemd user service (contrib/peapod.service: Delegate=yes,
//     KillMode=process), the parent leaves the service's cgroup as it is
//     and asks the user's systemd for a scope with Delegate=yes holding
//     the namespace holder and the network helper (peapod-holder-<pid>.scope,
//     in the service's slice); they move into its leaf CgroupLeaf and the
//     pods go to <scope>/pods. systemd starts a service in the service's
//     own cgroup: were controllers enabled there for the pods, it could not
//     start the service again while pods run (the kernel refuses a process
//     in such a cgroup, EBUSY; with systemd 252 in the VM the start failed,
//     as systemd issue 24064 describes). The scope lives as long as the
//     holder, so a restarted service finds it (through the holder's cgroup)
//     and its pods.
//   - Otherwise, when this process's own cgroup is delegated (writable: a
//     scope with Delegate=yes, or a subtree root made for the user), the
//     parent moves itself into its leaf CgroupLeaf before it starts
//     anything, so that the holder, the network helper and the daemon start
//     there, and the pods go to <own>/pods (cgroups.PrepareDelegatedV2). A
//     restart finds itself in the leaf or in the cgroup and does the same.
//     This is also the fallback when systemd cannot make the scope.
//
// Without either the parent logs why and goes on: pods run without
// cgroups, and the daemon's Status and `peapod check` say why accounting
// is unavailable.

// CgroupLeaf is the child of a delegated cgroup v2 subtree that holds its
// processes: the holder and the network helper, and the parent and the
// daemon when the subtree is the parent's own.
const CgroupLeaf = "supervisor"

// cgroupV2 is the parent's cgroup v2 setup: begin before the holder
// starts, podsBase once it runs.
type cgroupV2 struct {
	log *slog.Logger
	uid int
	// own is this process's cgroup at start; service is set when that is
	// a systemd user service (pods go to a scope of their own).
	own     string
	service bool
	// base is the subtree readied for the pods, "" while none.
	base string
}

// beginCgroupV2 looks at this process's cgroup before the holder starts;
// nil on cgroup v1 (root delegates /peapod-<user> there instead).
func beginCgroupV2(log *slog.Logger, uid int) *cgroupV2 {
	if cgroups.DetectMode() != cgroups.ModeV2 {
		return nil
	}
	c := &cgroupV2{log: log, uid: uid}
	own, err := procCgroupV2("self")
	if err != nil {
		log.Warn("no cgroup v2 entry for this process: pods run without cgroup limits or accounting", "err", err)
		return c
	}
	c.own = own
	if c.service = userService(own, uid); !c.service {
		c.prepareOwn()
	}
	return c
}

// prepareOwn moves this process (and whatever else is in its cgroup) into
// the leaf of its own delegated cgroup.
func (c *cgroupV2) prepareOwn() {
	own, err := cgroups.PrepareDelegatedV2(CgroupLeaf)
	if err != nil {
		c.log.Warn("no delegated cgroup v2 subtree: pods run without cgroup limits or accounting; "+
			"run peapod as a systemd user service with Delegate=yes (contrib/peapod.service) and see `peapod check`",
			"err", err)
		return
	}
	c.base = own
	c.log.Info("delegated cgroup v2 subtree ready", "cgroup", own, "leaf", path.Join(own, CgroupLeaf), "controllers", subtreeControl(own))
}

// podsBase returns the subtree the pods go to ("" when there is none),
// once the holder and the network helper of rec run.
func (c *cgroupV2) podsBase(rec *holderRecord) string {
	if c == nil {
		return ""
	}
	if !c.service {
		return c.base
	}
	if err := c.holderScope(rec); err != nil {
		c.log.Warn("no delegated scope for the pods from the user's systemd; using this service's cgroup "+
			"(systemd then cannot restart the service while pods run)", "err", err)
		c.prepareOwn()
	}
	return c.base
}

// holderScope puts the holder and the network helper into a delegated
// scope of the user's systemd, or finds the one an earlier parent made.
func (c *cgroupV2) holderScope(rec *holderRecord) error {
	hcg, err := procCgroupV2(strconv.Itoa(rec.Holder.PID))
	if err != nil {
		return err
	}
	scope := path.Dir(hcg)
	if path.Base(hcg) != CgroupLeaf || scope == c.own || !strings.HasSuffix(scope, ".scope") {
		// A new holder: it is in our cgroup. Ask for its scope.
		if scope, err = c.startScope(rec); err != nil {
			return err
		}
	}
	if err := cgroups.PrepareDelegatedV2At(scope, CgroupLeaf); err != nil {
		return err
	}
	// A network helper restarted for a running holder starts here, in
	// the service: it joins the holder.
	if rec.NetPID.alive() {
		if ncg, _ := procCgroupV2(strconv.Itoa(rec.NetPID.PID)); ncg != path.Join(scope, CgroupLeaf) {
			leaf := filepath.Join("/sys/fs/cgroup", scope, CgroupLeaf, "cgroup.procs")
			if err := os.WriteFile(leaf, []byte(strconv.Itoa(rec.NetPID.PID)), 0); err != nil {
				c.log.Warn("network helper stays outside the holder's scope", "pid", rec.NetPID.PID, "err", err)
			}
		}
	}
	c.base = scope
	c.log.Info("delegated cgroup v2 scope ready", "cgroup", scope, "leaf", path.Join(scope, CgroupLeaf), "controllers", subtreeControl(scope))
	return nil
}

// startScope asks the user's systemd (on the user bus) for a transient
// scope with Delegate=yes around the holder and the network helper, in
// the slice of this service, and returns its cgroup.
func (c *cgroupV2) startScope(rec *holderRecord) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := sddbus.NewUserConnectionContext(ctx)
	if err != nil {
		return "", fmt.Errorf("the user's systemd on the user bus: %w", err)
	}
	defer conn.Close()
	pids := []uint32{uint32(rec.Holder.PID)}
	if rec.NetPID.alive() {
		pids = append(pids, uint32(rec.NetPID.PID))
	}
	name := scopeName(rec.Holder.PID)
	props := []sddbus.Property{
		sddbus.PropDescription("peapod rootless pods (namespace holder " + strconv.Itoa(rec.Holder.PID) + ")"),
		sddbus.PropPids(pids...),
		{Name: "Delegate", Value: godbus.MakeVariant(true)},
		{Name: "CollectMode", Value: godbus.MakeVariant("inactive-or-failed")},
	}
	if slice := path.Base(path.Dir(c.own)); strings.HasSuffix(slice, ".slice") {
		props = append(props, sddbus.PropSlice(slice))
	}
	done := make(chan string, 1)
	if _, err := conn.StartTransientUnitContext(ctx, name, "fail", props, done); err != nil {
		return "", fmt.Errorf("start %s: %w", name, err)
	}
	select {
	case res := <-done:
		if res != "done" {
			return "", fmt.Errorf("start %s: job %s", name, res)
		}
	case <-ctx.Done():
		return "", fmt.Errorf("start %s: %w", name, ctx.Err())
	}
	hcg, err := procCgroupV2(strconv.Itoa(rec.Holder.PID))
	if err != nil {
		return "", err
	}
	if path.Base(hcg) != name {
		return "", fmt.Errorf("the holder is in %s after %s started", hcg, name)
	}
	return hcg, nil
}

func scopeName(holderPID int) string { return fmt.Sprintf("peapod-holder-%d.scope", holderPID) }

// userService tells whether cg is the cgroup of a service of uid's
// systemd user manager.
func userService(cg string, uid int) bool {
	return strings.HasSuffix(cg, ".service") &&
		strings.Contains(cg, fmt.Sprintf("/user@%d.service/", uid))
}

// procCgroupV2 reads the cgroup v2 path of a process ("self" or a pid).
func procCgroupV2(pid string) (string, error) {
	b, err := os.ReadFile("/proc/" + pid + "/cgroup")
	if err != nil {
		return "", err
	}
	return parseCgroupV2(string(b))
}

// parseCgroupV2 finds the unified hierarchy's "0::<path>" line in the
// text of /proc/<pid>/cgroup.
func parseCgroupV2(s string) (string, error) {
	for line := range strings.SplitSeq(s, "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok && strings.HasPrefix(p, "/") {
			return p, nil
		}
	}
	return "", fmt.Errorf("no cgroup v2 entry in %q", s)
}

func subtreeControl(cg string) string {
	b, _ := os.ReadFile(filepath.Join("/sys/fs/cgroup", cg, "cgroup.subtree_control"))
	return strings.TrimSpace(string(b))
}

// podCgroupParent is the --cgroup-parent the daemon gets when the parent
// readied the delegated subtree base: base/name, nil when there is none
// or when name is "" (the user chose the pods' parent).
func podCgroupParent(base, name string) []string {
	if base == "" || name == "" {
		return nil
	}
	return []string{"--cgroup-parent", path.Join(base, name)}
}
