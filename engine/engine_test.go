package engine_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

const docSchema = `
use expiration

caveat ip_allowed(ip string, allowed string) {
  ip == allowed
}

definition user {}

definition group {
  relation member: user | group#member
}

definition folder {
  relation parent: folder
  relation viewer: user | group#member | user:*
  relation banned: user
  permission view = (viewer + parent->view) - banned
}

definition doc {
  relation folder: folder
  relation owner: user
  relation viewer: user | user with ip_allowed | user with expiration
  permission edit = owner
  permission view = edit + viewer + folder->view
}
`

func mustParse(t *testing.T, lines ...string) []rel.Relationship {
	t.Helper()
	out := make([]rel.Relationship, len(lines))
	for i, l := range lines {
		r, err := rel.Parse(l)
		if err != nil {
			t.Fatalf("parse %q: %v", l, err)
		}
		out[i] = r
	}
	return out
}

func subject(t *testing.T, s string) rel.Subject {
	t.Helper()
	sub, err := rel.ParseSubject(s)
	if err != nil {
		t.Fatal(err)
	}
	return sub
}

func loadDocs(t *testing.T) *engine.Engine {
	t.Helper()
	e, err := engine.Load(context.Background(), docSchema, mustParse(t,
		"doc:readme#owner@user:ann",
		"doc:readme#folder@folder:eng",
		"doc:readme#viewer@user:cat[ip_allowed:{\"allowed\":\"10.0.0.1\"}]",
		"doc:readme#viewer@user:old[expiration:2001-01-01T00:00:00Z]",
		"folder:eng#parent@folder:root",
		"folder:root#viewer@group:staff#member",
		"group:staff#member@group:interns#member",
		"group:interns#member@user:ivy",
		"folder:eng#banned@user:bob",
		"folder:public#viewer@user:*",
		"folder:public#banned@user:eve",
	))
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestCheck(t *testing.T) {
	e := loadDocs(t)
	tests := []struct {
		name    string
		check   string
		subject string
		ctx     map[string]any
		want    engine.Decision
		missing []string
	}{
		{"owner via computed permission", "doc:readme#view", "user:ann", nil, engine.Allowed, nil},
		{"nested group through arrow chain", "doc:readme#view", "user:ivy", nil, engine.Allowed, nil},
		{"userset subject is a member of itself", "group:staff#member", "group:staff#member", nil, engine.Allowed, nil},
		{"userset subject through nesting", "folder:root#view", "group:interns#member", nil, engine.Allowed, nil},
		{"stranger", "doc:readme#view", "user:zed", nil, engine.Denied, nil},
		{"caveat without context is conditional", "doc:readme#view", "user:cat", nil, engine.Conditional, []string{"ip"}},
		{"caveat satisfied", "doc:readme#view", "user:cat", map[string]any{"ip": "10.0.0.1"}, engine.Allowed, nil},
		{"caveat refused", "doc:readme#view", "user:cat", map[string]any{"ip": "10.9.9.9"}, engine.Denied, nil},
		{"expired relationship grants nothing", "doc:readme#view", "user:old", nil, engine.Denied, nil},
		{"wildcard", "folder:public#view", "user:anyone", nil, engine.Allowed, nil},
		{"exclusion beats wildcard", "folder:public#view", "user:eve", nil, engine.Denied, nil},
		{"exclusion on an ancestor's folder", "folder:eng#view", "user:bob", nil, engine.Denied, nil},
		{"unknown resource", "doc:nothing#view", "user:ann", nil, engine.Denied, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			obj, perm, err := rel.ParseObjectRelation(tt.check)
			if err != nil {
				t.Fatal(err)
			}
			res, err := e.Check(context.Background(), engine.CheckRequest{Resource: obj, Permission: perm, Subject: subject(t, tt.subject), Context: tt.ctx})
			if err != nil {
				t.Fatal(err)
			}
			if res.Decision != tt.want || !slices.Equal(res.Missing, tt.missing) {
				t.Errorf("got %v missing %v, want %v missing %v", res.Decision, res.Missing, tt.want, tt.missing)
			}
			if res.Revision != e.Head() {
				t.Errorf("answered at revision %d, head is %d", res.Revision, e.Head())
			}
		})
	}
}

func TestCheckErrors(t *testing.T) {
	e := loadDocs(t)
	tests := []struct {
		name string
		req  engine.CheckRequest
		want error
	}{
		{"unknown resource type", engine.CheckRequest{Resource: rel.Object{Type: "nope", ID: "1"}, Permission: "view", Subject: rel.Subject{Type: "user", ID: "a"}}, engine.ErrUnknownType},
		{"unknown permission", engine.CheckRequest{Resource: rel.Object{Type: "doc", ID: "1"}, Permission: "nope", Subject: rel.Subject{Type: "user", ID: "a"}}, engine.ErrUnknownRelation},
		{"unknown subject type", engine.CheckRequest{Resource: rel.Object{Type: "doc", ID: "1"}, Permission: "view", Subject: rel.Subject{Type: "robot", ID: "a"}}, engine.ErrUnknownType},
		{"unknown subject relation", engine.CheckRequest{Resource: rel.Object{Type: "doc", ID: "1"}, Permission: "view", Subject: rel.Subject{Type: "group", ID: "a", Relation: "owner"}}, engine.ErrUnknownRelation},
		{"caveat context of the wrong type", engine.CheckRequest{Resource: rel.Object{Type: "doc", ID: "readme"}, Permission: "view", Subject: rel.Subject{Type: "user", ID: "cat"}, Context: map[string]any{"ip": []any{"x"}}}, engine.ErrInvalidContext},
		{"revision ahead", engine.CheckRequest{Resource: rel.Object{Type: "doc", ID: "1"}, Permission: "view", Subject: rel.Subject{Type: "user", ID: "a"}, Revision: 99}, engine.ErrRevisionAhead},
		{"on_behalf_of for a person", engine.CheckRequest{Resource: rel.Object{Type: "doc", ID: "1"}, Permission: "view", Subject: rel.Subject{Type: "user", ID: "a"}, OnBehalfOf: &rel.Object{Type: "user", ID: "b"}}, engine.ErrInvalidOnBehalfOf},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.Check(context.Background(), tt.req)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got error %v, want %v", err, tt.want)
			}
		})
	}
}

func TestMaxDepth(t *testing.T) {
	var lines []string
	for i := 0; i < 60; i++ {
		lines = append(lines, "group:g"+itoa(i)+"#member@group:g"+itoa(i+1)+"#member")
	}
	lines = append(lines, "group:g"+itoa(60)+"#member@user:deep")
	e, err := engine.Load(context.Background(), docSchema, mustParse(t, lines...))
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.Check(context.Background(), engine.CheckRequest{Resource: rel.Object{Type: "group", ID: "g" + itoa(0)}, Permission: "member", Subject: rel.Subject{Type: "user", ID: "deep"}})
	if !errors.Is(err, engine.ErrMaxDepth) {
		t.Fatalf("got %v, want ErrMaxDepth", err)
	}
	// A cycle in the data is not an error: it adds nothing.
	e, err = engine.Load(context.Background(), docSchema, mustParse(t,
		"group:a#member@group:b#member", "group:b#member@group:a#member", "group:b#member@user:x"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"x", "y"} {
		res, err := e.Check(context.Background(), engine.CheckRequest{Resource: rel.Object{Type: "group", ID: "a"}, Permission: "member", Subject: rel.Subject{Type: "user", ID: s}})
		if err != nil {
			t.Fatal(err)
		}
		if want := map[string]engine.Decision{"x": engine.Allowed, "y": engine.Denied}[s]; res.Decision != want {
			t.Errorf("user:%s: got %v want %v", s, res.Decision, want)
		}
	}
}

func itoa(i int) string { return string(rune('a'+i/26)) + string(rune('a'+i%26)) }

func TestRevisions(t *testing.T) {
	ctx := context.Background()
	e := loadDocs(t)
	before := e.Head()
	ann := mustParse(t, "doc:readme#owner@user:ann")[0]
	if err := e.Apply(store.Change{Revision: before + 1, Updates: []store.Update{{Op: store.Delete, Rel: ann}}}); err != nil {
		t.Fatal(err)
	}
	req := engine.CheckRequest{Resource: rel.Object{Type: "doc", ID: "readme"}, Permission: "edit", Subject: rel.Subject{Type: "user", ID: "ann"}}
	now, err := e.Check(ctx, req)
	if err != nil || now.Decision != engine.Denied {
		t.Fatalf("after revoke: %v %v, want denied", now.Decision, err)
	}
	req.Revision = before
	then, err := e.Check(ctx, req)
	if err != nil || then.Decision != engine.Allowed || then.Revision != before {
		t.Fatalf("at the earlier snapshot: %v at %d, %v; want allowed at %d", then.Decision, then.Revision, err, before)
	}
	e.ForgetBefore(before + 1)
	if _, err := e.Check(ctx, req); !errors.Is(err, engine.ErrRevisionGone) {
		t.Fatalf("after compaction: got %v, want ErrRevisionGone", err)
	}
	// Touch over a deleted key restores it; replaying an old change is harmless.
	if err := e.Apply(store.Change{Revision: before + 2, Updates: []store.Update{{Op: store.Touch, Rel: ann}}}); err != nil {
		t.Fatal(err)
	}
	if err := e.Apply(store.Change{Revision: before + 1, Updates: []store.Update{{Op: store.Delete, Rel: ann}}}); err != nil {
		t.Fatal(err)
	}
	req.Revision = 0
	if res, _ := e.Check(ctx, req); res.Decision != engine.Allowed {
		t.Fatalf("after re-grant: %v, want allowed", res.Decision)
	}
}

func TestExpirationIsEvaluatedAtCheckTime(t *testing.T) {
	clock := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	e, err := engine.Load(context.Background(), docSchema, mustParse(t,
		"doc:d#viewer@user:tmp[expiration:2030-01-01T00:00:10Z]"), engine.WithClock(func() time.Time { return clock }))
	if err != nil {
		t.Fatal(err)
	}
	req := engine.CheckRequest{Resource: rel.Object{Type: "doc", ID: "d"}, Permission: "view", Subject: rel.Subject{Type: "user", ID: "tmp"}}
	if res, _ := e.Check(context.Background(), req); res.Decision != engine.Allowed {
		t.Fatalf("before expiry: %v", res.Decision)
	}
	clock = clock.Add(10 * time.Second)
	if res, _ := e.Check(context.Background(), req); res.Decision != engine.Denied {
		t.Fatalf("at expiry: %v, want denied", res.Decision)
	}
	res, _, err := e.LookupResources(context.Background(), engine.LookupResourcesRequest{ResourceType: "doc", Permission: "view", Subject: req.Subject})
	if err != nil || len(res) != 0 {
		t.Fatalf("lookup after expiry: %v %v", res, err)
	}
}

func TestLookups(t *testing.T) {
	ctx := context.Background()
	e := loadDocs(t)
	res, _, err := e.LookupResources(ctx, engine.LookupResourcesRequest{ResourceType: "doc", Permission: "view", Subject: rel.Subject{Type: "user", ID: "cat"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || res[0].ID != "readme" || res[0].Decision != engine.Conditional || !slices.Equal(res[0].Missing, []string{"ip"}) {
		t.Fatalf("LookupResources for cat: %+v", res)
	}

	subs, _, err := e.LookupSubjects(ctx, engine.LookupSubjectsRequest{Resource: rel.Object{Type: "folder", ID: "public"}, Permission: "view", SubjectType: "user"})
	if err != nil {
		t.Fatal(err)
	}
	if len(subs) == 0 || subs[0].ID != rel.Wildcard || subs[0].Decision != engine.Allowed {
		t.Fatalf("LookupSubjects on a public folder: want a wildcard first, got %+v", subs)
	}
	var excluded []string
	for _, x := range subs[0].Excluded {
		excluded = append(excluded, x.ID)
	}
	if !slices.Contains(excluded, "eve") {
		t.Fatalf("wildcard must exclude eve, excludes %v", excluded)
	}

	subs, _, err = e.LookupSubjects(ctx, engine.LookupSubjectsRequest{Resource: rel.Object{Type: "doc", ID: "readme"}, Permission: "view", SubjectType: "user"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range subs {
		got = append(got, s.ID+":"+s.Decision.String())
	}
	want := []string{"ann:allowed", "cat:conditional", "ivy:allowed"}
	if !slices.Equal(got, want) {
		t.Fatalf("LookupSubjects on readme: got %v want %v", got, want)
	}
}

func TestExpand(t *testing.T) {
	e := loadDocs(t)
	tree, err := e.Expand(context.Background(), rel.Object{Type: "folder", ID: "root"}, "viewer", 0, true)
	if err != nil {
		t.Fatal(err)
	}
	var leaves []string
	var walk func(n *engine.ExpandNode)
	walk = func(n *engine.ExpandNode) {
		for _, s := range n.Subjects {
			leaves = append(leaves, n.Object.String()+"#"+n.Relation+">"+s.Subject.String())
		}
		for _, c := range n.Children {
			walk(c)
		}
	}
	walk(tree)
	want := []string{"folder:root#viewer>group:staff#member", "group:staff#member>group:interns#member", "group:interns#member>user:ivy"}
	if !slices.Equal(leaves, want) {
		t.Fatalf("recursive expand leaves: got %v want %v", leaves, want)
	}
}

func TestCheckBulkIsolatesErrors(t *testing.T) {
	e := loadDocs(t)
	results, errs := e.CheckBulk(context.Background(), []engine.CheckRequest{
		{Resource: rel.Object{Type: "doc", ID: "readme"}, Permission: "view", Subject: rel.Subject{Type: "user", ID: "ann"}},
		{Resource: rel.Object{Type: "doc", ID: "readme"}, Permission: "nope", Subject: rel.Subject{Type: "user", ID: "ann"}},
		{Resource: rel.Object{Type: "doc", ID: "readme"}, Permission: "view", Subject: rel.Subject{Type: "user", ID: "zed"}},
	})
	if errs[0] != nil || results[0].Decision != engine.Allowed {
		t.Errorf("item 0: %v %v", results[0].Decision, errs[0])
	}
	if !errors.Is(errs[1], engine.ErrUnknownRelation) {
		t.Errorf("item 1: want ErrUnknownRelation, got %v", errs[1])
	}
	if errs[2] != nil || results[2].Decision != engine.Denied {
		t.Errorf("item 2: %v %v", results[2].Decision, errs[2])
	}
}

func TestLoadRejectsInvalidRelationships(t *testing.T) {
	tests := map[string]string{
		"undefined type":            "robot:r#viewer@user:a",
		"permission, not relation":  "doc:d#view@user:a",
		"subject type not allowed":  "doc:d#owner@group:g#member",
		"caveat where none allowed": "doc:d#owner@user:a[ip_allowed]",
		"expiration not allowed":    "doc:d#owner@user:a[expiration:2030-01-01T00:00:00Z]",
	}
	for name, line := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := engine.Load(context.Background(), docSchema, mustParse(t, line)); err == nil {
				t.Fatalf("%s loaded without error", line)
			}
		})
	}
}
