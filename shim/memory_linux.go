package shim

import (
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"time"
)

// The shim's memory counts against every pod, so it keeps its heap small:
//
//   - GOGC 50 instead of 100: the Go runtime lets a heap grow to 4 MiB ×
//     GOGC/100 before its first collection, and a shim's live heap is well
//     under 1 MiB, so between bursts of work a shim that pumps a chatty
//     container's output settles around 2 MiB instead of 4.
//   - After a burst of lifecycle work (create, start, exec, attach,
//     delete, update), once the shim has been quiet for trimDelay, a full
//     collection returns the free pages to the kernel (debug.FreeOSMemory).
//     Creating a container leaves garbage of about its own live heap
//     behind (the decoded spec, libcontainer's config and mountinfo
//     parsing, JSON buffers): without this it stays resident, since a
//     quiet shim never reaches its first collection.
//
// Frequent calls (state, list, wait, ping: the daemon's status polls) do
// not trim: a collection costs about a millisecond of CPU.
const (
	shimGCPercent = 50
	trimDelay     = 150 * time.Millisecond
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

// trims says whether a call of this kind leaves enough garbage behind to
// trim after it.
func trims(o op) bool {
	switch o {
	case opCreate, opStart, opExec, opAttach, opDelete, opUpdate:
		return true
	}
	return false
}
