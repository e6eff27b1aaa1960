package shim

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// maxLogLineBytes is where a line is cut into partial (P) records: the
// kubelet's and containerd's default max_container_log_line_size.
const maxLogLineBytes = 16 << 10

// Streams and tags of the CRI log format
// (k8s.io/cri-api/pkg/apis/runtime/v1/constants.go).
const (
	streamStdout = "stdout"
	streamStderr = "stderr"
	tagPartial   = 'P'
	tagFull      = 'F'
)

// criLog is one container's log file, shared by its stdout and stderr
// copiers. Each record is one write(2) of a whole line, so the kubelet never
// reads half a record, and records of the two streams never interleave.
type criLog struct {
	mu   sync.Mutex
	path string
	f    *os.File // nil: output discarded (no path, or reopen failed)
	buf  []byte
	now  func() time.Time
}

func openCRILog(path string) (*criLog, error) {
	l := &criLog{path: path, now: time.Now}
	if path == "" {
		return l, nil
	}
	f, err := openLogFile(path)
	if err != nil {
		return nil, err
	}
	l.f = f
	return l, nil
}

func openLogFile(path string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	return os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
}

// write appends one record: `<RFC3339Nano> <stream> <P|F> <content>\n`.
func (l *criLog) write(stream string, tag byte, content []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return
	}
	b := l.buf[:0]
	b = l.now().AppendFormat(b, time.RFC3339Nano)
	b = append(b, ' ')
	b = append(b, stream...)
	b = append(b, ' ', tag, ' ')
	b = append(b, content...)
	b = append(b, '\n')
	// A full disk loses lines; the container must not block on it.
	_, _ = l.f.Write(b)
	if cap(b) <= 2*maxLogLineBytes {
		l.buf = b
	}
}

// reopen closes the file and opens the path again: after the kubelet
// renamed it for rotation, new lines go to a new file.
func (l *criLog) reopen() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.path == "" {
		return nil
	}
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
	f, err := openLogFile(l.path)
	if err != nil {
		return err
	}
	l.f = f
	return nil
}

func (l *criLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
}

// copyLines turns a stream into CRI records until EOF. A line longer than
// maxLogLineBytes becomes P records of that size and an F record with the
// rest; a last line without newline is flushed as F at EOF. "\r\n" ends a
// line like "\n" (as containerd does).
func copyLines(r io.Reader, stream string, l *criLog) {
	br := bufio.NewReaderSize(r, maxLogLineBytes)
	for {
		line, err := br.ReadSlice('\n')
		switch {
		case err == nil:
			line = bytes.TrimSuffix(line[:len(line)-1], []byte{'\r'})
			l.write(stream, tagFull, line)
		case errors.Is(err, bufio.ErrBufferFull):
			l.write(stream, tagPartial, line)
		default:
			if len(line) > 0 {
				l.write(stream, tagFull, line)
			}
			return
		}
	}
}
