package server_test

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/mandate-authz/mandate/engine"
	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/memory"
	"github.com/mandate-authz/mandate/store/rel"
)

func exact(token string) *pb.Consistency {
	return &pb.Consistency{Requirement: &pb.Consistency_AtExactSnapshot{AtExactSnapshot: &pb.RevisionToken{Token: token}}}
}

// TestRevisionRetention: with a short window, a token superseded longer
// than the window ago stops working for exact-snapshot checks, reads,
// exports and watches, with FailedPrecondition naming the retention, on
// gRPC and REST; the store's history goes too; the latest revision and
// at_least_as_fresh keep working.
func TestRevisionRetention(t *testing.T) {
	const window = 200 * time.Millisecond
	ts := startServer(t, func(c *server.Config) { c.RevisionRetention = window })
	ts.writeSchema(testSchema)
	ctx := ts.ctx()
	old := ts.write(update(touch, mustParse(t, "doc:a#viewer@user:ann")...)...)
	oldRev, err := ts.st.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	latest := ts.write(update(del, mustParse(t, "doc:a#viewer@user:ann")...)...)

	checkAt := func(c *pb.Consistency) (*pb.CheckResponse, error) {
		return ts.perm.Check(ctx, &pb.CheckRequest{Consistency: c, Resource: obj("doc", "a"), Permission: "view", Subject: subj("user", "ann")})
	}
	var released error
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, released = checkAt(exact(old)); released != nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(window / 4)
	}
	wantCode(t, released, codes.FailedPrecondition, "no longer retained", "--revision-retention", window.String(), "at_least_as_fresh")

	// The store released the same history.
	for _, err := range ts.st.Read(ctx, oldRev, rel.Filter{}, nil) {
		if !errors.Is(err, store.ErrRevisionGone) {
			t.Errorf("store read at the released revision: %v, want ErrRevisionGone", err)
		}
		break
	}

	stream, err := ts.rels.ReadRelationships(ctx, &pb.ReadRelationshipsRequest{Consistency: exact(old), Filter: &pb.RelationshipFilter{ResourceType: "doc"}})
	if err == nil {
		_, err = stream.Recv()
	}
	wantCode(t, err, codes.FailedPrecondition, "--revision-retention")
	exp, err := ts.rels.ExportRelationships(ctx, &pb.ExportRelationshipsRequest{Consistency: exact(old)})
	if err == nil {
		_, err = exp.Recv()
	}
	wantCode(t, err, codes.FailedPrecondition, "--revision-retention")
	watch, err := ts.rels.Watch(ctx, &pb.WatchRequest{OptionalStartCursor: &pb.RevisionToken{Token: old}})
	if err == nil {
		_, err = watch.Recv()
	}
	wantCode(t, err, codes.FailedPrecondition, "--revision-retention", "restart a watch from a recent token")

	code, body := ts.restCall("/v1/permissions/check", testKey, map[string]any{
		"resource": map[string]any{"objectType": "doc", "objectId": "a"}, "permission": "view",
		"subject":     map[string]any{"object": map[string]any{"objectType": "user", "objectId": "ann"}},
		"consistency": map[string]any{"atExactSnapshot": map[string]any{"token": old}},
	})
	if code != http.StatusBadRequest || !strings.Contains(body["message"].(string), "--revision-retention") {
		t.Errorf("REST check at a released revision: HTTP %d %v", code, body)
	}

	// The head is never released, however long ago it was written; older
	// tokens still work for at_least_as_fresh.
	time.Sleep(3 * window)
	if resp, err := checkAt(exact(latest)); err != nil || resp.GetDecision() != pb.Decision_DECISION_DENIED {
		t.Errorf("check at the head revision: %v, %v", resp.GetDecision(), err)
	}
	if _, err := checkAt(fresh(old)); err != nil {
		t.Errorf("at_least_as_fresh a released token: %v", err)
	}
}

// TestRevisionRetentionDefault: by default (an hour) superseded revisions
// stay readable, answering as of their time.
func TestRevisionRetentionDefault(t *testing.T) {
	ts := startServer(t, nil)
	ts.writeSchema(testSchema)
	ctx := ts.ctx()
	old := ts.write(update(touch, mustParse(t, "doc:a#viewer@user:ann")...)...)
	for range 5 {
		ts.write(update(touch, mustParse(t, "doc:b#viewer@user:bob")...)...)
	}
	ts.write(update(del, mustParse(t, "doc:a#viewer@user:ann")...)...)
	resp, err := ts.perm.Check(ctx, &pb.CheckRequest{Consistency: exact(old), Resource: obj("doc", "a"), Permission: "view", Subject: subj("user", "ann")})
	if err != nil || resp.GetDecision() != pb.Decision_DECISION_ALLOWED {
		t.Errorf("check at a superseded revision within the window: %v, %v", resp.GetDecision(), err)
	}
}

func TestRevisionRetentionConfig(t *testing.T) {
	st := memory.New()
	defer st.Close()
	_, err := server.New(st, engine.New(), server.Config{GRPCAddr: "127.0.0.1:0", AllowUnauthenticated: true, RevisionRetention: -time.Minute})
	if err == nil || !strings.Contains(err.Error(), "--revision-retention") {
		t.Errorf("negative retention: %v", err)
	}
}
