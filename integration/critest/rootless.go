package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// rootlessRun is what it takes to run the private instance as an ordinary
// user: the binaries copied where that user can run them (a checkout under
// /root is out of its reach), the work dir handed over, its credentials.
type rootlessRun struct {
	user     *user.User
	uid, gid int
	peapod   string // the copy of peapod
	cniBin   string // the copies of the CNI plugins
	// critestArgs are critest's arguments with its report in userReport,
	// a file the user can write; collectReport moves it to where the
	// summary reads it.
	critestArgs []string
	userReport  string
}

// critest copies critest (and the ginkgo CLI beside it, for -parallel)
// where the user can run it, and rewrites its report path.
func (r *rootlessRun) critest(critest, work, report string, args []string) (string, error) {
	bin := filepath.Join(work, "bin")
	dst := filepath.Join(bin, "critest")
	if err := copyExe(critest, dst); err != nil {
		return "", err
	}
	if g := filepath.Join(filepath.Dir(critest), "ginkgo"); fileExists(g) {
		if err := copyExe(g, filepath.Join(bin, "ginkgo")); err != nil {
			return "", err
		}
	}
	tmp := filepath.Join(work, "tmp")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return "", err
	}
	r.userReport = filepath.Join(work, "report.json")
	for _, a := range args {
		if a == "--ginkgo.json-report="+report {
			a = "--ginkgo.json-report=" + r.userReport
		}
		r.critestArgs = append(r.critestArgs, a)
	}
	// Only what is new: the daemon's dirs hold files of subordinate ids.
	for _, p := range []string{dst, filepath.Join(bin, "ginkgo"), tmp, work} {
		if err := os.Lchown(p, r.uid, r.gid); err != nil && !os.IsNotExist(err) {
			return "", err
		}
	}
	return dst, nil
}

func (r *rootlessRun) collectReport(report string) error {
	b, err := os.ReadFile(r.userReport)
	if err != nil {
		return err
	}
	return os.WriteFile(report, b, 0o644)
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func prepareRootless(name, work, peapod, cniBinDir string) (*rootlessRun, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("rootless user %q: %w (.ci/run creates peapod-test)", name, err)
	}
	r := &rootlessRun{user: u}
	r.uid, _ = strconv.Atoi(u.Uid)
	r.gid, _ = strconv.Atoi(u.Gid)
	bin := filepath.Join(work, "bin")
	r.peapod, r.cniBin = filepath.Join(bin, "peapod"), filepath.Join(bin, "cni")
	if err := os.MkdirAll(r.cniBin, 0o755); err != nil {
		return nil, err
	}
	if err := copyExe(peapod, r.peapod); err != nil {
		return nil, err
	}
	plugins, err := os.ReadDir(cniBinDir)
	if err != nil {
		return nil, err
	}
	for _, p := range plugins {
		if err := copyExe(filepath.Join(cniBinDir, p.Name()), filepath.Join(r.cniBin, p.Name())); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// handOver gives the work dir to the user, as it is when the daemon starts.
func (r *rootlessRun) handOver(work string) error {
	return filepath.Walk(work, func(p string, _ os.FileInfo, err error) error {
		if err == nil {
			err = os.Lchown(p, r.uid, r.gid)
		}
		return err
	})
}

func (r *rootlessRun) credential() *syscall.Credential {
	return &syscall.Credential{Uid: uint32(r.uid), Gid: uint32(r.gid), Groups: []uint32{}}
}

func (r *rootlessRun) env() []string {
	return []string{
		"HOME=" + r.user.HomeDir, "USER=" + r.user.Username, "LOGNAME=" + r.user.Username,
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	}
}

// holderRecord reads a rootless instance's holder record.
func holderRecord(state string) (holder, netHelper int, err error) {
	b, err := os.ReadFile(filepath.Join(state, "rootless", "holder.json"))
	if err != nil {
		return 0, 0, err
	}
	var rec struct {
		Holder struct {
			PID int `json:"pid"`
		} `json:"holder"`
		Net struct {
			PID int `json:"pid"`
		} `json:"net_process"`
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return 0, 0, err
	}
	return rec.Holder.PID, rec.Net.PID, nil
}

// holderPID is the process that holds the rootless node's namespaces.
func holderPID(state string) (int, error) {
	h, _, err := holderRecord(state)
	if err != nil {
		return 0, fmt.Errorf("rootless holder: %w", err)
	}
	return h, nil
}

// killNamespaces ends a rootless instance's namespace holder and network
// helper if the daemon could not (it normally removes them itself when it
// stops with no pods).
func killNamespaces(state string) []string {
	h, n, err := holderRecord(state)
	if err != nil {
		return nil
	}
	var out []string
	for _, pid := range []int{n, h} {
		if pid > 0 && syscall.Kill(pid, syscall.SIGKILL) == nil {
			out = append(out, fmt.Sprintf("killed leftover rootless namespace process %d", pid))
		}
	}
	return out
}

func copyExe(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
