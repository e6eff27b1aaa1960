package shim

import (
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"time"
)

// The shim's memory counts against every pod, so it keeps its heap small:
//
//   - GOGC 50 instead of 100: the Go runtime lets a heap grow to 4 MiB ×
//     GOGC/100 before its first collection, and a shim's live heap is well
//     under 1 MiB, so between bursts of work a shim that pumps a chatty
//     container's output settles around 2 MiB instead of 4.
//
//   - After a burst of lifecycle work (create, start, exec, attach,
//     delete, update), once the shim has been quiet for trimDelay, a full
//     collection returns the free pages to the kernel (debug.FreeOSMemory)
//     if the heap holds trimAbove or more. Every call leaves garbage
//     behind (decoded specs, libcontainer's config, state and mountinfo
//     parsing, JSON buffers) that a quiet shim never collects: 30 execs
//     left 3.8 MiB private with no trim, 2.7 MiB with it. But the first
//     collection also makes the runtime's GC state resident for good
//     (mark bits, mark workers): after a single container's create and
//     start, about 0.9 MiB of garbage, a trim ended at 2.0 MiB private
//     where no trim stayed at 1.85 MiB. Below trimAbove, so, no trim.
//
//   - One P: Start gives the shim GOMAXPROCS=1 (unless the daemon's
//     environment sets GOMAXPROCS). The shim waits on sockets, pipes and
//     children, and each P keeps caches of its own (spans, stacks); about
//     200 KiB less. It must be in the environment at exec: set later with
//     runtime.GOMAXPROCS, the second P's memory stays behind.
//
// Frequent calls (state, list, wait, ping: the daemon's status polls) do
// not trim: a collection costs about a millisecond of CPU.
const (
	shimGCPercent = 50
	trimDelay     = 150 * time.Millisecond
	trimAbove     = 2 << 20 // heap bytes
)

// memStatsEnv, when set in the shim's environment, logs the runtime's
// memory figures after each trim (shim.log): a debugging aid for the
// shim's footprint.
const memStatsEnv = "PEAPOD_SHIM_MEMSTATS"

type trimmer struct {
	log *slog.Logger

	mu      sync.Mutex
	timer   *time.Timer
	verbose bool
}

func newTrimmer(log *slog.Logger) *trimmer {
	debug.SetGCPercent(shimGCPercent)
	return &trimmer{log: log, verbose: os.Getenv(memStatsEnv) != ""}
}

// soon trims once no further call to soon came for trimDelay.
func (t *trimmer) soon() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.timer == nil {
		t.timer = time.AfterFunc(trimDelay, t.trim)
		return
	}
	t.timer.Reset(trimDelay)
}

func (t *trimmer) trim() {
	if resident := heapResident(); resident < trimAbove {
		if t.verbose {
			t.log.Info("memory: no trim", "heapResident", resident)
		}
		return
	}
	debug.FreeOSMemory()
	if !t.verbose {
		return
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	t.log.Info("memory after trim", "heapAlloc", ms.HeapAlloc, "heapInuse", ms.HeapInuse,
		"heapReleased", ms.HeapReleased, "stackInuse", ms.StackInuse, "sys", ms.Sys,
		"numGC", ms.NumGC, "goroutines", runtime.NumGoroutine())
}

// heapResident is the heap's memory not returned to the kernel: objects
// (live or not yet swept), free space in spans, and free spans.
func heapResident() uint64 {
	samples := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
	}
	metrics.Read(samples)
	var n uint64
	for _, s := range samples {
		if s.Value.Kind() == metrics.KindUint64 {
			n += s.Value.Uint64()
		}
	}
	return n
}

// trims says whether a call of this kind leaves enough garbage behind to
// trim after it.
func trims(o op) bool {
	switch o {
	case opCreate, opStart, opExec, opAttach, opDelete, opUpdate:
		return true
	}
	return false
}
