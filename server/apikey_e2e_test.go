package server_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"google.golang.org/grpc/codes"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/server/apikey"
)

// TestCheckOnlyKey: a keys-file key with only the check scope may check,
// and cannot write a relationship, write the schema or read the audit
// trail, over mandate.v1 gRPC, REST and authzed.api.v1 alike; each refusal
// is PERMISSION_DENIED naming the scope and is audited with the key's name.
func TestCheckOnlyKey(t *testing.T) {
	key, hash, err := apikey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "keys.yaml")
	if err := os.WriteFile(path, []byte("keys:\n  - {name: checker, hash: "+hash+", scopes: [check]}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ring, err := apikey.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	ts := startServer(t, func(c *server.Config) { c.Keys, c.Audit = ring, rec })
	ts.writeSchema(testSchema)
	rec.take()

	conn := ts.dial(key)
	doc := &pb.ObjectReference{ObjectType: "doc", ObjectId: "1"}
	ann := &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: "user", ObjectId: "ann"}}
	if _, err := pb.NewPermissionServiceClient(conn).Check(ts.ctx(), &pb.CheckRequest{Resource: doc, Permission: "view", Subject: ann,
		Consistency: &pb.Consistency{Requirement: &pb.Consistency_FullyConsistent{FullyConsistent: true}}}); err != nil {
		t.Fatalf("check-only key, Check: %v", err)
	}
	rec.take()

	adoc := &v1.ObjectReference{ObjectType: "doc", ObjectId: "1"}
	aann := &v1.SubjectReference{Object: &v1.ObjectReference{ObjectType: "user", ObjectId: "ann"}}
	for _, c := range []struct {
		name  string
		scope string
		call  func() error
	}{
		{"mandate.v1 WriteRelationships", "write", func() error {
			_, err := pb.NewRelationshipServiceClient(conn).WriteRelationships(ts.ctx(), &pb.WriteRelationshipsRequest{Updates: []*pb.RelationshipUpdate{{
				Operation: pb.RelationshipUpdate_OPERATION_TOUCH, Relationship: &pb.Relationship{Resource: doc, Relation: "viewer", Subject: ann}}}})
			return err
		}},
		{"mandate.v1 WriteSchema", "schema", func() error {
			_, err := pb.NewSchemaServiceClient(conn).WriteSchema(ts.ctx(), &pb.WriteSchemaRequest{Schema: testSchema})
			return err
		}},
		{"mandate.v1 AuditService.Query", "audit", func() error {
			_, err := pb.NewAuditServiceClient(conn).Query(ts.ctx(), &pb.AuditServiceQueryRequest{})
			return err
		}},
		{"authzed WriteRelationships", "write", func() error {
			_, err := v1.NewPermissionsServiceClient(conn).WriteRelationships(ts.ctx(), &v1.WriteRelationshipsRequest{Updates: []*v1.RelationshipUpdate{{
				Operation: v1.RelationshipUpdate_OPERATION_TOUCH, Relationship: &v1.Relationship{Resource: adoc, Relation: "viewer", Subject: aann}}}})
			return err
		}},
		{"authzed WriteSchema", "schema", func() error {
			_, err := v1.NewSchemaServiceClient(conn).WriteSchema(ts.ctx(), &v1.WriteSchemaRequest{Schema: testSchema})
			return err
		}},
	} {
		wantCode(t, c.call(), codes.PermissionDenied, `"`+c.scope+`" scope`)
		evs := rec.take()
		if len(evs) != 1 || evs[0].Code != codes.PermissionDenied.String() || evs[0].Caller != "checker" {
			t.Errorf("%s: refusal audited as %+v, want one PermissionDenied event from checker", c.name, evs)
		}
	}

	for _, c := range []struct {
		path string
		body any
	}{
		{"/v1/relationships/write", map[string]any{"updates": []any{map[string]any{"operation": "OPERATION_TOUCH", "relationship": map[string]any{
			"resource": map[string]any{"objectType": "doc", "objectId": "1"}, "relation": "viewer",
			"subject": map[string]any{"object": map[string]any{"objectType": "user", "objectId": "ann"}}}}}}},
		{"/v1/schema/write", map[string]any{"schema": testSchema}},
		{"/v1/audit/query", map[string]any{}},
	} {
		if status, body := ts.restCall(c.path, key, c.body); status != http.StatusForbidden {
			t.Errorf("REST %s with a check-only key: HTTP %d %v, want 403", c.path, status, body)
		}
	}
	if got := ts.state(); len(got.rels) != 0 {
		t.Errorf("a refused write reached the store: %+v", got)
	}
}

// TestKeyConcurrencyCountsAuthZEN: a scoped key's concurrency limit counts
// AuthZEN calls beside gRPC ones: while the key's one slot is held by a
// Watch stream, its AuthZEN evaluation is refused 429 (never a 500), and
// once the stream ends the evaluation is answered.
func TestKeyConcurrencyCountsAuthZEN(t *testing.T) {
	key, hash, err := apikey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "keys.yaml")
	if err := os.WriteFile(path, []byte("keys:\n  - {name: one-at-a-time, hash: "+hash+", scopes: [check], concurrency: 1}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ring, err := apikey.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, func(c *server.Config) { c.Keys = ring })
	tok := ts.writeSchema(testSchema)
	// Wait for the engine to apply the schema (AuthZEN reads its latest).
	if _, err := pb.NewPermissionServiceClient(ts.dial(key)).Check(ts.ctx(), checkRequest(fresh(tok), "doc:1", "user:ann")); err != nil {
		t.Fatal(err)
	}
	eval := func() int {
		status, _, _ := ts.authzenPost("/access/v1/evaluation", "Bearer "+key, "",
			`{"subject":{"type":"user","id":"ann"},"action":{"name":"view"},"resource":{"type":"doc","id":"1"}}`)
		return status
	}
	if got := eval(); got != http.StatusOK {
		t.Fatalf("an evaluation with the slot free: %d", got)
	}
	ctx, cancel := context.WithCancel(ts.ctx())
	stream, err := pb.NewRelationshipServiceClient(ts.dial(key)).Watch(ctx, &pb.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// The Watch holds the key's slot once the server has taken the call: a
	// change it delivers proves that, so no evaluation races it for the slot.
	started, ended := make(chan struct{}), make(chan error, 1)
	go func() {
		first := true
		for {
			if _, err := stream.Recv(); err != nil {
				ended <- err
				return
			}
			if first {
				close(started)
				first = false
			}
		}
	}()
	for i := 0; ; i++ {
		ts.write(update(touch, mustParse(t, fmt.Sprintf("doc:w%d#viewer@user:ann", i))...)...)
		select {
		case <-started:
		case err := <-ended:
			t.Fatalf("the Watch did not start: %v", err)
		case <-time.After(100 * time.Millisecond):
			if i < 100 {
				continue
			}
			t.Fatal("the Watch delivered no change")
		}
		break
	}
	waitFor := func(want int, holding bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for got := eval(); got != want; got = eval() {
			if got != http.StatusOK && got != http.StatusTooManyRequests {
				t.Fatalf("evaluation answered %d", got)
			}
			if holding {
				select {
				case err := <-ended:
					t.Fatalf("the Watch holding the slot ended early: %v", err)
				default:
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("evaluation answered %d, want %d", got, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor(http.StatusTooManyRequests, true)
	cancel()
	<-ended
	waitFor(http.StatusOK, false)
}
