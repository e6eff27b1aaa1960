package rootless

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeSubIDFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "subuid")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParseSubIDs(t *testing.T) {
	in := `# comment
alice:100000:65536

  # indented comment
1001:165536:65536
bad line
bob:x:65536
carol:300000:0
dave:400000:10:extra
:500000:10
eve:600000:4294967296
alice:231072:1000
`
	got, err := ParseSubIDs(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []SubIDRange{
		{"alice", 100000, 65536},
		{"1001", 165536, 65536},
		{"alice", 231072, 1000},
	}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("range %d: got %v, want %v", i, got[i], want[i])
		}
	}
}

func TestSubIDs(t *testing.T) {
	file := writeSubIDFile(t, `# several users, names and uids
root:10000:5
alice:100000:1000
1001:200000:65536
alice:300000:70000
bob:400000:2000
bob:500000:3000
`)
	for _, c := range []struct {
		name         string
		uid          int
		start, count int
		noRange      bool
	}{
		// The first range large enough, even when a smaller one comes first.
		{"alice", 1000, 300000, 70000, false},
		// Named by uid only.
		{"carl", 1001, 200000, 65536, false},
		// Only short ranges: the largest one, the caller sees the count.
		{"bob", 1002, 500000, 3000, false},
		// A user with no line.
		{"nobody", 65534, 0, 0, true},
		// A prefix of another user's name does not match.
		{"alic", 100, 0, 0, true},
	} {
		start, count, err := SubIDs(file, c.name, c.uid)
		if c.noRange {
			if !errors.Is(err, ErrNoSubIDs) {
				t.Errorf("%s: got %d,%d,%v; want ErrNoSubIDs", c.name, start, count, err)
			}
			continue
		}
		if err != nil || start != c.start || count != c.count {
			t.Errorf("%s/%d: got %d,%d,%v; want %d,%d", c.name, c.uid, start, count, err, c.start, c.count)
		}
	}
	if _, _, err := SubIDs(filepath.Join(t.TempDir(), "missing"), "alice", 1000); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: got %v, want ErrNotExist", err)
	}
}

func TestFreeSubIDRange(t *testing.T) {
	for _, c := range []struct {
		lists [][]SubIDRange
		want  int
	}{
		{nil, 100000},
		{[][]SubIDRange{{{"a", 100000, 65536}}}, 165536},
		// Overlap in the second file only still moves the range.
		{[][]SubIDRange{{{"a", 100000, 65536}}, {{"a", 100000, 65536}, {"b", 165536, 10}}}, 231072},
		// Ranges below 100000 are not in the way; a range past a gap
		// leaves the gap free.
		{[][]SubIDRange{{{"a", 1000, 5000}, {"b", 300000, 65536}}}, 100000},
		// Unaligned range: the next aligned slot after it.
		{[][]SubIDRange{{{"a", 120000, 10}}}, 165536},
		// Found after several moves, in any order.
		{[][]SubIDRange{{{"c", 231072, 65536}, {"b", 165536, 65536}, {"a", 100000, 65536}}}, 296608},
	} {
		if got := FreeSubIDRange(65536, c.lists...); got != c.want {
			t.Errorf("%v: got %d, want %d", c.lists, got, c.want)
		}
	}
}
