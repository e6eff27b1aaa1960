package sandbox

import (
	"log/slog"
	"time"
)

// steps times the phases of one call for the debug log, so that an
// operator (or `make bench`) can see where a slow RunPodSandbox or
// CreateContainer spends its time without a profiler.
type steps struct {
	last  time.Time
	attrs []any
}

func newSteps() *steps { return &steps{last: time.Now()} }

// mark ends the phase called name.
func (s *steps) mark(name string) {
	now := time.Now()
	s.attrs = append(s.attrs, slog.Duration(name, now.Sub(s.last)))
	s.last = now
}

// timed runs fn and returns how long it took, for a phase of its own
// that runs beside others (see side).
func timed(fn func()) time.Duration {
	t := time.Now()
	fn()
	return time.Since(t)
}

// side records how long one of the side-by-side parts of the phase that
// the next mark ends took.
func (s *steps) side(name string, d time.Duration) {
	s.attrs = append(s.attrs, slog.Duration(name, d))
}

func (s *steps) log(l *slog.Logger, msg string, id string) {
	l.Debug(msg, append([]any{"id", id}, s.attrs...)...)
}
