// Package escalationbench measures what escalation rules cost agent checks:
// Mandate's engine loaded with the bench workload, answering its agent
// checks with and without an escalator running the example rules
// (examples/approvals/rules.yaml), interleaved in one run so that the
// machine's load falls on both alike.
package escalationbench

import (
	"context"
	"flag"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/bench/workload"
	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/feed"
	"github.com/mandate-authz/mandate/server/escalation"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/memory"
	"github.com/mandate-authz/mandate/store/rel"
)

var (
	small = flag.Bool("escalation.small", false, "a tenth of the bench workload's default size, for a quick run")
	rules = flag.String("escalation.rules", "../../examples/approvals/rules.yaml", "the escalation rule file")
	rate  = flag.Int("escalation.rate", 200, "agent checks per second of simulated time: the clock the signals see")
)

// setup loads the workload into an engine following a memory store, as
// the bench harness's in-process engine does.
func setup(b *testing.B) (*engine.Engine, *workload.Workload) {
	b.Helper()
	cfg := workload.DefaultConfig()
	if *small {
		cfg.Users, cfg.Groups, cfg.Folders, cfg.Documents = 1_000, 100, 1_000, 10_000
		cfg.Agents, cfg.Checks, cfg.AgentChecks = 100, 1_000, 2_000
	}
	w, err := workload.Generate(cfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	st := memory.New()
	eng := engine.New()
	done := make(chan error, 1)
	go func() { done <- feed.Follow(ctx, eng, st, nil) }()
	b.Cleanup(func() {
		cancel()
		<-done
		st.Close()
	})
	if _, err := st.WriteSchema(ctx, workload.MandateSchema); err != nil {
		b.Fatal(err)
	}
	all := append(append([]rel.Relationship(nil), w.Rels...), w.AgentRels...)
	var rev store.Revision
	for lo := 0; lo < len(all); lo += 50_000 {
		muts := make([]store.Mutation, 0, 50_000)
		for _, r := range all[lo:min(lo+50_000, len(all))] {
			muts = append(muts, store.Mutation{Op: store.Create, Rel: r})
		}
		if rev, err = st.Write(ctx, nil, muts); err != nil {
			b.Fatal(err)
		}
	}
	if err := eng.WaitForRevision(ctx, rev); err != nil {
		b.Fatal(err)
	}
	return eng, w
}

// agentCheck answers one agent check: the engine's decision and, with an
// escalator, the rule that escalated it. It is what the operation core
// does per agent check: ask the engine; when allowed, ask Escalate with
// the chain the engine resolved; then Observe the answer the agent got.
// An escalated check is taken to be approved and retried at once (the
// retry passes on its grant, without escalation), so the retry is
// observed as an allowed use.
func agentCheck(ctx context.Context, eng *engine.Engine, esc *escalation.Escalator, c workload.AgentCheck, now time.Time) (bool, string, error) {
	res, err := eng.Check(ctx, engine.CheckRequest{
		Resource: c.Resource, Permission: workload.Permission,
		Subject: rel.Subject{Type: c.Subject.Type, ID: c.Subject.ID},
	})
	if err != nil {
		return false, "", err
	}
	allowed := res.Decision == engine.Allowed
	if esc == nil {
		return allowed, "", nil
	}
	in := escalation.Input{Resource: c.Resource, Permission: workload.Permission, Agent: c.Subject, Time: now}
	if d := res.Delegation; d != nil {
		in.Chain = make([]rel.Object, len(d.Chain))
		for i, m := range d.Chain {
			in.Chain[i] = m.Subject
		}
	}
	rule := ""
	if allowed {
		m, ok, err := esc.Escalate(ctx, in)
		if err != nil {
			return false, "", err
		}
		if ok {
			rule = m.Rule
		}
	}
	esc.Observe(in, allowed && rule == "")
	if rule != "" {
		esc.Observe(in, true) // the approved retry
	}
	return allowed, rule, nil
}

// cpuTime is the CPU time the process has used (as engine/bench_test.go
// measures): on a shared machine wall-clock time mostly measures the
// neighbours.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkAgentCheckEscalation answers the workload's agent checks in
// blocks, alternately without and with the escalator, timing each kind
// apart in wall-clock and process CPU time. It reports both costs per check, the escalator's overhead, and
// the share of agent checks (and of allowed ones) escalated, per rule.
func BenchmarkAgentCheckEscalation(b *testing.B) {
	eng, w := setup(b)
	rs, err := escalation.Load(*rules)
	if err != nil {
		b.Fatal(err)
	}
	esc := escalation.New(rs, escalation.Options{})
	ctx := context.Background()
	pool := w.AgentChecks
	step := time.Second / time.Duration(*rate)
	t0 := time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)

	const block = 1_024
	var plain, with, plainCPU, withCPU time.Duration
	var checks, allowed, escalated, firstPass int
	byRule := map[string]int{}
	b.ResetTimer()
	for i := 0; i < b.N; i += block {
		n := min(block, b.N-i)
		start, cpu := time.Now(), cpuTime()
		for j := i; j < i+n; j++ {
			if _, _, err := agentCheck(ctx, eng, nil, pool[j%len(pool)], time.Time{}); err != nil {
				b.Fatal(err)
			}
		}
		plain += time.Since(start)
		plainCPU += cpuTime() - cpu
		start, cpu = time.Now(), cpuTime()
		for j := i; j < i+n; j++ {
			ok, rule, err := agentCheck(ctx, eng, esc, pool[j%len(pool)], t0.Add(time.Duration(j)*step))
			if err != nil {
				b.Fatal(err)
			}
			checks++
			if ok {
				allowed++
			}
			if rule != "" {
				escalated++
				byRule[rule]++
				if j < len(pool) {
					firstPass++
				}
			}
		}
		with += time.Since(start)
		withCPU += cpuTime() - cpu
	}
	b.StopTimer()
	if checks == 0 {
		return
	}
	per := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / float64(checks) }
	b.ReportMetric(per(plain), "ns/check")
	b.ReportMetric(per(with), "ns/check+esc")
	b.ReportMetric(100*(per(with)-per(plain))/per(plain), "overhead-%")
	b.ReportMetric(per(plainCPU), "cpu-ns/check")
	b.ReportMetric(per(withCPU), "cpu-ns/check+esc")
	if plainCPU > 0 {
		b.ReportMetric(100*(per(withCPU)-per(plainCPU))/per(plainCPU), "cpu-overhead-%")
	}
	b.ReportMetric(100*float64(escalated)/float64(checks), "escalated-%")
	if allowed > 0 {
		b.ReportMetric(100*float64(escalated)/float64(allowed), "escalated-of-allowed-%")
	}
	names := make([]string, 0, len(byRule))
	for r := range byRule {
		names = append(names, r)
	}
	sort.Strings(names)
	var parts []string
	for _, r := range names {
		parts = append(parts, r+"="+strconv.Itoa(byRule[r]))
	}
	b.Logf("%d agent checks (%d-check pool, %d agents, %d/s simulated): %d allowed, %d escalated (%d in the first pass): %s",
		checks, len(pool), w.Config.Agents, *rate, allowed, escalated, firstPass, strings.Join(parts, " "))
}
