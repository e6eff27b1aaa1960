package sandbox

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func testID(c byte) string { return strings.Repeat(string(c), 64) }

func TestStoreRoundTrip(t *testing.T) {
	s := store{dir: t.TempDir()}
	rec := &Sandbox{ID: testID('a'), State: StateReady, CreatedAt: time.Unix(0, 12345), Spec: Spec{Name: "web", Labels: map[string]string{"a": "b"}}}
	if err := s.save(rec); err != nil {
		t.Fatal(err)
	}
	recs, ids, err := s.loadAll()
	if err != nil || len(recs) != 1 || len(ids) != 1 {
		t.Fatalf("loadAll: %v %v %v", recs, ids, err)
	}
	if recs[0].Spec.Labels["a"] != "b" || !recs[0].CreatedAt.Equal(rec.CreatedAt) {
		t.Errorf("round trip changed the record: %+v", recs[0])
	}
	if err := s.remove(rec.ID); err != nil {
		t.Fatal(err)
	}
	if recs, ids, _ := s.loadAll(); len(recs)+len(ids) != 0 {
		t.Errorf("record survived removal")
	}
}

func TestStoreSkipsTornAndForeignEntries(t *testing.T) {
	dir := t.TempDir()
	s := store{dir: dir}
	good := &Sandbox{ID: testID('b'), State: StateReady}
	if err := s.save(good); err != nil {
		t.Fatal(err)
	}
	// A crash mid-write leaves only a temp file; a crash before the first
	// save leaves an empty dir; junk names are not sandboxes.
	torn := filepath.Join(dir, testID('c'))
	_ = os.MkdirAll(torn, 0o700)
	_ = os.WriteFile(filepath.Join(torn, ".sandbox.json.tmp-1"), []byte(`{"id":`), 0o600)
	_ = os.MkdirAll(filepath.Join(dir, "not-a-sandbox"), 0o700)
	_ = os.WriteFile(filepath.Join(dir, testID('d')), []byte("file"), 0o600)
	recs, ids, err := s.loadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].ID != good.ID {
		t.Errorf("records: %+v", recs)
	}
	if strings.Join(ids, ",") != good.ID+","+testID('c') {
		t.Errorf("ids: %v (the torn one must be reported so recovery can clean it)", ids)
	}
}

// TestStoreWritesAreAtomic reads the record continuously while it is being
// rewritten: every read must parse as one whole record.
func TestStoreWritesAreAtomic(t *testing.T) {
	s := store{dir: t.TempDir()}
	rec := &Sandbox{ID: testID('e'), Spec: Spec{Annotations: map[string]string{"big": strings.Repeat("x", 64<<10)}}}
	if err := s.save(rec); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			rec.Reason = strings.Repeat("r", i%100)
			if err := s.save(rec); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	deadline := time.Now().Add(500 * time.Millisecond)
	reads := 0
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(s.path(rec.ID))
		if err != nil {
			t.Fatal(err)
		}
		var got Sandbox
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("torn read after %d reads: %v", reads, err)
		}
		reads++
	}
	close(stop)
	wg.Wait()
	if reads < 10 {
		t.Errorf("only %d reads", reads)
	}
	left, _ := filepath.Glob(filepath.Join(s.dir, rec.ID, ".*tmp*"))
	if len(left) != 0 {
		t.Errorf("temp files left: %v", left)
	}
}

func TestResolvConfFromDNSConfig(t *testing.T) {
	b, err := resolvConfContent(&DNSConfig{Servers: []string{"10.0.0.10", "10.0.0.11"}, Searches: []string{"a.svc", "svc"}, Options: []string{"ndots:5"}})
	if err != nil {
		t.Fatal(err)
	}
	want := "nameserver 10.0.0.10\nnameserver 10.0.0.11\nsearch a.svc svc\noptions ndots:5\n"
	if string(b) != want {
		t.Errorf("got %q, want %q", b, want)
	}
}

func TestResolvConfFallsBackToHost(t *testing.T) {
	host := filepath.Join(t.TempDir(), "resolv.conf")
	_ = os.WriteFile(host, []byte("nameserver 192.0.2.53\n"), 0o644)
	old := hostResolvConf
	hostResolvConf = host
	defer func() { hostResolvConf = old }()
	for _, dns := range []*DNSConfig{nil, {}} {
		b, err := resolvConfContent(dns)
		if err != nil || string(b) != "nameserver 192.0.2.53\n" {
			t.Errorf("dns %+v: got %q %v", dns, b, err)
		}
	}
}

func TestSysctlPath(t *testing.T) {
	cases := map[string]string{
		"net.ipv4.ip_forward":               "/proc/sys/net/ipv4/ip_forward",
		"net/ipv4/conf/eth0.100/forwarding": "/proc/sys/net/ipv4/conf/eth0.100/forwarding",
		"kernel.shm_rmid_forced":            "/proc/sys/kernel/shm_rmid_forced",
	}
	for in, want := range cases {
		if got := sysctlPath(in); got != want {
			t.Errorf("%s: %s, want %s", in, got, want)
		}
	}
}

func TestSpecKeyDistinguishesAttempts(t *testing.T) {
	a := Spec{Name: "n", Namespace: "ns", UID: "u", Attempt: 0}
	b := a
	b.Attempt = 1
	c := Spec{Name: "ns", Namespace: "n", UID: "u"}
	if a.key() == b.key() || a.key() == c.key() {
		t.Errorf("keys collide: %q %q %q", a.key(), b.key(), c.key())
	}
}
