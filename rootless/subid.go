package rootless

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// SubIDRange is one line of /etc/subuid or /etc/subgid: Owner (a user name
// or a numeric uid) may use the ids Start..Start+Count-1.
type SubIDRange struct {
	Owner string
	Start int
	Count int
}

// enoughSubIDs is how many ids a range needs: SubIDCount, the size of the
// namespaces' map (kept here too so that this file stands alone).
const enoughSubIDs = 65536

// ErrNoSubIDs is wrapped by SubIDs when the file has no range for the user.
var ErrNoSubIDs = errors.New("no subordinate id range")

// ParseSubIDs reads the lines of a subuid or subgid file. The format is
// shadow-utils': "owner:start:count" per line, owner a name or a numeric
// uid, several lines per owner allowed; blank lines and lines starting with
// '#' are comments. Lines that do not parse are skipped, as newuidmap does.
func ParseSubIDs(r io.Reader) ([]SubIDRange, error) {
	var out []SubIDRange
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, ":")
		if len(f) != 3 || f[0] == "" {
			continue
		}
		start, err1 := strconv.ParseUint(f[1], 10, 32)
		count, err2 := strconv.ParseUint(f[2], 10, 32)
		if err1 != nil || err2 != nil || count == 0 {
			continue
		}
		out = append(out, SubIDRange{Owner: f[0], Start: int(start), Count: int(count)})
	}
	return out, sc.Err()
}

// UserRanges are the ranges in ranges that belong to the user, named by
// name or by uid, in file order.
func UserRanges(ranges []SubIDRange, name string, uid int) []SubIDRange {
	var out []SubIDRange
	for _, r := range ranges {
		if (name != "" && r.Owner == name) || (uid >= 0 && r.Owner == strconv.Itoa(uid)) {
			out = append(out, r)
		}
	}
	return out
}

// SubIDs is the user's subordinate range in file (/etc/subuid or
// /etc/subgid), the user named by name or by uid: the first range that
// holds 65536 ids (SubIDCount), or else the largest one (count then tells the
// caller it is short). An error wraps ErrNoSubIDs when the user has no
// range, or the file's own error (os.ErrNotExist when there is no file).
func SubIDs(file, name string, uid int) (start, count int, err error) {
	f, err := os.Open(file)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	ranges, err := ParseSubIDs(f)
	if err != nil {
		return 0, 0, fmt.Errorf("read %s: %w", file, err)
	}
	mine := UserRanges(ranges, name, uid)
	if len(mine) == 0 {
		return 0, 0, fmt.Errorf("%s: %w for user %s (uid %d)", file, ErrNoSubIDs, name, uid)
	}
	best := mine[0]
	for _, r := range mine {
		if r.Count >= enoughSubIDs {
			return r.Start, r.Count, nil
		}
		if r.Count > best.Count {
			best = r
		}
	}
	return best.Start, best.Count, nil
}

// FreeSubIDRange proposes the start of count ids that no range in any of
// the lists overlaps, at or above 100000 (where shadow-utils starts) and
// aligned to 65536, for a `usermod --add-subuids` line.
func FreeSubIDRange(count int, lists ...[]SubIDRange) int {
	const first, align = 100000, 65536
	start := first
	for {
		moved := false
		for _, l := range lists {
			for _, r := range l {
				if r.Start < start+count && start < r.Start+r.Count {
					// Next aligned slot past this range (100000 + k*65536).
					end := r.Start + r.Count
					start = first + ((end-first+align-1)/align)*align
					moved = true
				}
			}
		}
		if !moved {
			return start
		}
	}
}
