package server_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/store/rel"
)

// historyPass rewrites n relationships with a new caveat context, so each
// becomes a new version and supersedes the last.
func historyPass(pass, n int) []*pb.RelationshipUpdate {
	ups := make([]*pb.RelationshipUpdate, n)
	for i := range ups {
		ups[i] = &pb.RelationshipUpdate{Operation: touch, Relationship: &pb.Relationship{
			Resource: obj("doc", fmt.Sprintf("h%d", i)), Relation: "viewer", Subject: subj("user", "ann"),
			OptionalCaveat: &pb.ContextualizedCaveat{CaveatName: "within_limit", Context: mustStruct(map[string]any{"limit": pass})},
		}}
	}
	return ups
}

// wantHistoryFull asserts a write refused for history: RESOURCE_EXHAUSTED
// naming the flag, with a RetryInfo.
func wantHistoryFull(t *testing.T, api string, err error) {
	t.Helper()
	wantCode(t, err, codes.ResourceExhausted, "--max-history-versions", "superseded relationship versions")
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay().AsDuration() > 0 {
			return
		}
	}
	t.Errorf("%s: refused write carries no RetryInfo: %v", api, status.Convert(err).Details())
}

// TestMaxHistoryVersionsRefusesWrites: with history kept long, a write that
// would take the superseded versions over --max-history-versions is refused
// through both gRPC APIs and REST (429, Retry-After) and leaves nothing,
// while reads go on; with history released soon, writes are accepted again.
func TestMaxHistoryVersionsRefusesWrites(t *testing.T) {
	const n, limit = 10, 50 // five passes of n fill the limit
	fill := func(ts *testServer) (last string) {
		t.Helper()
		for p := 0; p <= limit/n; p++ {
			last = ts.write(historyPass(p, n)...)
			// The engine counts what it has applied: wait for it.
			if _, err := ts.perm.Check(ts.ctx(), &pb.CheckRequest{Resource: obj("doc", "h0"), Permission: "view", Subject: subj("user", "ann"),
				Consistency: fresh(last), Context: mustStruct(map[string]any{"amount": 0})}); err != nil {
				t.Fatalf("check after pass %d: %v", p, err)
			}
		}
		return last
	}

	t.Run("history kept: refused, reads go on", func(t *testing.T) {
		ts := startServer(t, func(c *server.Config) { c.RevisionRetention, c.Limits.MaxHistoryVersions = time.Hour, limit })
		ts.writeSchema(testSchema)
		last := fill(ts)
		before := ts.state()

		_, err := ts.rels.WriteRelationships(ts.ctx(), &pb.WriteRelationshipsRequest{Updates: historyPass(99, 1)})
		wantHistoryFull(t, "mandate.v1", err)
		_, err = ts.rels.DeleteRelationships(ts.ctx(), &pb.DeleteRelationshipsRequest{Filter: &pb.RelationshipFilter{ResourceType: "doc"}})
		wantHistoryFull(t, "mandate.v1 delete", err)

		r, err := rel.Parse("doc:h0#viewer@user:bob")
		if err != nil {
			t.Fatal(err)
		}
		_, err = v1.NewPermissionsServiceClient(ts.conn).WriteRelationships(ts.ctx(), &v1.WriteRelationshipsRequest{Updates: zupdates(ztouch, zrel(r))})
		wantHistoryFull(t, "authzed.api.v1", err)

		body, err := json.Marshal(map[string]any{"updates": []any{map[string]any{
			"operation": "OPERATION_TOUCH", "relationship": jsonRel("doc", "h1", "viewer", "user", "bob")}}})
		if err != nil {
			t.Fatal(err)
		}
		resp := ts.restRaw(http.MethodPost, "/v1/relationships/write", testKey, bytes.NewReader(body))
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(msg), "--max-history-versions") {
			t.Errorf("REST write over the history limit: %d, Retry-After %q, %s; want 429 with Retry-After naming the limit", resp.StatusCode, resp.Header.Get("Retry-After"), msg)
		}

		if after := ts.state(); !after.equal(before) {
			t.Errorf("a refused write changed the store")
		}
		if _, err := ts.perm.Check(ts.ctx(), &pb.CheckRequest{Resource: obj("doc", "h0"), Permission: "view", Subject: subj("user", "ann"),
			Consistency: fresh(last), Context: mustStruct(map[string]any{"amount": 0})}); err != nil {
			t.Errorf("a check while history is full: %v", err)
		}
	})

	t.Run("history released: accepted again", func(t *testing.T) {
		ts := startServer(t, func(c *server.Config) { c.RevisionRetention, c.Limits.MaxHistoryVersions = 200*time.Millisecond, limit })
		ts.writeSchema(testSchema)
		// Write faster than retention releases until refused, then retry
		// that write until retention lets it through.
		var refused bool
		deadline := time.Now().Add(15 * time.Second)
		for p := 0; time.Now().Before(deadline); p++ {
			_, err := ts.rels.WriteRelationships(ts.ctx(), &pb.WriteRelationshipsRequest{Updates: historyPass(p, n)})
			switch {
			case err == nil && refused:
				return // accepted after a refusal: released history made room
			case err == nil:
			case status.Code(err) == codes.ResourceExhausted:
				wantHistoryFull(t, "mandate.v1", err)
				refused = true
				time.Sleep(20 * time.Millisecond)
			default:
				t.Fatalf("write %d: %v", p, err)
			}
		}
		if !refused {
			t.Fatal("no write was refused: the limit never filled")
		}
		t.Fatal("writes were still refused 15s after history retention of 200ms")
	})
}
