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
