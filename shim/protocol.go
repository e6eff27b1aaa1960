package shim

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/opencontainers/runtime-spec/specs-go"

	"peapod/shim/internal/lcproto"
)

// A frame is a kind byte, a big-endian uint32 length, and that many bytes.
// A call is one request frame and one response frame; an exec session then
// goes on with stdio frames on the same connection.
const (
	frameJSON   byte = 'j' // request, response, exec exit
	frameStdin  byte = '0' // client → shim
	frameStdout byte = '1' // shim → client
	frameStderr byte = '2' // shim → client
	frameEOF    byte = 'e' // client → shim: stdin closed
	frameResize byte = 'r' // client → shim: TerminalSize as JSON

	maxFrameBytes = 8 << 20 // a spec with a large seccomp profile fits
)

const (
	socketName = "shim.sock"
	pidName    = "shim.pid"
	logName    = "shim.log"
)

type op string

const (
	opPing     op = "ping"
	opCreate   op = "create"
	opStart    op = "start"
	opSignal   op = "signal"
	opStop     op = "stop"
	opState    op = "state"
	opList     op = "list"
	opWait     op = "wait"
	opDelete   op = "delete"
	opExec     op = "exec"
	opAttach   op = "attach"
	opUpdate   op = "update"
	opReopen   op = "reopen"
	opShutdown op = "shutdown"
)

type request struct {
	Op      op             `json:"op"`
	ID      string         `json:"id,omitempty"`
	Spec    *ContainerSpec `json:"spec,omitempty"`
	Signal  int            `json:"signal,omitempty"`
	All     bool           `json:"all,omitempty"`
	Timeout time.Duration  `json:"timeout,omitempty"`
	Exec    *execRequest   `json:"exec,omitempty"`
	// Attach: close the container's stdin when the client's ends.
	CloseStdin bool                  `json:"closeStdin,omitempty"`
	Resources  *specs.LinuxResources `json:"resources,omitempty"`
}

type execRequest struct {
	Args    []string      `json:"args"`
	Env     []string      `json:"env,omitempty"`
	Cwd     string        `json:"cwd,omitempty"`
	Tty     bool          `json:"tty,omitempty"`
	Stdin   bool          `json:"stdin,omitempty"`
	Timeout time.Duration `json:"timeout,omitempty"`
	Size    *TerminalSize `json:"size,omitempty"`
}

type response struct {
	Error  string           `json:"error,omitempty"`
	Code   string           `json:"code,omitempty"` // names one of the Err* sentinels
	Pid    int              `json:"pid,omitempty"`
	State  *ContainerState  `json:"state,omitempty"`
	States []ContainerState `json:"states,omitempty"`
	// Exec exit.
	ExitCode int  `json:"exitCode,omitempty"`
	TimedOut bool `json:"timedOut,omitempty"`
}

var errCodes = map[string]error{
	lcproto.CodeNotFound:   ErrNotFound,
	lcproto.CodeExists:     ErrExists,
	lcproto.CodeInvalid:    ErrInvalid,
	lcproto.CodeNotRunning: ErrNotRunning,
	lcproto.CodeTimeout:    ErrExecTimeout,
}

// errorResponse encodes err for the wire, keeping its sentinel.
func errorResponse(err error) *response {
	r := &response{Error: err.Error()}
	for code, sentinel := range errCodes {
		if errors.Is(err, sentinel) {
			r.Code = code
			break
		}
	}
	return r
}

// err decodes the error of a response, wrapping its sentinel.
func (r *response) err() error {
	if r.Error == "" {
		return nil
	}
	if s, ok := errCodes[r.Code]; ok {
		return &wireError{msg: r.Error, sentinel: s}
	}
	return errors.New(r.Error)
}

type wireError struct {
	msg      string
	sentinel error
}

func (e *wireError) Error() string { return e.msg }
func (e *wireError) Unwrap() error { return e.sentinel }

func writeFrame(w io.Writer, kind byte, p []byte) error {
	var hdr [5]byte
	hdr[0] = kind
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(p)))
	if len(p) < 4096 {
		// One write keeps small frames whole for the reader.
		buf := make([]byte, 0, 5+len(p))
		buf = append(append(buf, hdr[:]...), p...)
		_, err := w.Write(buf)
		return err
	}
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	_, err := w.Write(p)
	return err
}

func readFrame(r io.Reader) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > maxFrameBytes {
		return 0, nil, fmt.Errorf("shim protocol: frame of %d bytes", n)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return 0, nil, err
	}
	return hdr[0], p, nil
}

func writeJSON(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return writeFrame(w, frameJSON, b)
}

func readJSON(r io.Reader, v any) error {
	kind, p, err := readFrame(r)
	if err != nil {
		return err
	}
	if kind != frameJSON {
		return fmt.Errorf("shim protocol: frame %q where JSON was expected", kind)
	}
	return json.Unmarshal(p, v)
}

// maxSocketPath leaves room under the 108 bytes of sockaddr_un.sun_path.
const maxSocketPath = 100

// socketAddr returns an address for the socket in dir. A path too long for
// sockaddr_un is reached through an O_PATH descriptor of dir
// (/proc/self/fd/N/shim.sock); close the returned file once the socket is
// bound or connected.
func socketAddr(dir string) (string, *os.File, error) {
	p := filepath.Join(dir, socketName)
	if len(p) <= maxSocketPath {
		return p, nil, nil
	}
	f, err := os.OpenFile(dir, os.O_RDONLY|0o10000000 /* O_PATH */, 0)
	if err != nil {
		return "", nil, err
	}
	return "/proc/self/fd/" + strconv.Itoa(int(f.Fd())) + "/" + socketName, f, nil
}

func listenSocket(dir string) (*net.UnixListener, error) {
	addr, hold, err := socketAddr(dir)
	if err != nil {
		return nil, err
	}
	if hold != nil {
		defer hold.Close()
	}
	_ = os.Remove(filepath.Join(dir, socketName))
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: addr, Net: "unix"})
	if err != nil {
		return nil, err
	}
	// The path may be a /proc alias: never let the listener unlink it.
	l.SetUnlinkOnClose(false)
	return l, nil
}
