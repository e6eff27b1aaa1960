package mountinfo

import "testing"

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		`/plain`:             "/plain",
		`/a\040b`:            "/a b",
		`/tab\011x\012y`:     "/tab\tx\ny",
		`/back\134slash`:     `/back\slash`,
		`/not\99escape`:      `/not\99escape`,
		`/short\04`:          `/short\04`,
		`/x\040y\040\040end`: "/x y  end",
	} {
		if got := Unescape(in); got != want {
			t.Errorf("Unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParse(t *testing.T) {
	data := []byte(`22 27 0:21 / /proc rw,relatime - proc proc rw
31 1 254:16 / /var/lib rw,relatime shared:1 master:2 - ext4 /dev/vdb1 rw
32 1 254:32 / /srv/with\040space rw - ext4 /dev/vdc rw,errors=remount-ro
a line without a separator
33 1 0:40 / /short - tmpfs
`)
	got := Parse(data)
	want := []Mount{
		{MajMin: "0:21", MountPoint: "/proc", FSType: "proc", Source: "proc", SuperOptions: "rw"},
		{MajMin: "254:16", MountPoint: "/var/lib", FSType: "ext4", Source: "/dev/vdb1", SuperOptions: "rw"},
		{MajMin: "254:32", MountPoint: "/srv/with space", FSType: "ext4", Source: "/dev/vdc", SuperOptions: "rw,errors=remount-ro"},
	}
	if len(got) != len(want) {
		t.Fatalf("Parse = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}
