package harness

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
)

// Machine describes where a run ran.
type Machine struct {
	CPUs       int    `json:"nproc"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	CPUModel   string `json:"cpu_model"`
	GoVersion  string `json:"go_version"`
	OSArch     string `json:"os_arch"`
	MemTotal   string `json:"mem_total"`
}

func machineInfo() Machine {
	m := Machine{
		CPUs: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0),
		GoVersion: runtime.Version(), OSArch: runtime.GOOS + "/" + runtime.GOARCH,
	}
	m.CPUModel = procField("/proc/cpuinfo", "model name")
	m.MemTotal = procField("/proc/meminfo", "MemTotal")
	return m
}

// procField returns the value of the first "key: value" line of a /proc
// file, or "" when there is none.
func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// loadAvg reads the 1, 5 and 15 minute load averages.
func loadAvg() [3]float64 {
	var l [3]float64
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return l
	}
	for i, f := range strings.Fields(string(b)) {
		if i >= 3 {
			break
		}
		l[i], _ = strconv.ParseFloat(f, 64)
	}
	return l
}

func formatLoad(l [3]float64) string {
	return fmt.Sprintf("%.2f %.2f %.2f", l[0], l[1], l[2])
}

// Goal is one of the targets, evaluated on a run.
type Goal struct {
	Goal     string `json:"goal"`
	Measured string `json:"measured"`
	// Met is nil when the run did not measure what the goal needs.
	Met *bool `json:"met"`
}

func find(results []EngineResult, names ...string) *EngineResult {
	for _, n := range names {
		for i := range results {
			if results[i].Engine == n && results[i].Error == "" {
				return &results[i]
			}
		}
	}
	return nil
}

func goals(results []EngineResult) []Goal {
	grpc := find(results, MandateGRPC, MandateGRPC+"-embedded", MandateGRPC+"-postgres")
	inproc := find(results, MandateInProcess)
	spice := find(results, SpiceDBPostgres)
	fga := find(results, OpenFGAPostgres)
	var out []Goal
	ratio := func(goal string, a, b *EngineResult, target float64) {
		g := Goal{Goal: goal, Measured: "not measured"}
		if a != nil && b != nil && a.Check != nil && b.Check != nil && b.Check.ItemsPerSec > 0 {
			x := a.Check.ItemsPerSec / b.Check.ItemsPerSec
			g.Measured = fmt.Sprintf("%.0fx (%s vs %s checks/s)", x, rate(a.Check.ItemsPerSec), rate(b.Check.ItemsPerSec))
			g.Met = ptr(x >= target)
		}
		out = append(out, g)
	}
	grpcName := MandateGRPC
	if grpc != nil {
		grpcName = grpc.Engine
	}
	ratio(grpcName+" check throughput >= 50x spicedb-postgres", grpc, spice, 50)
	ratio(grpcName+" check throughput >= 100x openfga-postgres", grpc, fga, 100)
	g := Goal{Goal: grpcName + " check p99 < 5 ms", Measured: "not measured"}
	if grpc != nil && grpc.Check != nil && grpc.Check.Calls > 0 {
		g.Measured = fmt.Sprintf("%.2f ms", grpc.Check.P99Ms)
		g.Met = ptr(grpc.Check.P99Ms < 5)
	}
	out = append(out, g)
	abs := func(goal string, s *Stats, target float64) {
		g := Goal{Goal: goal, Measured: "not measured"}
		if s != nil {
			g.Measured = rate(s.ItemsPerSec) + "/s"
			g.Met = ptr(s.ItemsPerSec >= target)
		}
		out = append(out, g)
	}
	var ip, ipAgent *Stats
	if inproc != nil {
		ip, ipAgent = inproc.Check, inproc.AgentCheck
	}
	abs("mandate in-process >= 500,000 checks/s", ip, 500_000)
	abs("mandate in-process >= 200,000 checks/s through a 2-link delegation chain", ipAgent, 200_000)
	g = Goal{Goal: grpcName + " CheckBulk (100 items) >= 10x unary items/s", Measured: "not measured"}
	if grpc != nil && grpc.Check != nil && grpc.CheckBulk != nil && grpc.Check.ItemsPerSec > 0 {
		x := grpc.CheckBulk.ItemsPerSec / grpc.Check.ItemsPerSec
		g.Measured = fmt.Sprintf("%.1fx (%s vs %s items/s)", x, rate(grpc.CheckBulk.ItemsPerSec), rate(grpc.Check.ItemsPerSec))
		g.Met = ptr(x >= 10)
	}
	out = append(out, g)
	// Issue 20's lookup goals.
	g = Goal{Goal: grpcName + " lookups/s within 1.5x of in-process", Measured: "not measured"}
	if grpc != nil && inproc != nil && statsOK(grpc.Lookup) && statsOK(inproc.Lookup) {
		x := inproc.Lookup.CallsPerSec / grpc.Lookup.CallsPerSec
		g.Measured = fmt.Sprintf("%.2fx (%s vs %s lookups/s)", x, rate(inproc.Lookup.CallsPerSec), rate(grpc.Lookup.CallsPerSec))
		g.Met = ptr(x <= 1.5)
	}
	out = append(out, g)
	g = Goal{Goal: grpcName + " lookup first result p99 < 5 ms", Measured: "not measured"}
	if grpc != nil && statsOK(grpc.Lookup) {
		g.Measured = fmt.Sprintf("%.2f ms", grpc.Lookup.FirstP99Ms)
		g.Met = ptr(grpc.Lookup.FirstP99Ms < 5)
	}
	out = append(out, g)
	return out
}

// rate formats a per-second figure with thousands separators.
func rate(v float64) string {
	if v < 100 {
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	s := strconv.FormatInt(int64(v+0.5), 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// lat formats a latency in milliseconds with three significant digits.
func lat(v float64) string {
	switch {
	case v == 0:
		return "-"
	case v < 1:
		return strconv.FormatFloat(v, 'f', 3, 64)
	case v < 100:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}

func statsOK(s *Stats) bool { return s != nil && s.Calls > 0 }

func errs(ss ...*Stats) string {
	var parts []string
	for _, s := range ss {
		if s != nil && s.Errors > 0 {
			parts = append(parts, fmt.Sprintf("%d (%s)", s.Errors, truncate(s.FirstError, 80)))
		}
	}
	if len(parts) == 0 {
		return "0"
	}
	return strings.Join(parts, "; ")
}

func withError(errs, engineErr string) string {
	if engineErr == "" {
		return errs
	}
	return errs + "; " + truncate(engineErr, 120)
}

func truncate(s string, n int) string {
	s = strings.ReplaceAll(s, "|", "/")
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// Markdown renders the report's tables.
func (rep *Report) Markdown() string {
	var b strings.Builder
	o := rep.Options
	fmt.Fprintf(&b, "Workload: %d users, %d groups, %d folders, %d documents: %s relationships (+%d agent relationships for Mandate: %d 2-link chains); seed %d.\n",
		o.Workload.Users, o.Workload.Groups, o.Workload.Folders, o.Workload.Documents, rate(float64(rep.Relations)), rep.AgentRels, o.Workload.Agents, o.Workload.Seed)
	fmt.Fprintf(&b, "Each measurement runs %s with %d concurrent callers; reads are %s; bulk checks carry %d items.\n",
		o.Duration, o.Concurrency, o.Consistency, o.BulkSize)
	fmt.Fprintf(&b, "Machine: %d CPUs (%s), GOMAXPROCS %d, %s, %s; load average %s at the start, %s at the end.\n\n",
		rep.Machine.CPUs, rep.Machine.CPUModel, rep.Machine.GOMAXPROCS, rep.Machine.GoVersion, rep.Machine.OSArch,
		formatLoad(rep.LoadAvgStart), formatLoad(rep.LoadAvgEnd))

	b.WriteString("Checks of document#view:\n\n")
	b.WriteString("| engine | load avg | checks/s | cores | p50 ms | p95 ms | p99 ms | bulk items/s | cores | bulk call p50 ms | bulk call p99 ms | bulk / unary | errors |\n")
	b.WriteString("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n")
	for _, r := range rep.Results {
		if r.Check == nil && r.Error != "" {
			fmt.Fprintf(&b, "| %s | %.1f | failed: %s | | | | | | | | | | |\n", r.Engine, r.LoadAvg[0], truncate(r.Error, 120))
			continue
		}
		c, k := r.Check, r.CheckBulk
		ratio := "-"
		if statsOK(c) && statsOK(k) {
			ratio = fmt.Sprintf("%.1fx", k.ItemsPerSec/c.ItemsPerSec)
		}
		fmt.Fprintf(&b, "| %s | %.1f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.Engine, r.LoadAvg[0],
			rateOf(c), cores(c), latOf(c, 50), latOf(c, 95), latOf(c, 99),
			rateOf(k), cores(k), latOf(k, 50), latOf(k, 99), ratio, withError(errs(c, k), r.Error))
	}
	agents := false
	for _, r := range rep.Results {
		agents = agents || r.AgentCheck != nil
	}
	if agents {
		b.WriteString("\nChecks by agents through a 2-link delegation chain (agent -> agent -> user; Mandate only):\n\n")
		b.WriteString("| engine | checks/s | cores | p50 ms | p95 ms | p99 ms | errors |\n| --- | ---: | ---: | ---: | ---: | ---: | --- |\n")
		for _, r := range rep.Results {
			if a := r.AgentCheck; a != nil {
				fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n", r.Engine, rateOf(a), cores(a), latOf(a, 50), latOf(a, 95), latOf(a, 99), errs(a))
			}
		}
	}
	b.WriteString("\nLoad, memory, LookupResources (every document a user may view) and writes (one relationship per call):\n\n")
	b.WriteString("| engine | load s | loaded rels/s | heap after GC MiB | database MiB | lookups/s | cores | lookup p50 ms | lookup p99 ms | first result p50 ms | first result p99 ms | mean results | writes/s | write p50 ms | write p99 ms | errors |\n")
	b.WriteString("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n")
	for _, r := range rep.Results {
		if r.LoadedRels == 0 {
			fmt.Fprintf(&b, "| %s | failed: %s | | | | | | | | | | | | | | |\n", r.Engine, truncate(r.Error, 120))
			continue
		}
		db := "-"
		if r.DatabaseMiB > 0 {
			db = fmt.Sprintf("%.0f", r.DatabaseMiB)
		}
		l, w := r.Lookup, r.Write
		mean, firstP50, firstP99 := "-", "-", "-"
		if statsOK(l) {
			mean = fmt.Sprintf("%.0f", l.Results)
			firstP50, firstP99 = lat(l.FirstP50Ms), lat(l.FirstP99Ms)
		}
		heap := fmt.Sprintf("%.0f", r.HeapMiB)
		if r.HeapMiB < 1 {
			heap = "<1" // in-process noise: see "How to read it"
		}
		fmt.Fprintf(&b, "| %s | %.1f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.Engine,
			r.LoadSeconds, rate(float64(r.LoadedRels)/r.LoadSeconds), heap, db,
			callRateOf(l), cores(l), latOf(l, 50), latOf(l, 99), firstP50, firstP99, mean, rateOf(w), latOf(w, 50), latOf(w, 99), errs(l, w))
	}
	b.WriteString("\nGoals of issues 7 and 20 (ratios from this run):\n\n| goal | measured | met |\n| --- | --- | --- |\n")
	for _, g := range rep.Goals {
		met := "n/a"
		if g.Met != nil {
			met = map[bool]string{true: "yes", false: "**no**"}[*g.Met]
		}
		fmt.Fprintf(&b, "| %s | %s | %s |\n", g.Goal, g.Measured, met)
	}
	fmt.Fprintf(&b, "\nAgreement: %s.\n", rep.Agreement)
	return b.String()
}

func rateOf(s *Stats) string {
	if s == nil {
		return "-"
	}
	if s.Calls == 0 {
		return "none in " + strconv.FormatFloat(s.Seconds, 'f', 0, 64) + "s"
	}
	return rate(s.ItemsPerSec)
}

func cores(s *Stats) string {
	if s == nil {
		return "-"
	}
	return strconv.FormatFloat(s.CPUCores, 'f', 2, 64)
}

func callRateOf(s *Stats) string {
	if s == nil {
		return "-"
	}
	if s.Calls == 0 {
		return "none in " + strconv.FormatFloat(s.Seconds, 'f', 0, 64) + "s"
	}
	return rate(s.CallsPerSec)
}

func latOf(s *Stats, p int) string {
	if !statsOK(s) {
		return "-"
	}
	switch p {
	case 50:
		return lat(s.P50Ms)
	case 95:
		return lat(s.P95Ms)
	}
	return lat(s.P99Ms)
}

// WriteJSON writes the report to path, indented.
func (rep *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
