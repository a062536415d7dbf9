package capability

import (
	"slices"
	"testing"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/store/rel"
)

// LookupResources with a token lists the principal's resources the token
// allows, and nothing once the token is revoked.
func TestLookupWithToken(t *testing.T) {
	f := newFixture(t, "calendar:bob#owner@user:bob", "calendar:team#owner@user:bob", "calendar:other#owner@user:alice")
	g := bobRead
	g.Rights = []Right{{Type: "calendar", Permissions: []string{"read"}}}
	parent := f.mint(g)
	child := f.attenuate(parent, Narrowing{Holder: &rel.Object{Type: "agent", ID: "b"}, Rights: []Right{{Type: "calendar", ID: "team", Permissions: []string{"read"}}}})
	lookup := func(text, subject string) ([]string, Decision) {
		t.Helper()
		scope, d := f.c.Lookup(ForEngine(f.eng), LookupRequest{Token: text, ResourceType: "calendar", Permission: "read", Subject: obj(subject)})
		if scope == nil {
			return nil, d
		}
		res, rev, err := f.eng.LookupResources(f.ctx, engine.LookupResourcesRequest{ResourceType: "calendar", Permission: "read",
			Subject: rel.Subject{Type: scope.Principal.Type, ID: scope.Principal.ID}, Context: scope.Context})
		if err != nil {
			t.Fatal(err)
		}
		if d, ok := scope.Confirm(f.ctx, rev); !ok {
			return nil, d
		}
		var ids []string
		for _, r := range res {
			if scope.Keep(r.ID) {
				ids = append(ids, r.ID)
			}
		}
		return ids, d
	}
	if ids, d := lookup(parent, "agent:a"); !slices.Equal(ids, []string{"bob", "team"}) {
		t.Fatalf("parent lookup = %v (%+v), want bob and team", ids, d)
	}
	if ids, d := lookup(child, "agent:b"); !slices.Equal(ids, []string{"team"}) {
		t.Fatalf("child lookup = %v (%+v), want team", ids, d)
	}
	if _, d := lookup(child, "agent:a"); d.Reason != ReasonWrongHolder {
		t.Fatalf("lookup by a non-holder: %+v", d)
	}
	scope, d := f.c.Lookup(ForEngine(f.eng), LookupRequest{Token: child, ResourceType: "calendar", Permission: "write", Subject: obj("agent:b")})
	if scope != nil || d.Reason != ReasonOutOfScope {
		t.Fatalf("lookup of a permission the token lacks: %+v", d)
	}
	parsed, _ := Inspect(parent)
	rev, err := Revoke(f.ctx, f.st, Revocation{By: RevokeToken, Value: parsed.ID()})
	if err != nil {
		t.Fatal(err)
	}
	// A lookup at least as fresh as the revocation (the engine has reached
	// its revision) sees it: Lookup itself or Confirm denies.
	if err := f.eng.WaitForRevision(f.ctx, rev); err != nil {
		t.Fatal(err)
	}
	if ids, d := lookup(child, "agent:b"); ids != nil || d.Reason != ReasonRevoked {
		t.Fatalf("lookup after revoking the parent = %v, %+v", ids, d)
	}
}
