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
