package capability

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

func TestRevocationCascades(t *testing.T) {
	cases := []struct {
		name string
		// revoke picks what to revoke from the parent and the child.
		revoke func(parent, child *Token) Revocation
		// parentDenied and siblingDenied say what else dies.
		parentDenied, siblingDenied bool
		block                       int
	}{
		{"parent token id", func(p, _ *Token) Revocation { return Revocation{By: RevokeToken, Value: p.ID()} }, true, true, 0},
		{"child token id", func(_, c *Token) Revocation { return Revocation{By: RevokeToken, Value: c.ID()} }, false, false, 1},
		{"first holder", func(_, _ *Token) Revocation { return Revocation{By: RevokeHolder, Value: "agent:a"} }, true, true, 0},
		{"sub-holder", func(_, _ *Token) Revocation { return Revocation{By: RevokeHolder, Value: "agent:b"} }, false, false, 1},
		{"principal", func(_, _ *Token) Revocation { return Revocation{By: RevokePrincipal, Value: "user:bob"} }, true, true, 0},
		{"task", func(_, _ *Token) Revocation { return Revocation{By: RevokeTask, Value: "T"} }, false, false, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, "calendar:bob#owner@user:bob")
			parentText := f.mint(bobRead)
			childText := f.attenuate(parentText, Narrowing{Holder: &rel.Object{Type: "agent", ID: "b"}, Task: "T"})
			siblingText := f.attenuate(parentText, Narrowing{Holder: &rel.Object{Type: "agent", ID: "c"}})
			parent, _ := Inspect(parentText)
			child, _ := Inspect(childText)
			// Verified and cached before the revocation: the cache must not
			// hide it.
			f.expect(f.checkTask(childText, "calendar:bob#read", "agent:b", "T", 0), true, ReasonNone, 1)
			rev, err := Revoke(f.ctx, f.st, tc.revoke(parent, child))
			if err != nil {
				t.Fatal(err)
			}
			f.expect(f.checkTask(childText, "calendar:bob#read", "agent:b", "T", rev), false, ReasonRevoked, tc.block)
			want := func(d Decision, denied bool) {
				t.Helper()
				if d.Allowed == denied || (denied && d.Reason != ReasonRevoked) {
					t.Fatalf("decision %+v, want denied=%v by revocation", d, denied)
				}
			}
			want(f.check(parentText, "calendar:bob#read", "agent:a", rev), tc.parentDenied)
			want(f.check(siblingText, "calendar:bob#read", "agent:c", rev), tc.siblingDenied)
		})
	}
}

// A check at least as fresh as a revocation is denied on a replica that
// has not applied it yet: it waits, and fails closed when the revocations
// do not catch up in time.
func TestRevocationFreshnessOnAnotherReplica(t *testing.T) {
	f := newFixture(t, "calendar:bob#owner@user:bob")
	tok := f.mint(bobRead)
	parsed, _ := Inspect(tok)

	// The second replica's revocation set is loaded but not following.
	lagging := NewRevocationSet()
	recs, at, err := f.st.ReadRecords(f.ctx, RevocationKind)
	if err != nil {
		t.Fatal(err)
	}
	if err := lagging.Load(recs, at); err != nil {
		t.Fatal(err)
	}
	replica := &Checker{Keys: f.keys, Verifier: NewVerifier(f.keys, VerifierOptions{Now: f.clock.now}), Revocations: lagging,
		RevocationWait: 50 * time.Millisecond, Now: f.clock.now}
	check := func(atLeast store.Revision) Decision {
		d, err := replica.Check(f.ctx, ForEngine(f.eng), CheckRequest{Token: tok, Resource: obj("calendar:bob"), Permission: "read", Subject: obj("agent:a"), Revision: atLeast})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	f.expect(check(0), true, ReasonNone, 0)
	rev, err := Revoke(f.ctx, f.st, Revocation{By: RevokeToken, Value: parsed.ID(), RevokedAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	f.expect(check(rev), false, ReasonRevocationsBehind, 0)

	// Once it follows the stream, it catches up within the wait.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	replica.RevocationWait = 5 * time.Second
	wg.Go(func() { _ = Follow(ctx, f.st, lagging) })
	f.expect(check(rev), false, ReasonRevoked, 0)
	if got := lagging.List(); len(got) != 1 || got[0].Value != parsed.ID() || got[0].Revision != rev {
		t.Fatalf("List = %+v, want the one revocation at revision %d", got, rev)
	}
}

func TestRevokeRefusesBadInput(t *testing.T) {
	f := newFixture(t)
	for _, r := range []Revocation{
		{By: RevokeToken, Value: "not-hex"},
		{By: RevokeHolder, Value: "agent"},
		{By: RevokeTask, Value: ""},
		{By: "everything", Value: "x"},
	} {
		if _, err := Revoke(f.ctx, f.st, r); err == nil {
			t.Errorf("Revoke(%+v) succeeded", r)
		}
	}
	if head, _ := f.st.Head(f.ctx); head != 1 {
		t.Fatalf("refused revocations moved the head to %d", head)
	}
}

func TestPruneRevocations(t *testing.T) {
	f := newFixture(t)
	now := time.Now()
	rev, err := Revoke(f.ctx, f.st,
		Revocation{By: RevokeToken, Value: strings.Repeat("a", 32), Until: now.Add(-time.Minute)},
		Revocation{By: RevokeToken, Value: strings.Repeat("b", 32), Until: now.Add(time.Hour)},
		Revocation{By: RevokeHolder, Value: "agent:a"})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := PruneRevocations(f.ctx, f.st, now); err != nil || n != 1 {
		t.Fatalf("PruneRevocations = %d, %v; want 1", n, err)
	}
	if err := f.c.Revocations.WaitFor(f.ctx, rev+1); err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, r := range f.c.Revocations.List() {
		left = append(left, r.Value)
	}
	if strings.Join(left, ",") != "agent:a,"+strings.Repeat("b", 32) && strings.Join(left, ",") != strings.Repeat("b", 32)+",agent:a" {
		t.Fatalf("revocations after pruning: %v", left)
	}
	if n, err := PruneRevocations(f.ctx, f.st, now); err != nil || n != 0 {
		t.Fatalf("second PruneRevocations = %d, %v; want 0", n, err)
	}
}
