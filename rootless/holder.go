package rootless

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"peapod/internal/atomicfile"
	"peapod/internal/procfs"
)

// proc names a process that must outlive the parent: pid plus start time,
// so a recycled pid is never taken for it.
type proc struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"start"`
}

func (p proc) alive() bool { return procfs.Alive(p.PID, p.Start) }

// kill ends p if it is still the recorded process. The holder and the
// network helper are not our children after a restart, so there is no
// wait: a zombie counts as gone.
func (p proc) kill() {
	if p.alive() {
		_ = syscall.Kill(p.PID, syscall.SIGKILL)
	}
}

// holderRecord is <state>/rootless/holder.json.
type holderRecord struct {
	Holder proc   `json:"holder"`
	Net    string `json:"net"` // slirp4netns or pasta
	NetPID proc   `json:"net_process"`
	// Maps are the uid and gid maps written, for `peapod check` and
	// debugging.
	UIDMap string `json:"uid_map"`
	GIDMap string `json:"gid_map"`
}

func recordPath(stateDir string) string {
	return filepath.Join(stateDir, "rootless", "holder.json")
}

func readRecord(stateDir string) (*holderRecord, error) {
	b, err := os.ReadFile(recordPath(stateDir))
	if err != nil {
		return nil, err
	}
	var r holderRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", recordPath(stateDir), err)
	}
	return &r, nil
}

func (r *holderRecord) write(stateDir string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(recordPath(stateDir), b, 0o600)
}

// teardown ends the holder and its network helper and forgets them. The
// namespaces go with the last process in them.
func (r *holderRecord) teardown(stateDir string) {
	r.NetPID.kill()
	r.Holder.kill()
	_ = os.Remove(recordPath(stateDir))
}

// Teardown ends the namespaces recorded under stateDir: for a daemon that
// stops with no pods after its parent is gone (killed), so that nobody
// else would.
func Teardown(stateDir string) {
	if r, err := readRecord(stateDir); err == nil {
		r.teardown(stateDir)
	}
}

// idMap is one user's mapping: 0 → the user, 1..Size-1 → subordinate ids.
type idMap struct {
	ID       int // the user's uid or gid
	SubStart int
	SubCount int
}

// args are newuidmap/newgidmap's triples after the pid.
func (m idMap) args() []string {
	return []string{"0", strconv.Itoa(m.ID), "1", "1", strconv.Itoa(m.SubStart), strconv.Itoa(m.SubCount)}
}

func (m idMap) String() string {
	return fmt.Sprintf("0 %d 1; 1 %d %d", m.ID, m.SubStart, m.SubCount)
}

// startHolder starts the holder: the pause binary in a new user, mount,
// network, IPC and UTS namespace, in its own session so that it survives the parent,
// and writes its id maps. It returns the running holder.
func startHolder(pauseBinary string, uids, gids idMap) (*exec.Cmd, proc, error) {
	cmd := exec.Command(pauseBinary)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setsid: true,
		// IPC and UTS too: the rootless node's own, which pods with
		// hostIPC (mqueue mounts) and hostNetwork can use, unlike the
		// host's, owned by the initial user namespace.
		Cloneflags: syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS | syscall.CLONE_NEWNET | syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS,
	}
	if err := cmd.Start(); err != nil {
		if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EINVAL) {
			return nil, proc{}, fmt.Errorf("create a user namespace: %w (are unprivileged user namespaces enabled? see `peapod check`)", err)
		}
		return nil, proc{}, fmt.Errorf("start namespace holder %s: %w", pauseBinary, err)
	}
	fail := func(err error) (*exec.Cmd, proc, error) {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, proc{}, err
	}
	st, err := procfs.StartTime(cmd.Process.Pid)
	if err != nil {
		return fail(err)
	}
	pid := strconv.Itoa(cmd.Process.Pid)
	for _, m := range []struct {
		tool string
		m    idMap
	}{{"newuidmap", uids}, {"newgidmap", gids}} {
		out, err := exec.Command(m.tool, append([]string{pid}, m.m.args()...)...).CombinedOutput()
		if err != nil {
			return fail(fmt.Errorf("%s %s %s: %v: %s (check /etc/sub%sid and that %s is setuid root; see `peapod check`)",
				m.tool, pid, m.m, err, trimOutput(out), map[string]string{"newuidmap": "u", "newgidmap": "g"}[m.tool], m.tool))
		}
	}
	return cmd, proc{PID: cmd.Process.Pid, Start: st}, nil
}

func trimOutput(b []byte) string {
	const max = 400
	s := string(b)
	for len(s) > 0 && (s[len(s)-1] == '\n' || s[len(s)-1] == ' ') {
		s = s[:len(s)-1]
	}
	if len(s) > max {
		s = s[:max] + "…"
	}
	return s
}

// waitGone waits up to d for p to end.
func waitGone(p proc, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for p.alive() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// RunningHolder returns the pid of the live namespace holder recorded under
// stateDir, for commands that must run inside the rootless node.
func RunningHolder(stateDir string) (int, error) {
	r, err := readRecord(stateDir)
	if err != nil || !r.Holder.alive() {
		return 0, fmt.Errorf("no rootless peapod runs for %s: start `peapod serve` first", stateDir)
	}
	return r.Holder.PID, nil
}
