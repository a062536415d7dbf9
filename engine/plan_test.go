package engine_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// chainSchema is a chain of n permissions, pp0 = pp1, ..., ppN = rel, the
// shape that made reachability super-cubic.
func chainSchema(n int) string {
	var b strings.Builder
	b.WriteString("definition user {}\ndefinition doc {\n  relation rel: user\n")
	for i := range n {
		fmt.Fprintf(&b, "  permission pp%d = pp%d\n", i, i+1)
	}
	fmt.Fprintf(&b, "  permission pp%d = rel\n}\n", n)
	return b.String()
}

// TestLongPermissionChain compiles a chain of thousands of permissions (an
// hour before reachability was linear; milliseconds now) and checks both
// ends of it.
func TestLongPermissionChain(t *testing.T) {
	const n = 4000
	e, err := engine.Load(context.Background(), chainSchema(n), mustParse(t, "doc:1#rel@user:ann"), engine.WithMaxDepth(n+10))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		perm, subject string
		want          engine.Decision
	}{
		{"pp0", "user:ann", engine.Allowed},
		{fmt.Sprintf("pp%d", n), "user:ann", engine.Allowed},
		{"pp0", "user:bob", engine.Denied},
		// A userset is a member of itself, through the whole chain.
		{"pp0", fmt.Sprintf("doc:1#pp%d", n-1), engine.Allowed},
	} {
		res, err := e.Check(context.Background(), engine.CheckRequest{
			Resource: rel.Object{Type: "doc", ID: "1"}, Permission: tt.perm, Subject: subject(t, tt.subject)})
		if err != nil {
			t.Fatalf("%s@%s: %v", tt.perm, tt.subject, err)
		}
		if res.Decision != tt.want {
			t.Errorf("%s@%s = %v, want %v", tt.perm, tt.subject, res.Decision, tt.want)
		}
	}
}

// TestReachThroughCyclesAndManyKinds covers what the linear reachability
// must keep: permissions on a cycle reach what any member reaches, and a
// set past its size bound stands for every kind rather than losing some.
func TestReachThroughCyclesAndManyKinds(t *testing.T) {
	const groups = 80 // past the reach set's bound of 64 kinds
	var b strings.Builder
	b.WriteString("definition user {}\n")
	var allowed []string
	for i := range groups {
		fmt.Fprintf(&b, "definition grp%d {\n  relation member: user\n}\n", i)
		allowed = append(allowed, fmt.Sprintf("grp%d#member", i))
	}
	fmt.Fprintf(&b, `definition doc {
  relation parent: doc
  relation a_rel: user
  relation b_rel: user
  relation viewer: %s
  permission perm_a = a_rel + parent->perm_b
  permission perm_b = b_rel + parent->perm_a
  permission view = viewer
}
`, strings.Join(allowed, " | "))
	e, err := engine.Load(context.Background(), b.String(), mustParse(t,
		"doc:1#parent@doc:2",
		"doc:2#b_rel@user:bea",
		fmt.Sprintf("doc:1#viewer@grp%d:x#member", groups-1),
		fmt.Sprintf("grp%d:x#member@user:ann", groups-1),
	))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		perm, subject string
		want          engine.Decision
	}{
		{"perm_a", "user:bea", engine.Allowed},
		{"perm_b", "user:bea", engine.Denied},
		{"perm_a", "doc:2#perm_b", engine.Allowed},
		{"perm_b", "doc:2#perm_b", engine.Denied},
		{"view", "user:ann", engine.Allowed},
		{"view", fmt.Sprintf("grp%d:x#member", groups-1), engine.Allowed},
		{"view", "user:bea", engine.Denied},
	} {
		res, err := e.Check(context.Background(), engine.CheckRequest{
			Resource: rel.Object{Type: "doc", ID: "1"}, Permission: tt.perm, Subject: subject(t, tt.subject)})
		if err != nil {
			t.Fatalf("%s@%s: %v", tt.perm, tt.subject, err)
		}
		if res.Decision != tt.want {
			t.Errorf("%s@%s = %v, want %v", tt.perm, tt.subject, res.Decision, tt.want)
		}
	}
}

// TestExactRevisionZero: a token naming revision zero (the empty store)
// answers there, never at the head; a request's zero Revision is the head.
func TestExactRevisionZero(t *testing.T) {
	e, err := engine.Load(context.Background(), docSchema, mustParse(t, "doc:1#owner@user:ann"))
	if err != nil {
		t.Fatal(err)
	}
	check := func(rev store.Revision) (engine.CheckResult, error) {
		return e.Check(context.Background(), engine.CheckRequest{
			Resource: rel.Object{Type: "doc", ID: "1"}, Permission: "view", Subject: subject(t, "user:ann"), Revision: rev})
	}
	for _, tt := range []struct {
		name    string
		rev     store.Revision
		want    engine.Decision
		wantErr error
	}{
		{"head", 0, engine.Allowed, nil},
		{"exact zero", engine.Exact(0), 0, engine.ErrNoSchema},
		{"exact schema only", engine.Exact(1), engine.Denied, nil},
		{"exact relationships", engine.Exact(2), engine.Allowed, nil},
		{"ahead", engine.Exact(3), 0, engine.ErrRevisionAhead},
	} {
		t.Run(tt.name, func(t *testing.T) {
			res, err := check(tt.rev)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("got %+v, %v; want %v", res, err, tt.wantErr)
				}
				return
			}
			if err != nil || res.Decision != tt.want {
				t.Fatalf("got %+v, %v; want %v", res, err, tt.want)
			}
		})
	}
	if e.Schema(engine.Exact(0)) != nil || e.Schema(0) == nil || e.Schema(engine.Exact(1)) == nil {
		t.Error("Schema: want none at revision zero, one at the head and at revision 1")
	}
	e.ForgetBefore(2)
	if _, err := check(engine.Exact(0)); !errors.Is(err, engine.ErrRevisionGone) {
		t.Fatalf("revision zero after ForgetBefore(2): %v, want %v", err, engine.ErrRevisionGone)
	}
}

// BenchmarkCompileChain shows how compiling (schema and plan) grows with
// the length of a permission chain: linearly.
func BenchmarkCompileChain(b *testing.B) {
	for _, n := range []int{500, 1000, 2000, 4000} {
		text := chainSchema(n)
		b.Run(fmt.Sprintf("links=%d", n), func(b *testing.B) {
			for b.Loop() {
				if _, err := engine.Load(context.Background(), text, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
