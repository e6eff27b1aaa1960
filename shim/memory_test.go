package shim

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// shimAnonBudgetKB (1.125 MiB) bounds the shim's private memory (Pss_Anon
// of the real shim process) with one running container: about 1.02 MiB
// measured (1044 KiB: peapod-shim without cgo or libcontainer, one P,
// libcontainer's work done in peapod-lc helpers), where the shim that
// linked libcontainer held 1.27 MiB and the one that ran it 1.9 MiB; the
// whole peapod as the shim takes 2.6 MiB (wholeAnonBudgetKB,
// PEAPOD_SHIMTEST_WHOLE=1). A cgo-free Go program with a listener,
// encoding/json and log/slog holds about 0.6 MiB: the floor. Over the
// budget means something now stays resident per shim, in every pod
// (deps_test.go guards the likeliest cause: libcontainer linked again).
const (
	shimAnonBudgetKB  = 1152
	wholeAnonBudgetKB = 3072
)

func TestShimMemoryWithOneContainer(t *testing.T) {
	p := newPod(t)
	p.run(p.spec("mem", false, "sleep", "1000"))
	// Past the trim's time (it leaves a heap this small alone).
	time.Sleep(trimDelay + 300*time.Millisecond)
	anon, err := anonKB(p.client.Pid())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("shim %s: %d KiB anonymous after one container started", peapodBin, anon)
	budget := int64(shimAnonBudgetKB)
	if os.Getenv("PEAPOD_SHIMTEST_WHOLE") != "" {
		budget = wholeAnonBudgetKB
	}
	if anon > budget {
		t.Errorf("shim holds %d KiB of anonymous memory with one container, budget %d KiB", anon, budget)
	}
}

// anonKB is Pss_Anon of the process (its private anonymous memory).
func anonKB(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Pss_Anon:"); ok {
			return strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		}
	}
	return 0, fmt.Errorf("no Pss_Anon in smaps_rollup of %d", pid)
}

// pollAnonBudgetKB bounds the shim's private memory after the daemon's
// status polls made the runtime collect: about 2.0 MiB measured after
// 6000 calls (2.4 MiB when the shim linked libcontainer, 4.1 MiB without
// the trims of afterPoll); the whole peapod as the shim, 3.7 MiB
// (wholePollAnonBudgetKB).
const (
	pollAnonBudgetKB      = 2560
	wholePollAnonBudgetKB = 4608
)

func TestShimMemoryUnderStatusPolls(t *testing.T) {
	p := newPod(t)
	p.run(p.spec("polled", false, "sleep", "1000"))
	ctx := context.Background()
	for range 3000 {
		if _, err := p.client.State(ctx, "polled"); err != nil {
			t.Fatal(err)
		}
		if _, err := p.client.List(ctx); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(trimDelay + 300*time.Millisecond)
	anon, err := anonKB(p.client.Pid())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("shim: %d KiB anonymous after 6000 status calls", anon)
	budget := int64(pollAnonBudgetKB)
	if os.Getenv("PEAPOD_SHIMTEST_WHOLE") != "" {
		budget = wholePollAnonBudgetKB
	}
	if anon > budget {
		t.Errorf("shim holds %d KiB of anonymous memory after 6000 status calls, budget %d KiB", anon, budget)
	}
}
