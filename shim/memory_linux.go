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
//   - libcontainer never runs in the shim, nor is it linked: one-shot
//     helpers (peapod-lc, helper_linux.go) do its work, and its garbage,
//     threads and parsed state end with them; the shim is built without
//     cgo. With one running container the shim holds about 1.02 MiB
//     private (1.27 MiB when it still linked libcontainer and cgo, 1.9 MiB
//     when it ran libcontainer itself); a cgo-free Go program with a
//     listener, encoding/json and log/slog holds about 0.6 MiB.
//
//   - GOGC 50 instead of 100: the Go runtime lets a heap grow to 4 MiB ×
//     GOGC/100 before its first collection, and a shim's live heap is well
//     under 1 MiB, so between bursts of work a shim that pumps a chatty
//     container's output settles around 2 MiB instead of 4.
//
//   - After a burst of lifecycle work (create, start, exec, attach,
//     delete, update), once the shim has been quiet for trimDelay, a full
//     collection returns the free pages to the kernel (debug.FreeOSMemory)
//     when that is worth it. Every call leaves some garbage behind
//     (decoded requests, JSON buffers) that a quiet shim never collects.
//     But the first collection also makes the runtime's GC state resident
//     for good (mark bits, the mark worker): after one container's create
//     and start, a trim ends about 0.4 MiB higher than no trim. So a shim
//     that never collected trims only a heap of trimAbove; once a
//     collection ran anyway (30 execs get there), it trims whenever
//     trimFreeAbove is free: 30 execs then leave 2.1 MiB private (the shim
//     that ran libcontainer left 2.7 MiB with its trim, 3.8 without).
//
//   - One P: Start gives the shim GOMAXPROCS=1 (unless the daemon's
//     environment sets GOMAXPROCS). The shim waits on sockets, pipes and
//     children, and each P keeps caches of its own (spans, stacks); about
//     200 KiB less. It must be in the environment at exec: set later with
//     runtime.GOMAXPROCS, the second P's memory stays behind.
//
// Frequent calls (state, list, wait, ping: the daemon's status polls) trim
// only once their garbage adds up (afterPoll): a collection costs about a
// millisecond of CPU.
const (
	shimGCPercent = 50
	trimDelay     = 150 * time.Millisecond
	trimAbove     = 2 << 20 // heap bytes
	trimFreeAbove = 256 << 10
	trimPollAbove = 1 << 20
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

// afterPoll is called after a frequent call (state, list, wait, ping):
// those trim only once their garbage adds up to trimPollAbove of heap,
// after a collection ran anyway (before, the heap stays under the first
// collection's goal, 2 MiB, and no trim is worth the GC state it makes
// resident). The daemon's status polls would otherwise keep the heap
// between collections at that goal: 6000 polls left 4.1 MiB private,
// with these trims about 2.6-3 MiB.
func (t *trimmer) afterPoll() {
	if m := readHeapMetrics(); m.gcCycles > 0 && m.objects+m.unused+m.free >= trimPollAbove {
		t.soon()
	}
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
	m := readHeapMetrics()
	trimmed := m.worthTrimming()
	if trimmed {
		debug.FreeOSMemory()
	}
	if !t.verbose {
		return
	}
	// Only here: ReadMemStats stops the world and leaves about 400 KiB
	// more resident in a shim this small; runtime/metrics does not.
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	t.log.Info("memory", "trimmed", trimmed, "heapAlloc", ms.HeapAlloc, "heapInuse", ms.HeapInuse,
		"heapReleased", ms.HeapReleased, "stackInuse", ms.StackInuse, "sys", ms.Sys,
		"numGC", ms.NumGC, "goroutines", runtime.NumGoroutine())
}

// heapMetrics are the runtime's figures a trim decision needs.
type heapMetrics struct {
	objects, unused, free uint64 // heap bytes: in objects, free in spans, free spans kept
	gcCycles              uint64
}

func readHeapMetrics() heapMetrics {
	samples := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
		{Name: "/gc/cycles/total:gc-cycles"},
	}
	metrics.Read(samples)
	v := func(i int) uint64 {
		if samples[i].Value.Kind() == metrics.KindUint64 {
			return samples[i].Value.Uint64()
		}
		return 0
	}
	return heapMetrics{objects: v(0), unused: v(1), free: v(2), gcCycles: v(3)}
}

// worthTrimming: a heap of trimAbove or more not returned to the kernel,
// or, once the runtime's GC state is resident anyway (a collection ran:
// a chatty container's log pump gets there), trimFreeAbove of free heap
// to give back.
func (m heapMetrics) worthTrimming() bool {
	if m.objects+m.unused+m.free >= trimAbove {
		return true
	}
	return m.gcCycles > 0 && m.unused+m.free >= trimFreeAbove
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
