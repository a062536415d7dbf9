package server_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server"
)

// smallLimits makes the limits cheap to exceed.
func smallLimits(c *server.Config) {
	c.Limits.MaxMessageBytes = 64 << 10
	c.Limits.MaxWriteUpdates = 10
	c.Limits.MaxCheckBulkItems = 10
	c.Limits.MaxLookupLimit = 50
	c.Limits.MaxDeleteLimit = 2
}

// TestBadInputGRPC sends malformed, unknown, oversized and unauthenticated
// requests: each must fail with the right code and a message naming the
// problem, and leave the store exactly as it was.
func TestBadInputGRPC(t *testing.T) {
	ts := startServer(t, smallLimits)
	token := ts.seed()
	other := startServer(t, nil)
	foreign := other.writeSchema(testSchema)

	tampered := []byte(token)
	tampered[len(tampered)/2] ^= 0x01
	noKey := pb.NewRelationshipServiceClient(ts.dial(""))
	wrongKey := pb.NewRelationshipServiceClient(ts.dial("not-the-key-81d2"))
	noKeyPerm := pb.NewPermissionServiceClient(ts.dial(""))
	good := mustParse(t, "doc:new#viewer@user:ann")[0]

	writeOne := func(r *pb.Relationship) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := ts.rels.WriteRelationships(ctx, &pb.WriteRelationshipsRequest{Updates: update(create, r)})
			return err
		}
	}
	check := func(mutate func(*pb.CheckRequest)) func(context.Context) error {
		return func(ctx context.Context) error {
			req := &pb.CheckRequest{Consistency: fresh(token), Resource: obj("doc", "readme"), Permission: "view", Subject: subj("user", "carl")}
			mutate(req)
			_, err := ts.perm.Check(ctx, req)
			return err
		}
	}
	withRel := func(mutate func(*pb.Relationship)) *pb.Relationship {
		r := mustParse(t, "doc:new#viewer@user:ann")[0]
		mutate(r)
		return r
	}
	recvErr := func(recv func() error) error {
		for {
			if err := recv(); err != nil {
				if err == io.EOF {
					return nil
				}
				return err
			}
		}
	}

	cases := []struct {
		name      string
		call      func(context.Context) error
		code      codes.Code
		fragments []string
	}{
		{"write: unknown resource type", writeOne(withRel(func(r *pb.Relationship) { r.Resource.ObjectType = "widget" })), codes.InvalidArgument, []string{"widget"}},
		{"write: unknown relation", writeOne(withRel(func(r *pb.Relationship) { r.Relation = "editor" })), codes.InvalidArgument, []string{"editor"}},
		{"write: subject type not allowed", writeOne(withRel(func(r *pb.Relationship) {
			r.Relation = "owner"
			r.Subject = &pb.SubjectReference{Object: obj("group", "eng"), OptionalRelation: "member"}
		})), codes.InvalidArgument, []string{"group#member", "not allowed"}},
		{"write: malformed resource ID", writeOne(withRel(func(r *pb.Relationship) { r.Resource.ObjectId = "has space" })), codes.InvalidArgument, []string{"updates[0].relationship.resource", "has space"}},
		{"write: malformed type name", writeOne(withRel(func(r *pb.Relationship) { r.Resource.ObjectType = "Doc" })), codes.InvalidArgument, []string{"Doc"}},
		{"write: missing subject", writeOne(withRel(func(r *pb.Relationship) { r.Subject = nil })), codes.InvalidArgument, []string{"updates[0].relationship.subject", "required"}},
		{"write: caveat context of the wrong type", writeOne(mustParse(t, `doc:new#viewer@user:carl[within_limit:{"limit":"lots"}]`)[0]), codes.InvalidArgument, []string{"limit", "int"}},
		{"write: unknown caveat parameter", writeOne(mustParse(t, `doc:new#viewer@user:carl[within_limit:{"ceiling":1}]`)[0]), codes.InvalidArgument, []string{"ceiling"}},
		{"write: one bad update fails the whole write", func(ctx context.Context) error {
			_, err := ts.rels.WriteRelationships(ctx, &pb.WriteRelationshipsRequest{Updates: []*pb.RelationshipUpdate{
				{Operation: create, Relationship: good},
				{Operation: create, Relationship: withRel(func(r *pb.Relationship) { r.Relation = "editor" })},
			}})
			return err
		}, codes.InvalidArgument, []string{"editor"}},
		{"write: no operation", func(ctx context.Context) error {
			_, err := ts.rels.WriteRelationships(ctx, &pb.WriteRelationshipsRequest{Updates: []*pb.RelationshipUpdate{{Relationship: good}}})
			return err
		}, codes.InvalidArgument, []string{"updates[0].operation"}},
		{"write: too many updates", func(ctx context.Context) error {
			var ups []*pb.RelationshipUpdate
			for i := range 11 {
				ups = append(ups, update(create, mustParse(t, fmt.Sprintf("doc:n%d#viewer@user:ann", i))...)...)
			}
			_, err := ts.rels.WriteRelationships(ctx, &pb.WriteRelationshipsRequest{Updates: ups})
			return err
		}, codes.InvalidArgument, []string{"11 updates", "at most 10"}},
		{"write: oversized message", func(ctx context.Context) error {
			r := withRel(func(r *pb.Relationship) {
				r.OptionalCaveat = &pb.ContextualizedCaveat{CaveatName: "within_limit", Context: mustStruct(map[string]any{"pad": strings.Repeat("x", 100<<10)})}
			})
			return writeOne(r)(ctx)
		}, codes.ResourceExhausted, []string{"larger than max"}},
		{"write: no key", func(ctx context.Context) error {
			_, err := noKey.WriteRelationships(ctx, &pb.WriteRelationshipsRequest{Updates: update(create, good)})
			return err
		}, codes.Unauthenticated, []string{"missing credentials"}},
		{"write: wrong key", func(ctx context.Context) error {
			_, err := wrongKey.WriteRelationships(ctx, &pb.WriteRelationshipsRequest{Updates: update(create, good)})
			return err
		}, codes.Unauthenticated, []string{"invalid preshared key"}},
		{"check: no key", func(ctx context.Context) error {
			_, err := noKeyPerm.Check(ctx, &pb.CheckRequest{Resource: obj("doc", "readme"), Permission: "view", Subject: subj("user", "ann")})
			return err
		}, codes.Unauthenticated, nil},
		{"check: unknown permission", check(func(r *pb.CheckRequest) { r.Permission = "nope" }), codes.InvalidArgument, []string{"nope"}},
		{"check: unknown resource type", check(func(r *pb.CheckRequest) { r.Resource.ObjectType = "widget" }), codes.InvalidArgument, []string{"widget"}},
		{"check: unknown subject type", check(func(r *pb.CheckRequest) { r.Subject.Object.ObjectType = "robot" }), codes.InvalidArgument, []string{"robot"}},
		{"check: malformed resource ID", check(func(r *pb.CheckRequest) { r.Resource.ObjectId = "a/b c" }), codes.InvalidArgument, []string{"resource", "a/b c"}},
		{"check: missing permission", check(func(r *pb.CheckRequest) { r.Permission = "" }), codes.InvalidArgument, []string{"permission", "required"}},
		{"check: caveat context of the wrong type", check(func(r *pb.CheckRequest) { r.Context = mustStruct(map[string]any{"amount": "lots"}) }), codes.InvalidArgument, []string{"amount"}},
		{"check: malformed token", check(func(r *pb.CheckRequest) { r.Consistency = fresh("not a token!") }), codes.InvalidArgument, []string{"consistency.at_least_as_fresh", "malformed"}},
		{"check: tampered token", check(func(r *pb.CheckRequest) { r.Consistency = fresh(string(tampered)) }), codes.InvalidArgument, []string{"consistency.at_least_as_fresh"}},
		{"check: foreign token", check(func(r *pb.CheckRequest) {
			r.Consistency = &pb.Consistency{Requirement: &pb.Consistency_AtExactSnapshot{AtExactSnapshot: &pb.RevisionToken{Token: foreign}}}
		}), codes.InvalidArgument, []string{"consistency.at_exact_snapshot", "different Mandate store"}},
		{"check: empty token", check(func(r *pb.CheckRequest) { r.Consistency = fresh("") }), codes.InvalidArgument, []string{"empty"}},
		{"check: on_behalf_of for a non-agent", check(func(r *pb.CheckRequest) { r.OnBehalfOf = obj("user", "ann") }), codes.InvalidArgument, []string{"on_behalf_of"}},
		{"check bulk: too many items", func(ctx context.Context) error {
			items := make([]*pb.CheckBulkRequestItem, 11)
			for i := range items {
				items[i] = &pb.CheckBulkRequestItem{Resource: obj("doc", "readme"), Permission: "view", Subject: subj("user", "ann")}
			}
			_, err := ts.perm.CheckBulk(ctx, &pb.CheckBulkRequest{Items: items})
			return err
		}, codes.InvalidArgument, []string{"11 checks", "at most 10"}},
		{"lookup: limit over the maximum", func(ctx context.Context) error {
			s, err := ts.perm.LookupResources(ctx, &pb.LookupResourcesRequest{ResourceObjectType: "doc", Permission: "view", Subject: subj("user", "ann"), OptionalLimit: 51})
			if err != nil {
				return err
			}
			return recvErr(func() error { _, err := s.Recv(); return err })
		}, codes.InvalidArgument, []string{"optional_limit", "50"}},
		{"lookup: cursor of another request", func(ctx context.Context) error {
			s, err := ts.perm.LookupResources(ctx, &pb.LookupResourcesRequest{ResourceObjectType: "doc", Permission: "view", Subject: subj("user", "ann")})
			if err != nil {
				return err
			}
			first, err := s.Recv()
			if err != nil {
				return err
			}
			s, err = ts.perm.LookupResources(ctx, &pb.LookupResourcesRequest{ResourceObjectType: "doc", Permission: "view", Subject: subj("user", "bob"), OptionalCursor: first.GetAfterResultCursor()})
			if err != nil {
				return err
			}
			return recvErr(func() error { _, err := s.Recv(); return err })
		}, codes.InvalidArgument, []string{"different request"}},
		{"lookup: unknown type", func(ctx context.Context) error {
			s, err := ts.perm.LookupSubjects(ctx, &pb.LookupSubjectsRequest{Resource: obj("doc", "readme"), Permission: "view", SubjectObjectType: "robot"})
			if err != nil {
				return err
			}
			return recvErr(func() error { _, err := s.Recv(); return err })
		}, codes.InvalidArgument, []string{"robot"}},
		{"delete: no resource type", func(ctx context.Context) error {
			_, err := ts.rels.DeleteRelationships(ctx, &pb.DeleteRelationshipsRequest{Filter: &pb.RelationshipFilter{OptionalRelation: "viewer"}})
			return err
		}, codes.InvalidArgument, []string{"filter.resource_type"}},
		{"delete: more match than the limit", func(ctx context.Context) error {
			_, err := ts.rels.DeleteRelationships(ctx, &pb.DeleteRelationshipsRequest{Filter: &pb.RelationshipFilter{ResourceType: "doc"}})
			return err
		}, codes.FailedPrecondition, []string{"more than 2"}},
		{"watch: foreign token", func(ctx context.Context) error {
			s, err := ts.rels.Watch(ctx, &pb.WatchRequest{OptionalStartCursor: &pb.RevisionToken{Token: foreign}})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		}, codes.InvalidArgument, []string{"optional_start_cursor", "different Mandate store"}},
		{"schema: does not compile", func(ctx context.Context) error {
			_, err := ts.schema.WriteSchema(ctx, &pb.WriteSchemaRequest{Schema: "definition doc {\n\trelation viewer: nobody\n}\n"})
			return err
		}, codes.InvalidArgument, []string{"nobody"}},
		{"schema: would orphan relationships", func(ctx context.Context) error {
			_, err := ts.schema.WriteSchema(ctx, &pb.WriteSchemaRequest{Schema: "definition user {}\n"})
			return err
		}, codes.FailedPrecondition, []string{"doc:readme#owner@user:ann"}},
		{"import: duplicate", func(ctx context.Context) error {
			s, err := ts.rels.ImportRelationships(ctx)
			if err != nil {
				return err
			}
			if err := s.Send(&pb.ImportRelationshipsRequest{Relationships: mustParse(t, "doc:fresh#viewer@user:ann", "doc:readme#owner@user:ann")}); err != nil {
				return err
			}
			_, err = s.CloseAndRecv()
			return err
		}, codes.AlreadyExists, []string{"doc:readme#owner@user:ann"}},
		{"import: malformed relationship", func(ctx context.Context) error {
			s, err := ts.rels.ImportRelationships(ctx)
			if err != nil {
				return err
			}
			if err := s.Send(&pb.ImportRelationshipsRequest{Relationships: []*pb.Relationship{good, withRel(func(r *pb.Relationship) { r.Resource.ObjectId = "" })}}); err != nil {
				return err
			}
			_, err = s.CloseAndRecv()
			return err
		}, codes.InvalidArgument, []string{"batch 0: relationships[1]"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := ts.state()
			err := c.call(ts.ctx())
			t.Logf("%v", err)
			wantCode(t, err, c.code, c.fragments...)
			if after := ts.state(); !after.equal(before) {
				t.Errorf("the store changed: revision %d -> %d", before.head, after.head)
			}
		})
	}

	for _, secret := range []string{testKey, "not-the-key-81d2"} {
		if strings.Contains(ts.logs.String(), secret) {
			t.Errorf("a preshared key appears in the logs")
		}
	}
}

// TestBadInputREST checks the same kind of requests through the gateway:
// JSON errors with the gRPC code and the mapped HTTP status.
func TestBadInputREST(t *testing.T) {
	ts := startServer(t, smallLimits)
	token := ts.seed()
	checkBody := func(mutate func(map[string]any)) map[string]any {
		b := map[string]any{
			"consistency": map[string]any{"atLeastAsFresh": map[string]any{"token": token}},
			"resource":    map[string]any{"objectType": "doc", "objectId": "readme"},
			"permission":  "view",
			"subject":     map[string]any{"object": map[string]any{"objectType": "user", "objectId": "carl"}},
		}
		mutate(b)
		return b
	}
	writeBody := func(r map[string]any) map[string]any {
		return map[string]any{"updates": []any{map[string]any{"operation": "OPERATION_CREATE", "relationship": r}}}
	}
	cases := []struct {
		name      string
		path, key string
		body      any
		status    int
		code      codes.Code
		fragments []string
	}{
		{"no key", "/v1/relationships/write", "", writeBody(jsonRel("doc", "x", "viewer", "user", "ann")), 401, codes.Unauthenticated, []string{"missing credentials"}},
		{"wrong key", "/v1/relationships/write", "wrong-rest-key-77", writeBody(jsonRel("doc", "x", "viewer", "user", "ann")), 401, codes.Unauthenticated, []string{"invalid preshared key"}},
		{"unknown type", "/v1/relationships/write", testKey, writeBody(jsonRel("widget", "x", "viewer", "user", "ann")), 400, codes.InvalidArgument, []string{"widget"}},
		{"malformed ID", "/v1/relationships/write", testKey, writeBody(jsonRel("doc", "a b", "viewer", "user", "ann")), 400, codes.InvalidArgument, []string{"a b"}},
		{"unknown JSON field", "/v1/permissions/check", testKey, checkBody(func(b map[string]any) { b["permision"] = "view" }), 400, codes.InvalidArgument, []string{"permision"}},
		{"malformed JSON", "/v1/permissions/check", testKey, `{"resource": `, 400, codes.InvalidArgument, nil},
		{"malformed token", "/v1/permissions/check", testKey, checkBody(func(b map[string]any) {
			b["consistency"] = map[string]any{"atLeastAsFresh": map[string]any{"token": "zzz"}}
		}), 400, codes.InvalidArgument, []string{"consistency.at_least_as_fresh"}},
		{"caveat context of the wrong type", "/v1/permissions/check", testKey, checkBody(func(b map[string]any) { b["context"] = map[string]any{"amount": []any{1}} }), 400, codes.InvalidArgument, []string{"amount"}},
		{"unknown relation", "/v1/permissions/check", testKey, checkBody(func(b map[string]any) { b["permission"] = "nope" }), 400, codes.InvalidArgument, []string{"nope"}},
		{"oversized body", "/v1/permissions/check", testKey, checkBody(func(b map[string]any) { b["context"] = map[string]any{"pad": strings.Repeat("x", 100<<10)} }), 413, codes.ResourceExhausted, []string{"limit"}},
		{"too many updates", "/v1/relationships/write", testKey, func() any {
			var ups []any
			for i := range 11 {
				ups = append(ups, map[string]any{"operation": "OPERATION_TOUCH", "relationship": jsonRel("doc", fmt.Sprint("n", i), "viewer", "user", "ann")})
			}
			return map[string]any{"updates": ups}
		}(), 400, codes.InvalidArgument, []string{"at most 10"}},
		{"lookup error before any result", "/v1/permissions/resources", testKey, map[string]any{"resourceObjectType": "widget", "permission": "view", "subject": map[string]any{"object": map[string]any{"objectType": "user", "objectId": "ann"}}}, 400, codes.InvalidArgument, []string{"widget"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := ts.state()
			status, body := ts.restCall(c.path, c.key, c.body)
			if e, ok := body["error"].(map[string]any); ok {
				body = e // streaming routes wrap errors
			}
			if status != c.status || body["code"] != float64(c.code) {
				t.Fatalf("HTTP %d %v, want HTTP %d with code %d", status, body, c.status, c.code)
			}
			msg, _ := body["message"].(string)
			t.Logf("HTTP %d: %s", status, msg)
			for _, f := range c.fragments {
				if !strings.Contains(msg, f) {
					t.Errorf("message %q does not mention %q", msg, f)
				}
			}
			if !ts.state().equal(before) {
				t.Error("the store changed")
			}
		})
	}
	resp := ts.restRaw(http.MethodPost, "/v1/schema/read", "", strings.NewReader("{}"))
	resp.Body.Close()
	if got := resp.Header.Get("WWW-Authenticate"); got == "" {
		t.Error("401 without WWW-Authenticate")
	}
	for _, secret := range []string{testKey, "wrong-rest-key-77"} {
		if strings.Contains(ts.logs.String(), secret) {
			t.Errorf("a preshared key appears in the logs")
		}
	}
}
