package server_test

import (
	"io"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/server/audit"
)

// TestContextualRelationships drives mandate.v1's contextual_relationships
// over gRPC and REST against a running server: they grant for the request
// that carries them, in Check, CheckBulk and both lookups; the next request
// without them is denied; the store does not change; the explanation echoes
// them and the audit event names them; bad ones and too many are refused
// with the field named.
func TestContextualRelationships(t *testing.T) {
	rec := &recorder{}
	ts := startServer(t, func(c *server.Config) {
		c.Audit = rec
		c.Limits.MaxContextualRelationships = 3
	})
	ts.writeSchema(testSchema)
	tok := ts.write(update(touch, mustParse(t, "doc:1#viewer@group:eng#member", "group:eng#member@user:ann")...)...)
	before := ts.state()
	rec.take()

	member := mustParse(t, "group:eng#member@user:bob")
	check := func(rels []*pb.Relationship) (*pb.CheckResponse, error) {
		return ts.perm.Check(ts.ctx(), &pb.CheckRequest{Resource: obj("doc", "1"), Permission: "view", Subject: subj("user", "bob"),
			Consistency: fresh(tok), Explain: true, ContextualRelationships: rels})
	}
	for round := range 2 {
		res, err := check(member)
		if err != nil || res.GetDecision() != pb.Decision_DECISION_ALLOWED {
			t.Fatalf("round %d: with the contextual membership: %v %v", round, res.GetDecision(), err)
		}
		if got := res.GetContextualRelationships(); len(got) != 1 || relText(got[0]) != "group:eng#member@user:bob" {
			t.Errorf("explanation echoes %v", got)
		}
		ev := one(t, rec.take())
		if !slices.Equal(ev.Contextual, []string{"group:eng#member@user:bob"}) || ev.Decision != audit.Allowed {
			t.Errorf("audit event: contextual %v decision %v", ev.Contextual, ev.Decision)
		}
		res, err = check(nil)
		if err != nil || res.GetDecision() != pb.Decision_DECISION_DENIED {
			t.Fatalf("round %d: the next check without them: %v %v", round, res.GetDecision(), err)
		}
		if ev := one(t, rec.take()); ev.Contextual != nil {
			t.Errorf("a check without them names %v", ev.Contextual)
		}
	}

	bulk, err := ts.perm.CheckBulk(ts.ctx(), &pb.CheckBulkRequest{Consistency: fresh(tok), ContextualRelationships: mustParse(t, "doc:2#viewer@user:bob"),
		Items: []*pb.CheckBulkRequestItem{
			{Resource: obj("doc", "1"), Permission: "view", Subject: subj("user", "bob")},
			{Resource: obj("doc", "2"), Permission: "view", Subject: subj("user", "bob")},
		}})
	if err != nil {
		t.Fatal(err)
	}
	if d := []pb.Decision{bulk.GetPairs()[0].GetItem().GetDecision(), bulk.GetPairs()[1].GetItem().GetDecision()}; d[0] != pb.Decision_DECISION_DENIED || d[1] != pb.Decision_DECISION_ALLOWED {
		t.Errorf("bulk: %v", d)
	}
	if evs := rec.take(); len(evs) != 2 || !slices.Equal(evs[1].Contextual, []string{"doc:2#viewer@user:bob"}) {
		t.Errorf("bulk events: %+v", evs)
	}

	stream, err := ts.perm.LookupResources(ts.ctx(), &pb.LookupResourcesRequest{ResourceObjectType: "doc", Permission: "view",
		Subject: subj("user", "bob"), Consistency: fresh(tok), ContextualRelationships: append(member, mustParse(t, "doc:9#viewer@user:bob")...)})
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for {
		r, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		found = append(found, r.GetResourceObjectId())
	}
	if !slices.Equal(found, []string{"1", "9"}) {
		t.Errorf("lookup resources: %v, want [1 9]", found)
	}
	subs, err := ts.perm.LookupSubjects(ts.ctx(), &pb.LookupSubjectsRequest{Resource: obj("doc", "1"), Permission: "view",
		SubjectObjectType: "user", Consistency: fresh(tok), ContextualRelationships: member})
	if err != nil {
		t.Fatal(err)
	}
	found = nil
	for {
		r, err := subs.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		found = append(found, r.GetSubjectObjectId())
	}
	if !slices.Equal(found, []string{"ann", "bob"}) {
		t.Errorf("lookup subjects: %v, want [ann bob]", found)
	}
	rec.take()

	// REST, through the gateway: the JSON field is contextualRelationships.
	code, body := ts.restCall("/v1/permissions/check", testKey, map[string]any{
		"resource": map[string]any{"objectType": "doc", "objectId": "1"}, "permission": "view",
		"subject":                 map[string]any{"object": map[string]any{"objectType": "user", "objectId": "bob"}},
		"contextualRelationships": []any{jsonRel("group", "eng", "member", "user", "bob")},
	})
	if code != 200 || body["decision"] != "DECISION_ALLOWED" {
		t.Errorf("REST check: %d %v", code, body)
	}

	refused := []struct {
		name string
		rels []*pb.Relationship
		want []string
	}{
		{"a relation the type lacks", mustParse(t, "doc:1#owner@group:eng#member"), []string{"contextual relationship 0", "not allowed on doc#owner"}},
		{"a permission", mustParse(t, "doc:1#view@user:bob"), []string{"contextual relationship 0", "is a permission"}},
		{"an undefined type", mustParse(t, "folder:1#viewer@user:bob"), []string{`"folder" is not defined`}},
		{"a caveat the relation does not allow", mustParse(t, `doc:1#owner@user:bob[within_limit]`), []string{"not allowed on doc#owner"}},
		{"too many", mustParse(t, "doc:1#viewer@user:a", "doc:1#viewer@user:b", "doc:1#viewer@user:c", "doc:1#viewer@user:d"), []string{"contextual_relationships", "at most 3", "--max-contextual-relationships"}},
		{"no subject", []*pb.Relationship{{Resource: obj("doc", "1"), Relation: "viewer"}}, []string{"contextual_relationships[0]"}},
	}
	for _, tc := range refused {
		_, err := check(tc.rels)
		wantCode(t, err, codes.InvalidArgument, tc.want...)
		if t.Failed() {
			t.Fatalf("%s", tc.name)
		}
	}
	if after := ts.state(); !after.equal(before) {
		t.Errorf("the store changed: %v, was %v", after, before)
	}
	if !strings.Contains(strings.Join(before.rels, " "), "user:ann") || strings.Contains(strings.Join(before.rels, " "), "bob") {
		t.Errorf("store holds %v", before.rels)
	}
}
