package image

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
)

// progress shows an import: on a terminal one status line redrawn in
// place (layer n/m, bytes done of total) with a line per finished layer;
// elsewhere only the per-layer lines, for logs.
type progress struct {
	w   io.Writer
	tty bool

	mu                      sync.Mutex
	layersTotal, layersDone int
	bytesTotal, bytesDone   int64
	current                 string
	lastDraw                time.Time
	drawn                   bool
}

// redrawEvery keeps a fast import from spending its time on the terminal.
const redrawEvery = 100 * time.Millisecond

func newProgress(w io.Writer) *progress {
	if w == nil {
		w = io.Discard
	}
	return &progress{w: w, tty: isTerminal(w)}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// linef prints a permanent line, above the status line on a terminal.
func (p *progress) linef(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.clearLocked()
	fmt.Fprintf(p.w, format+"\n", args...)
	p.drawLocked(true)
}

func (p *progress) startLayer(diffID v1.Hash) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.current = shortDigest(diffID)
	p.drawLocked(true)
}

func (p *progress) doneLayer(diffID v1.Hash, size int64, alreadyPresent bool) {
	p.mu.Lock()
	p.layersDone++
	p.current = "" // no status line until the next layer starts
	if alreadyPresent {
		p.bytesDone += size // not read, but done
	}
	n, total := p.layersDone, p.layersTotal
	p.mu.Unlock()
	what := "unpacked"
	if alreadyPresent {
		what = "already present"
	}
	p.linef("layer %d/%d %s %s %s", n, total, shortDigest(diffID), humanBytes(size), what)
}

func (p *progress) add(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.bytesDone += int64(n)
	p.drawLocked(false)
}

// finish leaves the terminal on a fresh line.
func (p *progress) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.clearLocked()
	p.tty = false
}

func (p *progress) drawLocked(force bool) {
	if !p.tty || p.current == "" || (!force && time.Since(p.lastDraw) < redrawEvery) {
		return
	}
	p.lastDraw = time.Now()
	done := min(p.bytesDone, p.bytesTotal)
	fmt.Fprintf(p.w, "\r\033[Klayer %d/%d %s  %s / %s", min(p.layersDone+1, p.layersTotal), p.layersTotal, p.current, humanBytes(done), humanBytes(p.bytesTotal))
	p.drawn = true
}

func (p *progress) clearLocked() {
	if p.tty && p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
		p.drawn = false
	}
}

// reader counts what a layer import reads.
func (p *progress) reader(r io.Reader) io.Reader { return &progressReader{r: r, p: p} }

type progressReader struct {
	r io.Reader
	p *progress
}

func (r *progressReader) Read(b []byte) (int, error) {
	n, err := r.r.Read(b)
	if n > 0 {
		r.p.add(n)
	}
	return n, err
}

func shortDigest(h v1.Hash) string {
	if len(h.Hex) > 12 {
		return h.Algorithm + ":" + h.Hex[:12]
	}
	return h.String()
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
