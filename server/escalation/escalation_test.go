package escalation

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/store/rel"
)

var t0 = time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)

func obj(s string) rel.Object {
	typ, id, _ := strings.Cut(s, ":")
	return rel.Object{Type: typ, ID: id}
}

// check is an agent check by agent:a for user:u unless changed.
func check(resource, permission string) Input {
	return Input{Resource: obj(resource), Permission: permission, Agent: obj("agent:a"),
		Chain: []rel.Object{obj("agent:a"), obj("user:u")}, Time: t0}
}

func mustParse(t testing.TB, text string) *Rules {
	t.Helper()
	rs, err := Parse("test.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// escalated returns the rule that escalated in, or "" when none did.
func escalated(t *testing.T, e *Escalator, in Input) string {
	t.Helper()
	m, ok, err := e.Escalate(context.Background(), in)
	if err != nil {
		t.Fatalf("Escalate(%v): %v", in, err)
	}
	if ok != (m.Rule != "") {
		t.Fatalf("Escalate(%v) = %+v, %v", in, m, ok)
	}
	return m.Rule
}

func TestMatchers(t *testing.T) {
	sub := check("document:d1", "view")
	sub.Agent, sub.Chain = obj("agent:s"), []rel.Object{obj("agent:s"), obj("agent:p"), obj("user:u")}
	withCtx := func(in Input, ctx map[string]any) Input { in.Context = ctx; return in }
	at := func(in Input, tm time.Time) Input { in.Time = tm; return in }
	bot := check("document:d1", "view")
	bot.Agent = obj("bot:b")
	for _, tc := range []struct {
		name, rule string
		in         Input
		want       bool
	}{
		{"no matcher matches all", `{name: r}`, check("document:d1", "view"), true},
		{"resource type", `{name: r, match: {resource_types: [payment, invoice]}}`, check("invoice:i1", "view"), true},
		{"resource type other", `{name: r, match: {resource_types: payment}}`, check("document:d1", "view"), false},
		{"permission", `{name: r, match: {permissions: [delete]}}`, check("document:d1", "delete"), true},
		{"permission other", `{name: r, match: {permissions: [delete]}}`, check("document:d1", "view"), false},
		{"agent type", `{name: r, match: {agent_types: [bot]}}`, bot, true},
		{"agent type other", `{name: r, match: {agent_types: [bot]}}`, check("document:d1", "view"), false},
		{"chain min", `{name: r, match: {chain_length: {min: 3}}}`, sub, true},
		{"chain below min", `{name: r, match: {chain_length: {min: 3}}}`, check("document:d1", "view"), false},
		{"chain max", `{name: r, match: {chain_length: {max: 2}}}`, check("document:d1", "view"), true},
		{"chain above max", `{name: r, match: {chain_length: {max: 2}}}`, sub, false},
		{"chain unknown matches", `{name: r, match: {chain_length: {min: 3}}}`, Input{Resource: obj("document:d1"), Permission: "view", Agent: obj("agent:a")}, true},
		{"all matchers", `{name: r, match: {resource_types: [document], permissions: [view], agent_types: [agent], chain_length: {min: 3, max: 3}}}`, sub, true},
		{"one matcher fails", `{name: r, match: {resource_types: [document], permissions: [edit], agent_types: [agent]}}`, sub, false},
		{"condition context", `{name: r, condition: 'request.context.amount > 1000'}`, withCtx(check("payment:p", "pay"), map[string]any{"amount": 1500.0}), true},
		{"condition context int", `{name: r, condition: 'request.context.amount > 1000'}`, withCtx(check("payment:p", "pay"), map[string]any{"amount": int64(999)}), false},
		{"condition context absent", `{name: r, condition: '"amount" in request.context'}`, check("payment:p", "pay"), false},
		{"condition resource", `{name: r, condition: 'resource.type == "payment" && resource.id.startsWith("p")'}`, check("payment:p9", "pay"), true},
		{"condition permission", `{name: r, condition: 'permission in ["pay", "refund"]'}`, check("payment:p9", "refund"), true},
		{"condition agent", `{name: r, condition: 'agent.type == "agent" && agent.id == "s"'}`, sub, true},
		{"condition chain", `{name: r, condition: 'size(chain) == 3 && chain[0].type == "agent" && chain[2].id == "u"'}`, sub, true},
		{"condition chain any", `{name: r, condition: 'chain.exists(m, m.type == "agent" && m.id == "p")'}`, check("document:d1", "view"), false},
		{"condition now", `{name: r, condition: 'now.getHours() < 6'}`, at(check("document:d1", "view"), t0.Add(-6*time.Hour)), true},
		{"condition now day", `{name: r, condition: 'now.getHours() < 6'}`, check("document:d1", "view"), false},
		{"matchers before condition", `{name: r, match: {permissions: [pay]}, condition: 'request.context.amount > 1'}`, check("document:d1", "view"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := New(mustParse(t, "rules:\n  - "+tc.rule+"\n"), Options{})
			if got := escalated(t, e, tc.in) == "r"; got != tc.want {
				t.Fatalf("escalated: %v, want %v", got, tc.want)
			}
		})
	}
}

func TestFirstMatchWins(t *testing.T) {
	e := New(mustParse(t, `rules:
  - name: not-this
    match: {permissions: [edit]}
  - name: payments
    description: big payments
    match: {resource_types: [payment]}
    condition: request.context.amount > 100
    max_duration: 5m
  - name: deletes
    match: {permissions: [delete]}
  - name: any-payment
    match: {resource_types: [payment]}
`), Options{})
	in := check("payment:p", "pay")
	in.Context = map[string]any{"amount": 500.0}
	m, ok, err := e.Escalate(context.Background(), in)
	if err != nil || !ok || m != (Match{Rule: "payments", Description: "big payments", MaxDuration: 5 * time.Minute}) {
		t.Fatalf("Escalate = %+v, %v, %v", m, ok, err)
	}
	in.Context["amount"] = 50.0
	if got := escalated(t, e, in); got != "any-payment" {
		t.Fatalf("a small payment escalated by %q; want the later rule any-payment", got)
	}
	if got := escalated(t, e, check("document:d", "view")); got != "" {
		t.Fatalf("a document view escalated by %q", got)
	}
}

// TestConditionErrorFailsClosed: a condition that cannot be evaluated
// escalates, naming its rule, with the error; it never reads as false.
func TestConditionErrorFailsClosed(t *testing.T) {
	e := New(mustParse(t, `rules:
  - name: amount
    condition: request.context.amount > 1000
  - name: bool-context
    condition: request.context.flag
`), Options{})
	for _, tc := range []struct {
		name string
		ctx  map[string]any
		want string
	}{
		{"missing key", nil, "no such key: amount"},
		{"wrong type", map[string]any{"amount": "lots"}, "no such overload"},
		{"not a boolean", map[string]any{"amount": 1.0, "flag": "yes"}, "expected a boolean"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := check("payment:p", "pay")
			in.Context = tc.ctx
			m, ok, err := e.Escalate(context.Background(), in)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !ok || m.Rule == "" {
				t.Fatalf("Escalate = %+v, %v, %v; want the failing rule, true and an error containing %q", m, ok, err, tc.want)
			}
		})
	}
}

// TestCostLimit: a condition over MaxCost fails with ErrCost, in bounded
// time, however large the input it loops over.
func TestCostLimit(t *testing.T) {
	e := New(mustParse(t, `rules:
  - name: quadratic
    condition: request.context.items.all(x, request.context.items.all(y, x + y >= 0))
`), Options{Timeout: time.Minute})
	items := make([]any, 100_000)
	for i := range items {
		items[i] = float64(i)
	}
	in := check("document:d", "view")
	in.Context = map[string]any{"items": items}
	start := time.Now()
	m, ok, err := e.Escalate(context.Background(), in)
	if !errors.Is(err, ErrCost) || !ok || m.Rule != "quadratic" {
		t.Fatalf("Escalate = %+v, %v, %v; want ErrCost from rule quadratic", m, ok, err)
	}
	// 10^10 iterations would take hours; the bound stops it after about
	// MaxCost operations. A generous ceiling keeps this test stable on a
	// loaded machine while still proving the evaluation was cut short.
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("a cost overrun took %v", d)
	}
}

// TestTimeout: the deadline stops an evaluation the cost limit would let
// run, and a cancelled caller's context stops it too.
func TestTimeout(t *testing.T) {
	rs := mustParse(t, `rules:
  - name: loop
    condition: request.context.items.all(x, x >= 0)
`)
	items := make([]any, 5_000)
	for i := range items {
		items[i] = 1.0
	}
	in := check("document:d", "view")
	in.Context = map[string]any{"items": items}
	e := New(rs, Options{Timeout: time.Nanosecond})
	if _, ok, err := e.Escalate(context.Background(), in); !errors.Is(err, context.DeadlineExceeded) || !ok {
		t.Fatalf("with a 1ns timeout: %v, %v; want DeadlineExceeded and true", ok, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, ok, err := New(rs, Options{}).Escalate(ctx, in); !errors.Is(err, context.Canceled) || !ok {
		t.Fatalf("with a cancelled context: %v, %v; want Canceled and true", ok, err)
	}
}

func TestNoRules(t *testing.T) {
	for _, e := range []*Escalator{New(nil, Options{}), New(mustParse(t, "rules: []"), Options{})} {
		if got := escalated(t, e, check("document:d", "delete")); got != "" {
			t.Fatalf("escalated by %q without rules", got)
		}
	}
}

func TestSwap(t *testing.T) {
	e := New(mustParse(t, "rules: [{name: old}]"), Options{})
	if got := escalated(t, e, check("document:d", "view")); got != "old" {
		t.Fatalf("before the swap: %q", got)
	}
	e.Swap(mustParse(t, "rules: [{name: new, match: {permissions: [delete]}}]"))
	if got := escalated(t, e, check("document:d", "view")); got != "" {
		t.Fatalf("after the swap a view escalated by %q", got)
	}
	if got := escalated(t, e, check("document:d", "delete")); got != "new" {
		t.Fatalf("after the swap a delete: %q", got)
	}
	e.Swap(nil)
	if got := escalated(t, e, check("document:d", "delete")); got != "" {
		t.Fatalf("after swapping in nil: %q", got)
	}
}

// TestSignalConditions drives each signal through a rule.
func TestSignalConditions(t *testing.T) {
	for _, tc := range []struct {
		name, condition string
		// observe feeds the history; in is then asked about.
		observe func(e *Escalator)
		in      Input
		want    bool
	}{
		{"checks_last_minute under", "signals.checks_last_minute >= 3", func(e *Escalator) {
			for i := range 2 {
				e.Observe(at(check("document:d", "view"), t0.Add(-time.Duration(i)*time.Second)), true)
			}
		}, check("document:d", "view"), false},
		{"checks_last_minute at", "signals.checks_last_minute >= 3", func(e *Escalator) {
			for i := range 3 {
				e.Observe(at(check("document:d", "view"), t0.Add(-time.Duration(i)*time.Second)), i%2 == 0)
			}
		}, check("document:d", "view"), true},
		{"checks_last_minute slides", "signals.checks_last_minute >= 3", func(e *Escalator) {
			for i := range 3 {
				e.Observe(at(check("document:d", "view"), t0.Add(-time.Duration(i)*30*time.Second)), true)
			}
		}, check("document:d", "view"), false},
		{"checks_last_minute other agent", "signals.checks_last_minute >= 1", func(e *Escalator) {
			other := check("document:d", "view")
			other.Agent = obj("agent:other")
			e.Observe(other, true)
		}, check("document:d", "view"), false},
		{"denials_last_hour", "signals.denials_last_hour >= 2", func(e *Escalator) {
			e.Observe(at(check("document:d", "view"), t0.Add(-50*time.Minute)), false)
			e.Observe(at(check("document:d", "view"), t0.Add(-10*time.Minute)), false)
			e.Observe(at(check("document:d", "view"), t0.Add(-5*time.Minute)), true)
		}, check("document:d", "view"), true},
		{"denials_last_hour slides", "signals.denials_last_hour >= 2", func(e *Escalator) {
			e.Observe(at(check("document:d", "view"), t0.Add(-61*time.Minute)), false)
			e.Observe(at(check("document:d", "view"), t0.Add(-10*time.Minute)), false)
		}, check("document:d", "view"), false},
		{"first_use_resource_type new agent", "signals.first_use_resource_type", func(*Escalator) {}, check("document:d", "view"), true},
		{"first_use_resource_type used", "signals.first_use_resource_type", func(e *Escalator) {
			e.Observe(check("document:other", "edit"), true)
		}, check("document:d", "view"), false},
		{"first_use_resource_type other type", "signals.first_use_resource_type", func(e *Escalator) {
			e.Observe(check("folder:f", "view"), true)
		}, check("document:d", "view"), true},
		{"first_use_resource_type denied is no use", "signals.first_use_resource_type", func(e *Escalator) {
			e.Observe(check("document:d", "view"), false)
		}, check("document:d", "view"), true},
		{"first_use_permission used", "signals.first_use_permission", func(e *Escalator) {
			e.Observe(check("folder:f", "view"), true)
		}, check("document:d", "view"), false},
		{"first_use_permission other", "signals.first_use_permission", func(e *Escalator) {
			e.Observe(check("document:d", "edit"), true)
		}, check("document:d", "view"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := New(mustParse(t, "rules:\n  - name: r\n    condition: "+tc.condition+"\n"), Options{})
			tc.observe(e)
			if got := escalated(t, e, tc.in) == "r"; got != tc.want {
				t.Fatalf("escalated: %v, want %v (signals %+v)", got, tc.want, e.Signals(tc.in))
			}
		})
	}
}

func at(in Input, tm time.Time) Input { in.Time = tm; return in }

// TestSignals checks the counts themselves at window edges.
func TestSignals(t *testing.T) {
	e := New(nil, Options{})
	in := check("document:d", "view")
	if s := e.Signals(in); s != (Signals{FirstUseResourceType: true, FirstUsePermission: true}) {
		t.Fatalf("an unknown agent: %+v", s)
	}
	// 70 checks, one a second, up to t0-1s; the last 59 seconds before t0
	// hold 59 of them (second t0-60 has left the window).
	for i := 1; i <= 70; i++ {
		e.Observe(at(in, t0.Add(-time.Duration(i)*time.Second)), i%10 == 0)
	}
	s := e.Signals(in)
	if s.ChecksLastMinute != 59 || s.DenialsLastHour != 63 || s.FirstUseResourceType || s.FirstUsePermission {
		t.Fatalf("after 70 checks: %+v; want 59 checks in the last minute, 63 denials", s)
	}
	// An hour on, everything has left both windows; first uses stay known.
	s = e.Signals(at(in, t0.Add(time.Hour)))
	if s != (Signals{}) {
		t.Fatalf("an hour later: %+v", s)
	}
	// Observations older than the window after newer ones are dropped,
	// and the window never counts what it has not seen.
	e.Observe(at(in, t0.Add(time.Hour)), false)
	e.Observe(at(in, t0.Add(-time.Hour)), false)
	if s := e.Signals(at(in, t0.Add(time.Hour+time.Second))); s.ChecksLastMinute != 1 || s.DenialsLastHour != 1 {
		t.Fatalf("after an old observation: %+v", s)
	}
	// Asking about an earlier time than the newest observation counts
	// only what came before it.
	if s := e.Signals(at(in, t0.Add(time.Hour-30*time.Second))); s.ChecksLastMinute != 0 {
		t.Fatalf("before the newest observation: %+v", s)
	}
}

func TestWindowSaturates(t *testing.T) {
	var w window
	for range 70_000 {
		w.add(100)
	}
	if got := w.sum(100); got != 65_535 {
		t.Fatalf("sum %d; want the counter saturated at 65535", got)
	}
}

// TestEviction: past MaxAgents the least recently observed agent is
// forgotten, and a forgotten agent reads as new, so first-use rules
// escalate it again rather than let it pass.
func TestEviction(t *testing.T) {
	e := New(mustParse(t, "rules: [{name: first, condition: signals.first_use_resource_type}]"), Options{MaxAgents: signalShards})
	agent := func(n int) Input {
		in := check("document:d", "view")
		in.Agent = rel.Object{Type: "agent", ID: strconv.Itoa(n)}
		return in
	}
	e.Observe(agent(0), true)
	if got := escalated(t, e, agent(0)); got != "" {
		t.Fatalf("a known agent escalated by %q", got)
	}
	// Many more agents than fit: agent 0, never seen again, is evicted.
	for n := 1; n <= 50*signalShards; n++ {
		e.Observe(agent(n), true)
	}
	if got := e.signals.tracked(); got > signalShards {
		t.Fatalf("%d agents tracked; want at most %d", got, signalShards)
	}
	if got := escalated(t, e, agent(0)); got != "first" {
		t.Fatalf("an evicted agent: escalated by %q; want first (forgetting escalates)", got)
	}
	// The most recent agent is kept.
	if got := escalated(t, e, agent(50*signalShards)); got != "" {
		t.Fatalf("the newest agent escalated by %q", got)
	}
}

// TestUsesCapped: an agent's remembered resource types stop at maxUses;
// a type past the cap stays a first use.
func TestUsesCapped(t *testing.T) {
	e := New(nil, Options{})
	for i := range maxUses {
		e.Observe(check("type"+strconv.Itoa(i)+":x", "view"), true)
	}
	e.Observe(check("extra:x", "view"), true)
	if s := e.Signals(check("extra:x", "view")); !s.FirstUseResourceType {
		t.Fatalf("a type past the cap: %+v; want a first use", s)
	}
	if s := e.Signals(check("type0:x", "view")); s.FirstUseResourceType {
		t.Fatalf("a remembered type: %+v", s)
	}
}

// TestConcurrent runs checks, observations and swaps together (run with
// -race).
func TestConcurrent(t *testing.T) {
	rules := []*Rules{
		mustParse(t, "rules: [{name: burst, condition: 'signals.checks_last_minute > 50'}, {name: first, condition: signals.first_use_resource_type}]"),
		mustParse(t, "rules: [{name: deletes, match: {permissions: [delete]}}]"),
	}
	e := New(rules[0], Options{MaxAgents: 64})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 2_000 {
				in := check("document:d"+strconv.Itoa(i%7), []string{"view", "delete"}[i%2])
				in.Agent = rel.Object{Type: "agent", ID: strconv.Itoa((g*31 + i) % 100)}
				in.Time = t0.Add(time.Duration(i) * time.Millisecond)
				m, ok, err := e.Escalate(context.Background(), in)
				if err != nil || ok != (m.Rule != "") {
					errs <- err
					return
				}
				e.Observe(in, !ok)
			}
		})
	}
	wg.Go(func() {
		for i := range 200 {
			e.Swap(rules[i%2])
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := e.signals.tracked(); n == 0 || n > 64 {
		t.Fatalf("%d agents tracked; want 1..64", n)
	}
}
