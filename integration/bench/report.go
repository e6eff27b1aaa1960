package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// table is a plain text table: a header row, rows, columns padded to fit.
type table struct {
	title  string
	header []string
	rows   [][]string
	notes  []string
}

func (t *table) add(cells ...string) { t.rows = append(t.rows, cells) }

func (t *table) write(w io.Writer) {
	if t.title != "" {
		fmt.Fprintf(w, "\n%s\n", t.title)
	}
	all := append([][]string{t.header}, t.rows...)
	widths := map[int]int{}
	for _, r := range all {
		for i, c := range r {
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	line := func(r []string) {
		var b strings.Builder
		for i, c := range r {
			if i > 0 {
				b.WriteString("  ")
			}
			b.WriteString(c)
			if i < len(r)-1 {
				b.WriteString(strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c)))
			}
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
	if len(t.header) > 0 {
		line(t.header)
		var rule []string
		for i := range t.header {
			rule = append(rule, strings.Repeat("─", widths[i]))
		}
		line(rule)
	}
	for _, r := range t.rows {
		line(r)
	}
	for _, n := range t.notes {
		fmt.Fprintf(w, "  %s\n", n)
	}
}

// percentile is the nearest-rank percentile p (0..100) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return s[min(max(rank, 1), len(s))-1]
}

func fmtDur(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	switch {
	case ms >= 99.95:
		return fmt.Sprintf("%.0f ms", ms)
	case ms >= 9.995:
		return fmt.Sprintf("%.1f ms", ms)
	default:
		return fmt.Sprintf("%.2f ms", ms)
	}
}

func fmtKB(kb float64) string {
	if kb >= 1024 {
		return fmt.Sprintf("%.2f MiB", kb/1024)
	}
	return fmt.Sprintf("%.0f KiB", kb)
}

func fmtBytes(b int64) string {
	if b <= 0 {
		return "?"
	}
	return fmt.Sprintf("%.2f MiB (%d B)", float64(b)/(1<<20), b)
}

// fmtRatio prints peapod/containerd as a factor and, when below 1, as 1/n.
func fmtRatio(pp, ctd float64) string {
	if ctd <= 0 || pp <= 0 {
		return "–"
	}
	r := pp / ctd
	if r < 1 {
		return fmt.Sprintf("%.3f (1/%.1f)", r, 1/r)
	}
	return fmt.Sprintf("%.2f", r)
}

// fmtTarget checks "ratio ≤ limit" and says so with ✓ or ✗.
func fmtTarget(pp, ctd, limit float64, limitText string) string {
	if ctd <= 0 || pp <= 0 {
		return "≤ " + limitText + " (not measured)"
	}
	mark := "✗"
	if pp/ctd <= limit {
		mark = "✓"
	}
	return fmt.Sprintf("≤ %s %s", limitText, mark)
}

// report is everything measured in one run.
type report struct {
	started         time.Time
	loadAvg         string // 1, 5 and 15 minutes: other work on the host skews the figures
	peapod          *runtimeReport
	containerd      *runtimeReport
	shaping         *shapingResult
	cniFloor        *cniFloor
	shapingAccuracy *table
	paired          *pairedResult // paired.go
	notes           []string
	fs              string // the file system the runtimes' files were on
}

type runtimeReport struct {
	version    string
	life       *lifecycle
	pauseBytes int64
	pauseFrom  string
	containers *containerResult // containers.go
}

func (r *runtimeReport) durations(rpc string) []time.Duration {
	if r == nil || r.life == nil {
		return nil
	}
	switch rpc {
	case "RunPodSandbox":
		return r.life.run
	case "StopPodSandbox":
		return r.life.stop
	}
	return r.life.remove
}

func (r *runtimeReport) mem() *podMemory {
	if r == nil || r.life == nil {
		return nil
	}
	return r.life.mem
}

func (rep *report) write(w io.Writer, opts options) {
	fmt.Fprintf(w, "peapod bench — %s, Linux %s, %d CPUs, load average %s at start\n", rep.started.Format("2006-01-02 15:04"), kernelRelease(), numCPU(), rep.loadAvg)
	for _, rt := range []struct {
		name string
		r    *runtimeReport
		net  string
	}{
		{"peapod", rep.peapod, fmt.Sprintf("embedded default network %s, %s", peapodNetwork, peapodSubnet)},
		{"containerd", rep.containerd, fmt.Sprintf("CNI conflist %s, %s, pause image built from pause.bin", containerdNetwork, containerdSubnet)},
	} {
		if rt.r != nil {
			fmt.Fprintf(w, "  %-11s %s (private instance; %s)\n", rt.name+":", rt.r.version, rt.net)
		}
	}
	fmt.Fprintf(w, "  network:    CNI bridge + host-local, portmap, loopback from bin/cni; identical PodSandboxConfig (linux: {})\n")
	if rep.fs != "" {
		fmt.Fprintf(w, "  files:      %s\n", rep.fs)
	}
	fmt.Fprintf(w, "  %d pods one at a time after a warm-up pod: all run, then all stopped, then all removed; memory with %d running\n", opts.pods, opts.running)

	main := &table{header: []string{"", "peapod", "containerd", "peapod/containerd", "target"}}
	for _, rpc := range []string{"RunPodSandbox", "StopPodSandbox", "RemovePodSandbox"} {
		pp, ctd := rep.peapod.durations(rpc), rep.containerd.durations(rpc)
		for _, p := range []float64{50, 95} {
			a, b := percentile(pp, p), percentile(ctd, p)
			target := ""
			if rpc == "RunPodSandbox" && p == 50 {
				target = fmtTarget(float64(a), float64(b), 0.25, "1/4")
			}
			main.add(fmt.Sprintf("%s p%.0f", rpc, p), durCell(pp, a), durCell(ctd, b), fmtRatio(float64(a), float64(b)), target)
		}
	}
	ppm, ctdm := rep.peapod.mem(), rep.containerd.mem()
	if ppm != nil || ctdm != nil {
		main.add("per-pod processes", memCell(ppm, (*podMemory).composition), memCell(ctdm, (*podMemory).composition), "", "")
		main.add(fmt.Sprintf("per-pod RSS (mean of %d)", opts.running), memKB(ppm, (*podMemory).meanRSS), memKB(ctdm, (*podMemory).meanRSS), fmtRatio(memVal(ppm, (*podMemory).meanRSS), memVal(ctdm, (*podMemory).meanRSS)), "")
		main.add(fmt.Sprintf("per-pod PSS (mean of %d)", opts.running), memKB(ppm, (*podMemory).meanPSS), memKB(ctdm, (*podMemory).meanPSS), fmtRatio(memVal(ppm, (*podMemory).meanPSS), memVal(ctdm, (*podMemory).meanPSS)),
			fmtTarget(memVal(ppm, (*podMemory).meanPSS), memVal(ctdm, (*podMemory).meanPSS), 0.5, "1/2"))
		for _, k := range kindsOf(ppm, ctdm) {
			main.add("  PSS of "+k+", per pod", kindCell(ppm, k), kindCell(ctdm, k), "", "")
		}
		main.add(fmt.Sprintf("daemon RSS / PSS, %d pods up", opts.running), daemonCell(ppm), daemonCell(ctdm), "", "(not per pod)")
	}
	main.add("pause binary", pauseCell(rep.peapod), pauseCell(rep.containerd), "", "")
	main.notes = append(main.notes,
		"RSS/PSS: /proc/<pid>/smaps_rollup summed over a pod's processes; PSS splits each shared page among the processes",
		"mapping it, so the text of a binary that all pods run counts 1/"+fmt.Sprint(opts.running)+" per pod. Per-pod processes: the pause (verbose",
		"status `pid`), anything in the pod's cgroup, the pause's parent if it is not the daemon (a shim), and for containerd",
		"the containerd-shim-runc-v2 started with `-id <sandbox>`.")
	for _, rt := range []struct {
		name string
		r    *runtimeReport
	}{{"peapod", rep.peapod}, {"containerd", rep.containerd}} {
		if rt.r != nil && rt.r.pauseFrom != "" {
			main.notes = append(main.notes, fmt.Sprintf("pause binary of %s: %s", rt.name, rt.r.pauseFrom))
		}
	}
	main.write(w)
	writeContainers(w, rep, opts)
	writePaired(w, rep.paired)
	writeStats(w)

	if f := rep.cniFloor; f != nil {
		ft := &table{
			title:  fmt.Sprintf("The CNI plugins alone (same chain: loopback, bridge + host-local, portmap; libcni into %d fresh netns)", len(f.add)),
			header: []string{"", "p50", "p95"},
		}
		ft.add("CNI ADD", fmtDur(percentile(f.add, 50)), fmtDur(percentile(f.add, 95)))
		ft.add("CNI DEL", fmtDur(percentile(f.del, 50)), fmtDur(percentile(f.del, 95)))
		floor := percentile(f.add, 50)
		for _, rt := range []struct {
			name string
			r    *runtimeReport
		}{{"peapod", rep.peapod}, {"containerd", rep.containerd}} {
			if run := rt.r.durations("RunPodSandbox"); len(run) > 0 {
				p50 := percentile(run, 50)
				ft.add(rt.name+" RunPodSandbox p50 beyond CNI ADD", fmtDur(p50-floor), fmt.Sprintf("(%.0f%% of its p50 is CNI)", 100*float64(floor)/float64(p50)))
			}
		}
		if run := rep.containerd.durations("RunPodSandbox"); len(run) > 0 {
			quarter := percentile(run, 50) / 4
			verdict := "reachable: CNI ADD fits in it"
			if floor >= quarter {
				verdict = "out of reach while RunPodSandbox runs this CNI chain: CNI ADD alone exceeds it"
			}
			ft.notes = append(ft.notes, fmt.Sprintf("1/4 of containerd's RunPodSandbox p50 is %s; %s", fmtDur(quarter), verdict))
		}
		ft.write(w)
	}
	if s := rep.shaping; s != nil {
		sh := &table{
			title:  fmt.Sprintf("Bandwidth shaping (peapod only): RunPodSandbox, %d pods each, one pod up at a time", len(s.plain)),
			header: []string{"", "p50", "p95"},
		}
		sh.add("no bandwidth annotations", fmtDur(percentile(s.plain, 50)), fmtDur(percentile(s.plain, 95)))
		sh.add("ingress 10M, egress 5M", fmtDur(percentile(s.shaped, 50)), fmtDur(percentile(s.shaped, 95)))
		extra := percentile(s.shaped, 50) - percentile(s.plain, 50)
		sh.add("extra for shaping", fmt.Sprintf("%+.2f ms (%+.0f%%)", float64(extra)/float64(time.Millisecond), 100*float64(extra)/float64(percentile(s.plain, 50))), "")
		if !s.applied {
			sh.notes = append(sh.notes, "! the verbose status of a shaped pod shows no applied shaping: the annotations had no effect")
		}
		sh.write(w)
	}
	if rep.shapingAccuracy != nil {
		rep.shapingAccuracy.write(w)
	}
	for _, n := range rep.notes {
		fmt.Fprintf(w, "\n%s", n)
	}
}

func durCell(ds []time.Duration, d time.Duration) string {
	if len(ds) == 0 {
		return "–"
	}
	return fmtDur(d)
}

func memCell(m *podMemory, f func(*podMemory) string) string {
	if m == nil {
		return "–"
	}
	return f(m)
}

func memVal(m *podMemory, f func(*podMemory) float64) float64 {
	if m == nil {
		return 0
	}
	return f(m)
}

func memKB(m *podMemory, f func(*podMemory) float64) string {
	if m == nil {
		return "–"
	}
	return fmtKB(f(m))
}

func kindsOf(ms ...*podMemory) []string {
	seen := map[string]bool{}
	var out []string
	for _, m := range ms {
		if m == nil {
			continue
		}
		for _, k := range m.kindNames() {
			if !seen[k] {
				seen[k] = true
				out = append(out, k)
			}
		}
	}
	// pause last, as in the tables' composition column.
	slices.SortStableFunc(out, func(a, b string) int {
		switch {
		case a == "pause" && b != "pause":
			return 1
		case b == "pause" && a != "pause":
			return -1
		}
		return 0
	})
	return out
}

func kindCell(m *podMemory, kind string) string {
	if m == nil || m.kinds[kind] == nil || m.pods == 0 {
		return "–"
	}
	k := m.kinds[kind]
	per := func(v int64) float64 { return float64(v) / float64(m.pods) }
	return fmt.Sprintf("%.0f KiB = %.0f anon + %.0f file", per(k.pss), per(k.pssAnon), per(k.pssFile))
}

func daemonCell(m *podMemory) string {
	if m == nil || m.daemon.rss == 0 {
		return "–"
	}
	return fmt.Sprintf("%s / %s", fmtKB(float64(m.daemon.rss)), fmtKB(float64(m.daemon.pss)))
}

func pauseCell(r *runtimeReport) string {
	if r == nil {
		return "–"
	}
	return fmtBytes(r.pauseBytes)
}
