package escalation

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/store/rel"
)

// TestBatchesAgreeWithOneByOne: for random rule files and checks, the
// batched evaluation gives what evaluating the rules one by one gives:
// the same rule, or the same error.
func TestBatchesAgreeWithOneByOne(t *testing.T) {
	conditions := []string{
		"", "", "true", "false", `resource.id.startsWith("d1")`, "signals.checks_last_minute >= 3",
		"signals.first_use_resource_type", "!signals.first_use_permission", "request.context.amount > 10",
		"request.context.items.all(x, x > 0)", `chain.exists(m, m.type == "bot")`, "size(chain) > 2",
		"signals.denials_last_hour > 1 // a comment at the end",
	}
	pick := func(r *rand.Rand, from ...string) string { return from[r.IntN(len(from))] }
	r := rand.New(rand.NewPCG(1, 2))
	for file := range 40 {
		var b strings.Builder
		b.WriteString("rules:\n")
		n := 1 + r.IntN(80)
		for i := range n {
			fmt.Fprintf(&b, "  - name: r%d\n    match: {", i)
			var m []string
			if r.IntN(2) == 0 {
				m = append(m, "resource_types: ["+pick(r, "document", "payment", "folder")+"]")
			}
			if r.IntN(3) == 0 {
				m = append(m, "permissions: ["+pick(r, "view", "pay", "delete")+"]")
			}
			if r.IntN(4) == 0 {
				m = append(m, "agent_types: [bot]")
			}
			if r.IntN(4) == 0 {
				m = append(m, "chain_length: {min: 3}")
			}
			b.WriteString(strings.Join(m, ", ") + "}\n")
			// Conditions without one are rare, so that checks reach far.
			if c := pick(r, conditions...); c != "" || r.IntN(4) == 0 {
				if c == "" {
					c = "true"
				}
				if i%5 != 0 {
					fmt.Fprintf(&b, "    condition: |\n      %s\n", c)
				} else if n%3 == 0 {
					b.WriteString("    max_duration: 5m\n")
				}
			}
		}
		rs := mustParse(t, b.String())
		// No deadline: the two paths must not differ by timing on a
		// loaded machine (or under -race).
		e := New(rs, Options{Timeout: time.Hour})
		batched := 0
		for _, bt := range rs.batches {
			if bt.prog != nil {
				batched++
			}
		}
		if batched == 0 && rs.Len() > 5 {
			t.Fatalf("file %d: no batch compiled:\n%s", file, b.String())
		}
		for c := range 200 {
			in := check(pick(r, "document:d1", "document:d2", "payment:p", "folder:f"), pick(r, "view", "pay", "delete"))
			if r.IntN(3) == 0 {
				in.Agent = rel.Object{Type: "bot", ID: "b"}
				in.Chain = []rel.Object{in.Agent, obj("agent:x"), obj("user:u")}
			}
			switch r.IntN(3) {
			case 0:
				in.Context = map[string]any{"amount": float64(r.IntN(20)), "items": []any{1.0, float64(r.IntN(2))}}
			case 1:
				in.Context = map[string]any{"items": []any{}}
			}
			if c%7 == 0 {
				e.Observe(in, r.IntN(2) == 0)
			}
			got, gotOK, gotErr := e.Escalate(context.Background(), in)
			act := activation{in: in, sig: e.signals, timeout: time.Hour}
			want, wantOK, wantErr := e.evaluate(context.Background(), rs.rules, &act)
			if got != want || gotOK != wantOK || fmt.Sprint(gotErr) != fmt.Sprint(wantErr) {
				t.Fatalf("file %d check %d (%+v):\nbatched     %+v %v %v\none by one  %+v %v %v\n%s", file, c, in, got, gotOK, gotErr, want, wantOK, wantErr, b.String())
			}
		}
	}
}

// TestUnbatchedRules: rules whose batch did not compile are evaluated one
// by one, with the same results.
func TestUnbatchedRules(t *testing.T) {
	rs := mustParse(t, `rules:
  - name: pay
    match: {resource_types: [payment]}
    condition: request.context.amount > 10
  - name: first
    condition: signals.first_use_resource_type
`)
	for i := range rs.batches {
		rs.batches[i].prog = nil
	}
	e := New(rs, testOpts)
	in := check("payment:p", "pay")
	in.Context = map[string]any{"amount": 5.0}
	if got := escalated(t, e, in); got != "first" {
		t.Fatalf("escalated by %q; want first", got)
	}
	in.Context = nil
	if m, ok, err := e.Escalate(context.Background(), in); err == nil || !ok || m.Rule != "pay" {
		t.Fatalf("a failing condition: %+v %v %v", m, ok, err)
	}
}

// TestStaticBounds: conditions whose cost CEL bounds before they run share
// a program without a cost tracker; those reading request.context, or
// bounded only above MaxCost, keep the limit; and a check whose inputs
// exceed the sizes the bounds assume runs the limited program.
func TestStaticBounds(t *testing.T) {
	rs := mustParse(t, `rules:
  - name: burst
    condition: signals.checks_last_minute >= 100
  - name: confidential
    condition: resource.id.startsWith("confidential-") && chain.exists(m, m.id.contains("x"))
  - name: amount
    condition: request.context.amount > 10
  - name: nested
    condition: chain.all(a, chain.all(b, chain.all(c, a.id + b.id + c.id != "")))
`)
	for _, tc := range []struct {
		rule    int
		bounded bool
	}{{0, true}, {1, true}, {2, false}, {3, false}} {
		if got := rs.rules[tc.rule].bounded; got != tc.bounded {
			t.Errorf("rule %s: bounded %v, want %v", rs.rules[tc.rule].name, got, tc.bounded)
		}
	}
	if len(rs.batches) != 2 || rs.batches[0].hi != 2 || rs.batches[0].fast == nil || rs.batches[1].fast != nil || rs.batches[1].prog == nil {
		t.Fatalf("batches %+v; want [0,2) with a program without a limit, then [2,4) with only a limited one", rs.batches)
	}
	e := New(rs, testOpts)
	in := check("document:confidential-1", "view")
	in.Chain = []rel.Object{obj("agent:x"), obj("user:u")}
	in.Agent = in.Chain[0]
	if got := escalated(t, e, in); got != "confidential" {
		t.Fatalf("escalated by %q", got)
	}
	act := activation{in: in}
	if !act.bounded() {
		t.Fatal("a small check is not within the bounds")
	}
	long := in
	long.Resource.ID = "confidential-" + strings.Repeat("a", boundedString)
	if act := (activation{in: long}); act.bounded() {
		t.Fatal("a resource id over the bound is within the bounds")
	}
	if got := escalated(t, e, long); got != "confidential" {
		t.Fatalf("a long id: escalated by %q", got)
	}
	// The nested loop over a long chain runs over its limit.
	deep := check("document:d", "view")
	deep.Context = map[string]any{"amount": 1.0}
	for i := range 40 {
		deep.Chain = append(deep.Chain, rel.Object{Type: "agent", ID: fmt.Sprint(i)})
	}
	if m, ok, err := New(rs, Options{Timeout: time.Minute}).Escalate(context.Background(), deep); !errors.Is(err, ErrCost) || !ok || m.Rule != "nested" {
		t.Fatalf("a nested loop over 42 members: %+v %v %v; want ErrCost from nested", m, ok, err)
	}
}
