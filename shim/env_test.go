package shim

import (
	"slices"
	"testing"
)

func TestShimEnv(t *testing.T) {
	cases := []struct {
		name    string
		in, out []string
	}{
		{"defaults added, daemon-only variables dropped",
			[]string{"PATH=/bin", "NOTIFY_SOCKET=/run/n", "LISTEN_FDS=1", "LISTEN_PID=7", "LISTEN_FDNAMES=x"},
			[]string{"PATH=/bin", "GOMAXPROCS=1", "GODEBUG=disablethp=1"}},
		{"the operator's GOMAXPROCS and GODEBUG kept, disablethp added",
			[]string{"GOMAXPROCS=4", "GODEBUG=gctrace=1"},
			[]string{"GOMAXPROCS=4", "GODEBUG=gctrace=1,disablethp=1"}},
		{"the operator's disablethp wins",
			[]string{"GODEBUG=disablethp=0,gctrace=1"},
			[]string{"GODEBUG=disablethp=0,gctrace=1", "GOMAXPROCS=1"}},
		{"a trailing comma",
			[]string{"GODEBUG=gctrace=1,"},
			[]string{"GODEBUG=gctrace=1,disablethp=1", "GOMAXPROCS=1"}},
		{"empty GODEBUG",
			[]string{"GODEBUG="},
			[]string{"GODEBUG=disablethp=1", "GOMAXPROCS=1"}},
	}
	for _, c := range cases {
		if got := shimEnv(c.in); !slices.Equal(got, c.out) {
			t.Errorf("%s: shimEnv(%q) = %q, want %q", c.name, c.in, got, c.out)
		}
	}
}
