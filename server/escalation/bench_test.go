package escalation

import (
	"context"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/store/rel"
)

// BenchmarkEscalate is one agent check's Escalate and Observe with the
// example rules, across 1,000 agents, none of whose checks match (every
// rule is evaluated).
func BenchmarkEscalate(b *testing.B) {
	rs, err := Load("../../examples/approvals/rules.yaml")
	if err != nil {
		b.Fatal(err)
	}
	e := New(rs, testOpts)
	ctx := context.Background()
	ins := make([]Input, 1_000)
	for i := range ins {
		a := rel.Object{Type: "agent", ID: "s" + strconv.Itoa(i)}
		ins[i] = Input{Resource: rel.Object{Type: "document", ID: "d" + strconv.Itoa(i)}, Permission: "view", Agent: a,
			Chain: []rel.Object{a, {Type: "agent", ID: "p" + strconv.Itoa(i)}, {Type: "user", ID: "u1"}}, Time: t0}
		e.Observe(ins[i], true)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		in := ins[i%len(ins)]
		in.Time = t0.Add(time.Duration(i) * time.Second)
		if _, ok, err := e.Escalate(ctx, in); ok || err != nil {
			b.Fatal(ok, err)
		}
		e.Observe(in, true)
		i++
	}
}

// BenchmarkSignalsMemory reports the heap an escalator holds per tracked
// agent at DefaultMaxAgents, each having used one resource type and one
// permission.
func BenchmarkSignalsMemory(b *testing.B) {
	ins := make([]Input, DefaultMaxAgents)
	for i := range ins {
		ins[i] = check("document:d", "view")
		ins[i].Agent = rel.Object{Type: "agent", ID: "agent-" + strconv.Itoa(i)}
	}
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		e := New(nil, testOpts)
		for _, in := range ins {
			e.Observe(in, true)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(e.signals.tracked()), "B/agent")
		runtime.KeepAlive(e)
	}
}
