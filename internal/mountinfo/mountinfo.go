// Package mountinfo reads fields of /proc/<pid>/mountinfo.
package mountinfo

import (
	"strconv"
	"strings"
)

// Unescape undoes the octal escapes mountinfo writes in paths and options
// (\040 for a space, \011 for a tab, \012 for a newline, \134 for a
// backslash).
func Unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Mount is one line of mountinfo, the fields peapod reads.
type Mount struct {
	MajMin       string // device number, "major:minor"
	MountPoint   string // unescaped
	FSType       string
	Source       string
	SuperOptions string
}

// Parse reads the lines of a mountinfo file ("id parent maj:min root
// mountpoint opts [optional...] - fstype source superopts"), skipping
// those it cannot read, in the file's order (a later mount at the same
// point is on top).
func Parse(data []byte) []Mount {
	var out []Mount
	for line := range strings.SplitSeq(string(data), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 3 {
			continue
		}
		out = append(out, Mount{MajMin: f[2], MountPoint: Unescape(f[4]), FSType: g[0], Source: g[1], SuperOptions: g[2]})
	}
	return out
}
