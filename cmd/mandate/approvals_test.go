package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server/apikey"
)

const approvalsSchema = `definition user {}
definition agent {
	relation acts_for: user
}
definition doc {
	relation owner: user
	relation viewer: user | agent
	relation editor: user | agent
	relation deleter: agent
	permission view = viewer + editor + owner
	permission edit = editor + owner
	permission delete = owner + deleter
}`

const approvalsRules = `rules:
  - name: delete-needs-consent
    description: Deleting a document needs the owner's consent.
    match:
      permissions: [delete]
    max_duration: 30m
`

// approvalsServer is `mandate serve` with escalation rules and a keys file
// of two people's keys: alice (who owns doc:plan and whom agent:bot acts
// for) and carol (who holds nothing on it).
type approvalsServer struct {
	*servedCLI
	endpoint           string
	aliceKey, carolKey string
}

func approvalsFiles(t *testing.T) (flags []string, aliceKey, carolKey string) {
	t.Helper()
	dir := t.TempDir()
	aliceKey, aliceHash, err := apikey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	carolKey, carolHash, err := apikey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	keys := "keys:\n  - {name: alice, hash: " + aliceHash + ", scopes: [approvals], person: \"user:alice\"}\n" +
		"  - {name: carol, hash: " + carolHash + ", scopes: [approvals], person: \"user:carol\"}\n"
	if err := os.WriteFile(filepath.Join(dir, "keys.yaml"), []byte(keys), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "rules.yaml"), []byte(approvalsRules), 0o600); err != nil {
		t.Fatal(err)
	}
	return []string{"--keys-file", filepath.Join(dir, "keys.yaml"), "--escalation-rules", filepath.Join(dir, "rules.yaml")}, aliceKey, carolKey
}

func seedApprovals(t *testing.T, s *servedCLI) *pb.RevisionToken {
	t.Helper()
	if _, err := pb.NewSchemaServiceClient(s.conn).WriteSchema(s.ctx, &pb.WriteSchemaRequest{Schema: approvalsSchema}); err != nil {
		t.Fatal(err)
	}
	var updates []*pb.RelationshipUpdate
	for _, r := range []struct{ res, rel, sub string }{
		{"agent:bot", "acts_for", "user:alice"}, {"doc:plan", "owner", "user:alice"}, {"doc:plan", "viewer", "agent:bot"}, {"doc:plan", "deleter", "agent:bot"},
	} {
		rt, rid, _ := strings.Cut(r.res, ":")
		st, sid, _ := strings.Cut(r.sub, ":")
		updates = append(updates, &pb.RelationshipUpdate{Operation: pb.RelationshipUpdate_OPERATION_TOUCH, Relationship: &pb.Relationship{
			Resource: &pb.ObjectReference{ObjectType: rt, ObjectId: rid}, Relation: r.rel,
			Subject: &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: st, ObjectId: sid}}}})
	}
	resp, err := pb.NewRelationshipServiceClient(s.conn).WriteRelationships(s.ctx, &pb.WriteRelationshipsRequest{Updates: updates})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetWrittenAt()
}

func startApprovalsServe(t *testing.T, flags ...string) *approvalsServer {
	t.Helper()
	files, alice, carol := approvalsFiles(t)
	s := startServe(t, append(files, flags...)...)
	return &approvalsServer{servedCLI: s, endpoint: s.conn.Target(), aliceKey: alice, carolKey: carol}
}

// cli runs a client command against the server with key.
func (s *approvalsServer) cli(t *testing.T, key string, args ...string) (string, string, int) {
	t.Helper()
	return runTokenCLI(t, "", append(args, "--endpoint", s.endpoint, "--insecure", "--token", key)...)
}

// The whole flow through `mandate serve` and the CLI: an agent's delete is
// held by a rule (mandate.v1 and authzed.api.v1 with its trailer); the
// agent files the request; carol (no permission) and a key bound to no one
// cannot approve; alice approves; the agent's retry passes; a denial of a
// second request keeps it denied; ending the task revokes the grant.
func TestApprovalsServed(t *testing.T) {
	s := startApprovalsServe(t, "--datastore-engine", "embedded")
	seedApprovals(t, s.servedCLI)

	out, errOut, code := s.cli(t, serveKey, "check", "doc:plan#delete", "agent:bot", "--fully-consistent", "--context", `{"task":"T"}`)
	if code != 0 || !strings.Contains(out, "approval_required") || !strings.Contains(out, "approval required by rule: delete-needs-consent") ||
		!strings.Contains(out, "mandate approvals request doc:plan#delete agent:bot --on-behalf-of user:alice") {
		t.Fatalf("escalated check: %d %s %s", code, out, errOut)
	}
	// The same check over authzed.api.v1: NO_PERMISSION with the trailer.
	var trailer metadata.MD
	zresp, err := v1.NewPermissionsServiceClient(s.conn).CheckPermission(s.ctx, &v1.CheckPermissionRequest{
		Consistency: &v1.Consistency{Requirement: &v1.Consistency_FullyConsistent{FullyConsistent: true}},
		Resource:    &v1.ObjectReference{ObjectType: "doc", ObjectId: "plan"}, Permission: "delete",
		Subject: &v1.SubjectReference{Object: &v1.ObjectReference{ObjectType: "agent", ObjectId: "bot"}},
	}, grpc.Trailer(&trailer))
	if err != nil || zresp.GetPermissionship() != v1.CheckPermissionResponse_PERMISSIONSHIP_NO_PERMISSION ||
		strings.Join(trailer.Get("mandate-approval-required"), ",") != "delete-needs-consent" {
		t.Fatalf("authzed check: %v %v trailer %v", zresp, err, trailer)
	}
	// A person's own check is never escalated.
	if out, _, _ := s.cli(t, serveKey, "check", "doc:plan#delete", "user:alice", "--fully-consistent"); !strings.HasPrefix(out, "allowed") {
		t.Fatalf("alice's own delete: %s", out)
	}

	id, errOut, code := s.cli(t, serveKey, "approvals", "request", "doc:plan#delete", "agent:bot", "--on-behalf-of", "user:alice",
		"--task", "T", "--reason", "clean up the old plan")
	id = strings.TrimSpace(id)
	if code != 0 || len(id) != 32 {
		t.Fatalf("request: %d %q %s", code, id, errOut)
	}
	if out, _, _ := s.cli(t, s.aliceKey, "approvals", "list", "--approver", "user:alice", "--status", "pending"); !strings.Contains(out, id+" pending agent:bot for user:alice: doc:plan#delete task=T rule=delete-needs-consent") {
		t.Fatalf("alice's inbox: %s", out)
	}
	if _, errOut, code := s.cli(t, s.carolKey, "approvals", "approve", id); code == 0 || !strings.Contains(errOut, "PermissionDenied") && !strings.Contains(errOut, "not allowed") {
		t.Fatalf("carol approves: %d %s", code, errOut)
	}
	if _, errOut, code := s.cli(t, serveKey, "approvals", "approve", id); code == 0 || !strings.Contains(errOut, "verified person") {
		t.Fatalf("a key bound to no one approves: %d %s", code, errOut)
	}
	if _, errOut, code := s.cli(t, s.aliceKey, "approvals", "approve", id, "--duration", "2h"); code == 0 || !strings.Contains(errOut, "maximum") {
		t.Fatalf("approve over the rule's maximum: %d %s", code, errOut)
	}
	if out, errOut, code := s.cli(t, s.aliceKey, "approvals", "approve", id, "--note", "ok"); code != 0 || !strings.Contains(out, id+" approved") {
		t.Fatalf("alice approves: %d %s %s", code, out, errOut)
	}
	out, _, _ = s.cli(t, serveKey, "check", "doc:plan#delete", "agent:bot", "--fully-consistent")
	if !strings.HasPrefix(out, "allowed") || !strings.Contains(out, "allowed by approval: "+id) {
		t.Fatalf("retry after approval: %s", out)
	}
	if out, _, _ := s.cli(t, serveKey, "approvals", "show", id); !strings.Contains(out, "decider: user:alice") || !strings.Contains(out, "chain: agent:bot -> user:alice") {
		t.Fatalf("show: %s", out)
	}
	// A check with a capability token goes through the rules too: the
	// token's holder and principal are the chain, and the grant lifts it.
	tok, errOut, code := s.cli(t, serveKey, "token", "mint", "--holder", "agent:bot", "--on-behalf-of", "user:alice", "--allow", "doc:plan#delete", "--ttl", "10m")
	if code != 0 {
		t.Fatalf("mint: %s", errOut)
	}
	if out, _, _ := s.cli(t, serveKey, "check", "doc:plan#delete", "agent:bot", "--fully-consistent", "--capability-token", strings.TrimSpace(tok)); !strings.Contains(out, "allowed by approval: "+id) {
		t.Fatalf("token check with the grant: %s", out)
	}
	if out, _, _ := s.cli(t, serveKey, "check", "doc:plan#view", "agent:bot", "--fully-consistent"); !strings.HasPrefix(out, "allowed\n") || strings.Contains(out, "approval") {
		t.Fatalf("a check no rule holds: %s", out)
	}

	// Deny path: edit is denied for the agent's own grant only (resolvable).
	out, _, _ = s.cli(t, serveKey, "check", "doc:plan#edit", "agent:bot", "--fully-consistent", "--fail-on-denied")
	if !strings.HasPrefix(out, "denied") || !strings.Contains(out, "resolvable by approval") || !strings.Contains(out, "file: mandate approvals request doc:plan#edit") {
		t.Fatalf("resolvable denial: %s", out)
	}
	id2, _, code := s.cli(t, serveKey, "approvals", "request", "doc:plan#edit", "agent:bot", "--on-behalf-of", "user:alice", "--task", "T")
	id2 = strings.TrimSpace(id2)
	if out, errOut, code2 := s.cli(t, s.aliceKey, "approvals", "deny", id2, "--note", "no"); code != 0 || code2 != 0 || !strings.Contains(out, "denied") {
		t.Fatalf("deny: %s %s", out, errOut)
	}
	// Still denied: a denial lifts only by a grant.
	if out, _, _ := s.cli(t, serveKey, "check", "doc:plan#edit", "agent:bot", "--fully-consistent"); !strings.HasPrefix(out, "denied") {
		t.Fatalf("after deny: %s", out)
	}

	if out, errOut, code := s.cli(t, serveKey, "task", "end", "T"); code != 0 || !strings.Contains(out, "1 approval grants") {
		t.Fatalf("task end: %d %s %s", code, out, errOut)
	}
	if out, _, _ := s.cli(t, serveKey, "check", "doc:plan#delete", "agent:bot", "--fully-consistent"); !strings.HasPrefix(out, "approval_required") {
		t.Fatalf("after task end: %s", out)
	}
	if out, _, _ := s.cli(t, serveKey, "check", "doc:plan#delete", "agent:bot", "--fully-consistent", "--capability-token", strings.TrimSpace(tok)); !strings.HasPrefix(out, "approval_required") || !strings.Contains(out, "rule: delete-needs-consent") {
		t.Fatalf("token check after task end: %s", out)
	}
	if out, _, _ := s.cli(t, serveKey, "approvals", "show", id); !strings.Contains(out, "status: revoked") {
		t.Fatalf("show after task end: %s", out)
	}
}

// A watcher sees the request filed and then decided: what an agent waits
// on with --until-decided (exit 0 on approval).
func TestApprovalsWatchUntilDecided(t *testing.T) {
	s := startApprovalsServe(t, "--datastore-engine", "memory")
	seedApprovals(t, s.servedCLI)
	id, errOut, code := s.cli(t, serveKey, "approvals", "request", "doc:plan#delete", "agent:bot", "--on-behalf-of", "user:alice")
	id = strings.TrimSpace(id)
	if code != 0 {
		t.Fatal(errOut)
	}
	done := make(chan string, 1)
	go func() {
		out, errOut, code := s.cli(t, serveKey, "approvals", "watch", "--agent", "agent:bot", "--until-decided", id, "--timeout", "30s")
		done <- strings.Join([]string{out, errOut, string(rune('0' + code))}, "|")
	}()
	time.Sleep(300 * time.Millisecond)
	if _, errOut, code := s.cli(t, s.aliceKey, "approvals", "approve", id, "--single-use"); code != 0 {
		t.Fatal(errOut)
	}
	got := <-done
	if !regexp.MustCompile(id+` pending .*\n`+id+` approved`).MatchString(got) || !strings.HasSuffix(got, "|0") {
		t.Fatalf("watch: %q", got)
	}
	// Single-use: only a check naming it, once.
	if out, _, _ := s.cli(t, serveKey, "check", "doc:plan#delete", "agent:bot", "--fully-consistent"); !strings.HasPrefix(out, "approval_required") {
		t.Fatalf("unnamed single-use grant: %s", out)
	}
	if out, _, _ := s.cli(t, serveKey, "check", "doc:plan#delete", "agent:bot", "--fully-consistent", "--approval-id", id); !strings.HasPrefix(out, "allowed") {
		t.Fatalf("named: %s", out)
	}
	if out, _, _ := s.cli(t, serveKey, "check", "doc:plan#delete", "agent:bot", "--fully-consistent", "--approval-id", id); !strings.HasPrefix(out, "approval_required") {
		t.Fatalf("second use: %s", out)
	}

	// An expired grant denies.
	id3, _, _ := s.cli(t, serveKey, "approvals", "request", "doc:plan#delete", "agent:bot", "--on-behalf-of", "user:alice")
	id3 = strings.TrimSpace(id3)
	if _, errOut, code := s.cli(t, s.aliceKey, "approvals", "approve", id3, "--duration", "1s"); code != 0 {
		t.Fatal(errOut)
	}
	if out, _, _ := s.cli(t, serveKey, "check", "doc:plan#delete", "agent:bot", "--fully-consistent"); !strings.HasPrefix(out, "allowed") {
		t.Fatalf("live grant: %s", out)
	}
	time.Sleep(1100 * time.Millisecond)
	if out, _, _ := s.cli(t, serveKey, "check", "doc:plan#delete", "agent:bot", "--fully-consistent"); !strings.HasPrefix(out, "approval_required") {
		t.Fatalf("expired grant: %s", out)
	}
	if out, _, _ := s.cli(t, serveKey, "approvals", "show", id3); !strings.Contains(out, "status: expired") {
		t.Fatalf("show expired: %s", out)
	}
}

// Two replicas on one PostgreSQL database: a single-use grant approved on
// one is redeemed by exactly one of 8 concurrent checks spread over both.
func TestApprovalSingleUseAcrossReplicasPostgres(t *testing.T) {
	uri := freshPostgresDatabase(t)
	files, aliceKey, _ := approvalsFiles(t)
	a := startPGServe(t, uri, append(files, "--datastore-migrate")...)
	b := startPGServe(t, uri, files...)
	written := seedApprovals(t, a)
	// Replica b has the schema and data once it is as fresh as the write.
	perm := pb.NewPermissionServiceClient(b.conn)
	if _, err := perm.Check(b.ctx, &pb.CheckRequest{Consistency: &pb.Consistency{Requirement: &pb.Consistency_AtLeastAsFresh{AtLeastAsFresh: written}},
		Resource: &pb.ObjectReference{ObjectType: "doc", ObjectId: "plan"}, Permission: "view",
		Subject: &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: "user", ObjectId: "alice"}}}); err != nil {
		t.Fatal(err)
	}
	obj := func(typ, id string) *pb.ObjectReference { return &pb.ObjectReference{ObjectType: typ, ObjectId: id} }
	req, err := pb.NewApprovalServiceClient(a.conn).Request(a.ctx, &pb.ApprovalServiceRequestRequest{
		Agent: obj("agent", "bot"), Principal: obj("user", "alice"), Resource: obj("doc", "plan"), Permission: "delete"})
	if err != nil {
		t.Fatal(err)
	}
	id := req.GetApproval().GetId()
	aliceCtx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+aliceKey)
	// alice decides on replica b, which learnt of the request from the stream.
	var approved *pb.ApproveResponse
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		approved, err = pb.NewApprovalServiceClient(b.conn).Approve(aliceCtx, &pb.ApproveRequest{Id: id, SingleUse: true})
		if status.Code(err) != codes.NotFound || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	fresh := &pb.Consistency{Requirement: &pb.Consistency_AtLeastAsFresh{AtLeastAsFresh: approved.GetApproval().GetWrittenAt()}}
	var wg sync.WaitGroup
	var mu sync.Mutex
	allowed, other := 0, 0
	for i := range 8 {
		s := a
		if i%2 == 1 {
			s = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := pb.NewPermissionServiceClient(s.conn).Check(s.ctx, &pb.CheckRequest{Consistency: fresh,
				Resource: obj("doc", "plan"), Permission: "delete", Subject: &pb.SubjectReference{Object: obj("agent", "bot")}, ApprovalId: id})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				t.Errorf("check: %v", err)
			case resp.GetDecision() == pb.Decision_DECISION_ALLOWED:
				allowed++
			case resp.GetDecision() == pb.Decision_DECISION_APPROVAL_REQUIRED:
				other++
			default:
				t.Errorf("check: %v", resp.GetDecision())
			}
		}()
	}
	wg.Wait()
	if allowed != 1 || other != 7 {
		t.Fatalf("%d allowed, %d approval required of 8 concurrent checks over two replicas; want exactly 1 allowed", allowed, other)
	}
	got, err := pb.NewApprovalServiceClient(a.conn).Get(a.ctx, &pb.ApprovalServiceGetRequest{Id: id})
	if err != nil || got.GetApproval().GetStatus() != pb.ApprovalStatus_APPROVAL_STATUS_REDEEMED {
		t.Fatalf("after the race: %v %v", got, err)
	}
}

// CheckBulk items carry the same approval context as a single check: one
// item held by a rule (approval_required, the rule, the evaluation id, the
// request to file) beside a normal item; after approval the held item
// passes; a single-use grant named by two items of one bulk check allows
// the first only. authzed.api.v1 CheckBulkPermissions answers the held
// item NO_PERMISSION (it has no per-item trailer).
func TestApprovalsCheckBulkServed(t *testing.T) {
	s := startApprovalsServe(t, "--datastore-engine", "memory")
	seedApprovals(t, s.servedCLI)
	perm := pb.NewPermissionServiceClient(s.conn)
	obj := func(typ, id string) *pb.ObjectReference { return &pb.ObjectReference{ObjectType: typ, ObjectId: id} }
	bot := &pb.SubjectReference{Object: obj("agent", "bot")}
	fully := &pb.Consistency{Requirement: &pb.Consistency_FullyConsistent{FullyConsistent: true}}
	bulk := func(items ...*pb.CheckBulkRequestItem) []*pb.CheckBulkItemResult {
		t.Helper()
		resp, err := perm.CheckBulk(s.ctx, &pb.CheckBulkRequest{Consistency: fully, Items: items})
		if err != nil {
			t.Fatal(err)
		}
		var out []*pb.CheckBulkItemResult
		for i, p := range resp.GetPairs() {
			if p.GetError() != nil {
				t.Fatalf("item %d: %v", i, p.GetError())
			}
			out = append(out, p.GetItem())
		}
		return out
	}
	del := func(id string) *pb.CheckBulkRequestItem {
		return &pb.CheckBulkRequestItem{Resource: obj("doc", "plan"), Permission: "delete", Subject: bot, ApprovalId: id}
	}
	view := &pb.CheckBulkRequestItem{Resource: obj("doc", "plan"), Permission: "view", Subject: bot}

	got := bulk(del(""), view)
	held, plain := got[0], got[1]
	if held.GetDecision() != pb.Decision_DECISION_APPROVAL_REQUIRED || held.GetApproval().GetRule() != "delete-needs-consent" ||
		len(held.GetApproval().GetEvaluationId()) == 0 || held.GetApproval().GetRequest().GetPermission() != "delete" ||
		held.GetApproval().GetRequest().GetPrincipal().GetObjectId() != "alice" {
		t.Fatalf("held item: %v", held)
	}
	if plain.GetDecision() != pb.Decision_DECISION_ALLOWED || plain.GetApproval() != nil {
		t.Fatalf("normal item: %v", plain)
	}
	zresp, err := v1.NewPermissionsServiceClient(s.conn).CheckBulkPermissions(s.ctx, &v1.CheckBulkPermissionsRequest{
		Consistency: &v1.Consistency{Requirement: &v1.Consistency_FullyConsistent{FullyConsistent: true}},
		Items: []*v1.CheckBulkPermissionsRequestItem{{Resource: &v1.ObjectReference{ObjectType: "doc", ObjectId: "plan"}, Permission: "delete",
			Subject: &v1.SubjectReference{Object: &v1.ObjectReference{ObjectType: "agent", ObjectId: "bot"}}}}})
	if err != nil || zresp.GetPairs()[0].GetItem().GetPermissionship() != v1.CheckPermissionResponse_PERMISSIONSHIP_NO_PERMISSION {
		t.Fatalf("authzed bulk: %v %v", zresp, err)
	}

	// The agent files what the item said; alice approves; the item passes.
	file := held.GetApproval().GetRequest()
	file.Task = "T"
	req, err := pb.NewApprovalServiceClient(s.conn).Request(s.ctx, file)
	if err != nil {
		t.Fatal(err)
	}
	id := req.GetApproval().GetId()
	if _, errOut, code := s.cli(t, s.aliceKey, "approvals", "approve", id); code != 0 {
		t.Fatal(errOut)
	}
	got = bulk(del(""), view)
	if got[0].GetDecision() != pb.Decision_DECISION_ALLOWED || got[0].GetApproval().GetGrantId() != id || got[1].GetDecision() != pb.Decision_DECISION_ALLOWED {
		t.Fatalf("after approval: %v", got)
	}
	if out, errOut, code := s.cli(t, serveKey, "task", "end", "T"); code != 0 {
		t.Fatalf("task end: %s %s", out, errOut)
	}
	if got := bulk(del("")); got[0].GetDecision() != pb.Decision_DECISION_APPROVAL_REQUIRED {
		t.Fatalf("after task end: %v", got)
	}

	// A single-use grant named by two items of one bulk: redeemed once.
	req, err = pb.NewApprovalServiceClient(s.conn).Request(s.ctx, file)
	if err != nil {
		t.Fatal(err)
	}
	once := req.GetApproval().GetId()
	if _, errOut, code := s.cli(t, s.aliceKey, "approvals", "approve", once, "--single-use"); code != 0 {
		t.Fatal(errOut)
	}
	got = bulk(del(once), del(once), view)
	if got[0].GetDecision() != pb.Decision_DECISION_ALLOWED || got[0].GetApproval().GetGrantId() != once ||
		got[1].GetDecision() != pb.Decision_DECISION_APPROVAL_REQUIRED || got[2].GetDecision() != pb.Decision_DECISION_ALLOWED {
		t.Fatalf("single-use grant named twice in one bulk: %v", got)
	}
	if got := bulk(del(once)); got[0].GetDecision() != pb.Decision_DECISION_APPROVAL_REQUIRED {
		t.Fatalf("single-use grant after its bulk: %v", got)
	}
	if out, _, _ := s.cli(t, serveKey, "approvals", "show", once); !strings.Contains(out, "status: redeemed") {
		t.Fatalf("show: %s", out)
	}
}
