package main

import "testing"

func TestJournallessExt4(t *testing.T) {
	// The root's source is an alias, as on many hosts: the device is found
	// by its number.
	mounts := []byte(`1 0 254:0 / / rw,relatime - ext4 /dev/root rw
22 1 0:21 / /proc rw,relatime - proc proc rw
30 1 0:30 / /run rw,nosuid,nodev,noexec - tmpfs tmpfs rw,mode=755
31 1 254:16 / /var/lib rw,relatime - ext4 /dev/vdb1 rw
32 1 254:32 / /srv/with\040space rw,relatime - ext4 /dev/vdc rw
33 1 254:48 / /opt rw,relatime - ext4 /dev/vdd rw
`)
	names := map[string]string{"254:0": "vda", "254:16": "vdb1", "254:32": "vdc"}
	devName := func(majMin string) string { return names[majMin] }
	cases := []struct {
		dir      string
		journals []string
		want     string
	}{
		{"/var/lib/peapod", nil, "/dev/vdb1"},
		{"/var/lib/peapod", []string{"vdb1-8"}, ""},
		{"/var/lib", nil, "/dev/vdb1"},
		{"/var/library", []string{"vdb1-8"}, "/dev/root"}, // not under /var/lib: the root's
		{"/run/peapod", nil, ""},                          // tmpfs
		{"/tmp/x", []string{"vda-8"}, ""},
		{"/srv/with space/peapod", nil, "/dev/vdc"},
		{"/proc/x", nil, ""},
		{"/opt/unknown-device", nil, ""}, // on 254:48, which no name resolves: no note
	}
	for _, c := range cases {
		got, ok := journallessExt4(c.dir, mounts, c.journals, devName)
		if ok != (c.want != "") || got != c.want {
			t.Errorf("journallessExt4(%s, journals %v) = %q, %v; want %q", c.dir, c.journals, got, ok, c.want)
		}
	}
}
