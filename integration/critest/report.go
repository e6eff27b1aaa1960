package main

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"
)

// The parts of ginkgo v2's JSON report (--ginkgo.json-report) read here.
type ginkgoReport struct {
	SuiteDescription string
	SuiteSucceeded   bool
	RunTime          time.Duration
	SpecReports      []specReport
}

type specReport struct {
	ContainerHierarchyTexts []string
	LeafNodeType            string
	LeafNodeText            string
	State                   string
	RunTime                 time.Duration
	Failure                 struct {
		Message  string
		Location struct {
			FileName   string
			LineNumber int
		}
		FailureNodeType string
	}
}

func (s specReport) text() string {
	return strings.TrimSpace(strings.Join(append(append([]string(nil), s.ContainerHierarchyTexts...), s.LeafNodeText), " "))
}

func (s specReport) title() string {
	t := s.LeafNodeText
	if len(s.ContainerHierarchyTexts) > 0 {
		t = "[" + strings.Join(s.ContainerHierarchyTexts, " / ") + "] " + t
	}
	if t == "" {
		t = s.LeafNodeType
	}
	return t
}

// filter is a --ginkgo.skip given by the harness, with the reason shown for
// the specs it leaves out.
type filter struct {
	re     *regexp.Regexp
	reason string
	own    bool // a spec of the suite left out here rather than by critest
}

type summary struct {
	ran, passed, failed, skipped, pending int
	failures                              []string
	skips                                 map[string][]string // reason → specs
	filtered                              map[string][]string // reason → specs
	suiteProblems                         []string
	elapsed                               time.Duration
}

func summarize(reportPath string, filters []filter, focus string) (*summary, error) {
	b, err := os.ReadFile(reportPath)
	if err != nil {
		return nil, err
	}
	var reports []ginkgoReport
	if err := json.Unmarshal(b, &reports); err != nil {
		return nil, fmt.Errorf("%s: %w", reportPath, err)
	}
	var focusRe *regexp.Regexp
	if focus != "" {
		focusRe, _ = regexp.Compile(focus)
	}
	s := &summary{skips: map[string][]string{}, filtered: map[string][]string{}}
	for _, r := range reports {
		s.elapsed += r.RunTime
		for _, sp := range r.SpecReports {
			failedState := sp.State == "failed" || sp.State == "timedout" || sp.State == "panicked" ||
				sp.State == "aborted" || sp.State == "interrupted"
			if sp.LeafNodeType != "It" {
				// BeforeSuite and the like: only their failures matter.
				if failedState {
					s.suiteProblems = append(s.suiteProblems, fmt.Sprintf("%s %s: %s", sp.LeafNodeType, sp.State, firstLine(sp.Failure.Message)))
				}
				continue
			}
			switch {
			case sp.State == "passed":
				s.ran++
				s.passed++
			case failedState:
				s.ran++
				s.failed++
				loc := ""
				if sp.Failure.Location.FileName != "" {
					loc = fmt.Sprintf(" (%s:%d)", shortPath(sp.Failure.Location.FileName), sp.Failure.Location.LineNumber)
				}
				s.failures = append(s.failures, fmt.Sprintf("%s\n      %s%s: %s", sp.title(), sp.State, loc, failureText(sp.Failure.Message)))
			case sp.State == "pending":
				s.pending++
			case sp.State == "skipped" && sp.Failure.Message != "":
				// Skip() from the spec itself: it ran and decided so.
				s.ran++
				s.skipped++
				reason := firstLine(sp.Failure.Message)
				s.skips[reason] = append(s.skips[reason], sp.title())
			case sp.State == "skipped":
				reason := "not selected by --ginkgo.focus " + focus
				if focusRe == nil || focusRe.MatchString(sp.text()) {
					reason = "left out by a --ginkgo.skip"
				}
				for _, f := range filters {
					if f.re.MatchString(sp.text()) {
						reason = f.reason
						break
					}
				}
				s.filtered[reason] = append(s.filtered[reason], sp.title())
			}
		}
	}
	return s, nil
}

func (s *summary) ok() bool { return s.failed == 0 && len(s.suiteProblems) == 0 && s.ran > 0 }

func (s *summary) write(w *strings.Builder, filters []filter) {
	nf := 0
	for _, v := range s.filtered {
		nf += len(v)
	}
	fmt.Fprintf(w, "critest: %d specs, suite time %s\n", s.ran+s.pending+nf, s.elapsed.Round(time.Second))
	fmt.Fprintf(w, "  passed  %4d\n  failed  %4d\n  skipped %4d  (by the spec itself at run time; reasons below)\n  not run %4d  (left out by a filter; below)\n",
		s.passed, s.failed, s.skipped, nf)
	if s.pending > 0 {
		fmt.Fprintf(w, "  pending %4d\n", s.pending)
	}
	for _, p := range s.suiteProblems {
		fmt.Fprintf(w, "SUITE PROBLEM: %s\n", p)
	}
	if len(s.failures) > 0 {
		sort.Strings(s.failures)
		fmt.Fprintf(w, "\nFAILED (%d):\n", len(s.failures))
		for _, f := range s.failures {
			fmt.Fprintf(w, "  - %s\n", f)
		}
	}
	if s.skipped > 0 {
		fmt.Fprintf(w, "\nSKIPPED by the spec itself (%d), by reason:\n", s.skipped)
		for _, reason := range sortedKeys(s.skips) {
			fmt.Fprintf(w, "  %s\n", reason)
			for _, t := range sorted(s.skips[reason]) {
				fmt.Fprintf(w, "    - %s\n", t)
			}
		}
	}
	// The suite's own specs the harness leaves out come first and one by one.
	for _, f := range filters {
		if !f.own || len(s.filtered[f.reason]) == 0 {
			continue
		}
		fmt.Fprintf(w, "\nNOT RUN (%d): %s\n", len(s.filtered[f.reason]), f.reason)
		for _, t := range sorted(s.filtered[f.reason]) {
			fmt.Fprintf(w, "  - %s\n", t)
		}
	}
	for _, reason := range sortedKeys(s.filtered) {
		own := false
		for _, f := range filters {
			own = own || (f.own && f.reason == reason)
		}
		if own {
			continue
		}
		fmt.Fprintf(w, "\nNOT RUN (%d): %s\n", len(s.filtered[reason]), reason)
		for _, t := range sorted(s.filtered[reason]) {
			fmt.Fprintf(w, "  - %s\n", t)
		}
	}
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i] + " …"
	}
	return clip(s, 300)
}

// failureText makes one line of a gomega failure: its first lines up to a
// dump, without pointer noise, and the gRPC error when there is one.
func failureText(msg string) string {
	var parts []string
	for i, l := range strings.Split(strings.TrimSpace(msg), "\n") {
		l = strings.TrimSpace(l)
		if i >= 6 || l == "{" || strings.HasPrefix(l, "s: {") {
			break
		}
		if l == "" || (strings.HasPrefix(l, "<*") && strings.HasSuffix(l, ":")) {
			continue
		}
		parts = append(parts, l)
	}
	return clip(strings.Join(strings.Fields(strings.Join(parts, " ")), " "), 400)
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + " …"
	}
	return s
}

func shortPath(p string) string {
	if i := strings.Index(p, "sigs.k8s.io/cri-tools@"); i >= 0 {
		return p[i:]
	}
	return p
}

func sorted(v []string) []string {
	out := append([]string(nil), v...)
	sort.Strings(out)
	return out
}

func sortedKeys(m map[string][]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
