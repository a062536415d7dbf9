package engine_test

import (
	"context"
	"strings"
	"testing"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/store/rel"
)

// TestSubjectForms checks each form of subject against relations that allow
// only some forms: the engine skips searching for forms a relation cannot
// hold, and must still find every form it can.
func TestSubjectForms(t *testing.T) {
	ctx := context.Background()
	e, err := engine.Load(ctx, `
definition user {}
definition group {
  relation member: user | group#member
}
definition doc {
  relation public: user:*
  relation team: group#member
  relation both: user | user:*
  permission view = public + team + both
}`, mustParse(t,
		"doc:d#public@user:*",
		"doc:d#team@group:g#member",
		"group:g#member@user:ann",
		"doc:e#both@user:*",
		"doc:e#both@user:bob",
	))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		res, perm, sub string
		want           engine.Decision
	}{
		{"doc:d", "public", "user:*", engine.Allowed},
		{"doc:d", "public", "user:zed", engine.Allowed},
		{"doc:d", "team", "group:g#member", engine.Allowed},
		{"doc:d", "team", "user:ann", engine.Allowed},
		{"doc:d", "team", "user:zed", engine.Denied},
		{"doc:d", "view", "user:*", engine.Allowed},
		{"doc:e", "both", "user:*", engine.Allowed},
		{"doc:e", "both", "user:bob", engine.Allowed},
		{"doc:e", "team", "user:*", engine.Denied},
		{"doc:e", "view", "group:g#member", engine.Denied},
	}
	for _, tt := range tests {
		typ, id, _ := strings.Cut(tt.res, ":")
		res := rel.Object{Type: typ, ID: id}
		got, err := e.Check(ctx, engine.CheckRequest{Resource: res, Permission: tt.perm, Subject: subject(t, tt.sub)})
		if err != nil || got.Decision != tt.want {
			t.Errorf("%s#%s@%s: got %v %v, want %v", tt.res, tt.perm, tt.sub, got.Decision, err, tt.want)
		}
	}
}

// TestSelf checks `self` wherever it can stand: alone, in a union, behind
// an arrow, in an intersection and an exclusion, and in lookups. (Subject
// kind reachability must count the object itself among what `self` holds.)
func TestSelf(t *testing.T) {
	ctx := context.Background()
	const sch = `use self

definition user {
	relation blocked: user
	relation friend: user
	permission myself = self
	permission me_or_friend = self + friend
	permission me_unless_blocked = self - blocked
	permission me_and_friend = self & friend
}

definition doc {
	relation author: user
	permission author_self = author->myself
}`
	e, err := engine.Load(ctx, sch, mustParse(t,
		"user:ann#friend@user:bob",
		"user:cat#blocked@user:cat",
		"user:dan#friend@user:dan",
		"doc:1#author@user:ann",
	))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		check string
		want  engine.Decision
	}{
		{"user:ann#myself@user:ann", engine.Allowed},
		{"user:ann#myself@user:bob", engine.Denied},
		{"user:zed#myself@user:zed", engine.Allowed}, // named in no relationship
		{"user:ann#me_or_friend@user:ann", engine.Allowed},
		{"user:ann#me_or_friend@user:bob", engine.Allowed},
		{"user:ann#me_or_friend@user:cat", engine.Denied},
		{"user:ann#me_unless_blocked@user:ann", engine.Allowed},
		{"user:cat#me_unless_blocked@user:cat", engine.Denied},
		{"user:ann#me_and_friend@user:ann", engine.Denied},
		{"user:dan#me_and_friend@user:dan", engine.Allowed},
		{"doc:1#author_self@user:ann", engine.Allowed},
		{"doc:1#author_self@user:bob", engine.Denied},
	} {
		resPerm, sub, _ := strings.Cut(tt.check, "@")
		res, perm, _ := strings.Cut(resPerm, "#")
		r, err := e.Check(ctx, engine.CheckRequest{Resource: mustObject(t, res), Permission: perm, Subject: subject(t, sub)})
		if err != nil {
			t.Fatalf("%s: %v", tt.check, err)
		}
		if r.Decision != tt.want {
			t.Errorf("%s: got %v, want %v", tt.check, r.Decision, tt.want)
		}
	}
	found, _, err := e.LookupResources(ctx, engine.LookupResourcesRequest{ResourceType: "doc", Permission: "author_self", Subject: rel.Subject{Type: "user", ID: "ann"}})
	if err != nil || len(found) != 1 || found[0].ID != "1" {
		t.Errorf("LookupResources doc#author_self for ann: %v, %v; want doc:1", found, err)
	}
}
