package shim

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCopyLinesWritesCRIRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "c.log")
	l, err := openCRILog(path)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 1, 2, 3, 4, 5, 600, time.UTC)
	l.now = func() time.Time { return at }
	long := strings.Repeat("y", 2*maxLogLineBytes+10)
	in := "one\r\ntwo\n\n" + long + "\nlast without newline"
	copyLines(strings.NewReader(in), streamStderr, l)
	l.close()

	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ts := "2026-01-02T03:04:05.0000006Z"
	want := []string{
		ts + " stderr F one",
		ts + " stderr F two",
		ts + " stderr F ",
		ts + " stderr P " + long[:maxLogLineBytes],
		ts + " stderr P " + long[maxLogLineBytes:2*maxLogLineBytes],
		ts + " stderr F " + long[2*maxLogLineBytes:],
		ts + " stderr F last without newline",
	}
	got := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(got) != len(want) {
		t.Fatalf("got %d records, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("record %d = %.60q..., want %.60q...", i, got[i], want[i])
		}
	}
}

func TestLogWithoutPathDiscards(t *testing.T) {
	l, err := openCRILog("")
	if err != nil {
		t.Fatal(err)
	}
	copyLines(strings.NewReader("dropped\n"), streamStdout, l)
	if err := l.reopen(); err != nil {
		t.Fatal(err)
	}
}

func TestReopenStartsANewFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.log")
	l, err := openCRILog(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	l.write(streamStdout, tagFull, []byte("before"))
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	l.write(streamStdout, tagFull, []byte("still old"))
	if err := l.reopen(); err != nil {
		t.Fatal(err)
	}
	l.write(streamStdout, tagFull, []byte("after"))
	old, _ := os.ReadFile(path + ".1")
	fresh, _ := os.ReadFile(path)
	if !strings.Contains(string(old), "still old") || strings.Contains(string(old), "after") {
		t.Errorf("rotated file: %q", old)
	}
	if !strings.HasSuffix(string(fresh), " stdout F after\n") || strings.Count(string(fresh), "\n") != 1 {
		t.Errorf("new file: %q", fresh)
	}
}

func BenchmarkCopyLines(b *testing.B) {
	l, err := openCRILog(filepath.Join(b.TempDir(), "c.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer l.close()
	var in strings.Builder
	for i := range 1000 {
		fmt.Fprintf(&in, "line %d of some typical length for a log message\n", i)
	}
	s := in.String()
	b.SetBytes(int64(len(s)))
	for b.Loop() {
		copyLines(strings.NewReader(s), streamStdout, l)
	}
}
