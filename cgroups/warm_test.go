package cgroups

import (
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestWarmTargetFrom(t *testing.T) {
	v1roots := map[string]string{
		"cpu": "/sys/fs/cgroup/cpu", "cpuacct": "/sys/fs/cgroup/cpuacct",
		"pids": "/sys/fs/cgroup/pids", "name=systemd": "/sys/fs/cgroup/systemd",
		"": "/sys/fs/cgroup/unified",
	}
	cases := []struct {
		name  string
		mode  Mode
		roots map[string]string
		self  string
		want  string
	}{
		{"v1 hybrid: the first controller hierarchy", ModeV1, v1roots,
			"12:name=systemd:/system.slice/peapod.service\n11:pids:/system.slice/peapod.service\n2:cpu,cpuacct:/\n0::/system.slice/peapod.service\n",
			"/sys/fs/cgroup/pids/system.slice/peapod.service/tasks"},
		{"v1 co-mounted controllers", ModeV1, v1roots,
			"1:name=systemd:/a\n4:cpu,cpuacct:/b\n",
			"/sys/fs/cgroup/cpu/b/tasks"},
		{"v1 with only named hierarchies", ModeV1, v1roots,
			"1:name=systemd:/a\n0::/a\n", ""},
		{"v2", ModeV2, map[string]string{"": "/sys/fs/cgroup"},
			"0::/user.slice/peapod\n", "/sys/fs/cgroup/user.slice/peapod/cgroup.procs"},
		{"v2 in a cgroup namespace's root", ModeV2, map[string]string{"": "/sys/fs/cgroup"},
			"0::/\n", "/sys/fs/cgroup/cgroup.procs"},
		{"unreadable lines", ModeV2, map[string]string{"": "/sys/fs/cgroup"},
			"garbage\n0::relative\n", ""},
	}
	for _, c := range cases {
		if got := warmTargetFrom(c.mode, c.roots, c.self); got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, got, c.want)
		}
	}
}

// The warming write is a real move of this process's thread (v1) into the
// cgroup it is already in: it succeeds and no cgroup of the process
// changes.
func TestWarmAttachMovesNothing(t *testing.T) {
	requireRoot(t)
	before, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	if err := warmOnce(); err != nil {
		t.Fatalf("warming write: %v", err)
	}
	after, _ := os.ReadFile("/proc/self/cgroup")
	if string(before) != string(after) {
		t.Fatalf("our cgroups changed:\n%s\nbecame\n%s", before, after)
	}

	// The background form: one loop however many callers, and it ends.
	window := shortWarmWindow(t, 100*time.Millisecond)
	WarmAttachLock()
	WarmAttachLock()
	waitWarmLoop(t, window+5*time.Second)
	after, _ = os.ReadFile("/proc/self/cgroup")
	if string(before) != string(after) {
		t.Fatalf("our cgroups changed:\n%s\nbecame\n%s", before, after)
	}
}

// warmOnce is one warming write from the calling goroutine, as the loop
// makes them.
func warmOnce() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	f, id, err := warmWriter()
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.WriteString(id)
	return err
}

// shortWarmWindow sets warmPodWindow for one test.
func shortWarmWindow(t *testing.T, d time.Duration) time.Duration {
	t.Helper()
	waitWarmLoop(t, warmPodWindow+5*time.Second) // one an earlier test started
	old := warmPodWindow
	warmPodWindow = d
	t.Cleanup(func() { warmPodWindow = old })
	return d
}

// waitWarmLoop waits for the warming loop to end, and fails if it did not
// within max or if it gave up.
func waitWarmLoop(t *testing.T, max time.Duration) {
	t.Helper()
	deadline := time.Now().Add(max)
	for warmBusy.Load() {
		if time.Now().After(deadline) {
			t.Fatalf("the warming loop still runs after %s", max)
		}
		time.Sleep(time.Millisecond)
	}
	if warmOff.Load() {
		t.Fatal("warming gave up as root")
	}
}

// The lock stays warm for the window after the last call: the loop keeps
// writing, less than a grace period apart, and a call while it runs
// extends it rather than starting a second one.
func TestWarmKeepsWritingForItsWindow(t *testing.T) {
	requireRoot(t)
	window := shortWarmWindow(t, 150*time.Millisecond)
	n0 := warmWrites.Load()
	start := time.Now()
	WarmAttachLock()
	time.Sleep(window / 2)
	WarmAttachLock() // extends to window/2 + window from start
	waitWarmLoop(t, 10*time.Second)
	ran := time.Since(start)
	if ran < window*3/2 {
		t.Errorf("the loop ended %s after the first call; a call at %s should have kept it to %s", ran, window/2, window*3/2)
	}
	// Writes were about warmPeriod apart the whole time. A loaded host
	// may stretch the sleeps; a third of the ideal count still shows the
	// loop kept going rather than writing once per call.
	writes := warmWrites.Load() - n0
	if ideal := int64(window * 3 / 2 / warmPeriod); writes < ideal/3 {
		t.Errorf("%d warming writes in %s, want about %d (one per %s)", writes, ran, ideal, warmPeriod)
	}
	if warmBusy.Load() {
		t.Error("a second loop started after the first ended")
	}
}

// EndWarmAttach stops the loop long before its window is over: once the
// container it warmed for is in its cgroups, it would only slow the
// host's forks and exits.
func TestWarmEndsWhenToldTo(t *testing.T) {
	requireRoot(t)
	shortWarmWindow(t, time.Minute)
	WarmAttachLock()
	time.Sleep(20 * time.Millisecond)
	if !warmBusy.Load() {
		t.Fatal("no warming loop runs after WarmAttachLock")
	}
	EndWarmAttach()
	waitWarmLoop(t, time.Second)
}

// On v1 a thread of the daemon may sit in a pod's cgroups for a moment
// (StartPause forks the pause from there). Warming writes, however many,
// must leave it there: a write of the whole process would bring it home
// and the pause would be born in the daemon's cgroups.
func TestWarmLeavesOtherThreadsWhereTheyAre(t *testing.T) {
	requireRoot(t)
	if hostMode() != ModeV1 {
		t.Skip("threads of one process share a cgroup on v2") // the v2 VM run skips it, rightly
	}
	roots, err := hierarchyRoots(ModeV1)
	if err != nil {
		t.Fatal(err)
	}
	name := "peapod-warmtest-" + randHex(4)
	var dirs []string
	for key, root := range roots {
		if key == "" || strings.HasPrefix(key, "name=") {
			continue
		}
		dir := filepath.Join(root, name)
		if slices.Contains(dirs, dir) {
			continue
		}
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, dir)
		if key == "cpuset" { // a new cpuset has no CPUs nor memory nodes
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				b, err := os.ReadFile(filepath.Join(root, f))
				if err == nil {
					err = os.WriteFile(filepath.Join(dir, f), b, 0)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	t.Cleanup(func() {
		// The moved thread goes home when released.
		deadline := time.Now().Add(5 * time.Second)
		for _, d := range dirs {
			for os.Remove(d) != nil && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			if exists(d) {
				t.Errorf("cannot remove test cgroup %s", d)
			}
		}
	})

	moved, check, done := make(chan error, 1), make(chan struct{}), make(chan string, 1)
	release := sync.OnceFunc(func() { close(check) })
	t.Cleanup(release) // before the removal above, which waits for the thread's end
	go func() {
		runtime.LockOSThread()
		home, err := threadCgroups(roots)
		if err != nil {
			moved <- err
			return // still locked: the thread ends with the goroutine
		}
		var joined []string
		defer func() { // back home, so the test cgroups empty at once
			for _, d := range joined {
				root := filepath.Dir(d)
				if os.WriteFile(filepath.Join(root, home[root], "tasks"), []byte("0"), 0) != nil {
					return // stays locked and ends with the goroutine
				}
			}
			runtime.UnlockOSThread()
		}()
		for _, d := range dirs {
			if err := os.WriteFile(filepath.Join(d, "tasks"), []byte("0"), 0); err != nil {
				moved <- err
				return
			}
			joined = append(joined, d)
		}
		moved <- nil
		<-check
		b, _ := os.ReadFile("/proc/thread-self/cgroup")
		done <- string(b)
	}()
	if err := <-moved; err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := warmOnce(); err != nil {
			t.Fatalf("warming write: %v", err)
		}
	}
	release()
	self := <-done
	for _, line := range strings.Split(strings.TrimSpace(self), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 || f[1] == "" || strings.HasPrefix(f[1], "name=") || f[1] == "misc" {
			continue
		}
		if f[2] != "/"+name {
			t.Fatalf("the thread left its cgroup in %s after warming writes:\n%s", f[1], self)
		}
	}
}
