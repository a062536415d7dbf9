package server_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-authz/mandate/engine"
	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/server/audit"
	"github.com/mandate-authz/mandate/store/memory"
)

// recorder is an Auditor keeping events in memory; refuse makes Record
// fail.
type recorder struct {
	mu     sync.Mutex
	evs    []*audit.Event
	refuse error
}

func (r *recorder) Record(_ context.Context, ev *audit.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.refuse != nil {
		return r.refuse
	}
	r.evs = append(r.evs, ev)
	return nil
}

func (r *recorder) Query(context.Context, audit.Query) (audit.Page, error) {
	return audit.Page{}, audit.ErrNotQueryable
}

func (r *recorder) Flush(context.Context) error { return nil }

// take returns and forgets the events recorded so far.
func (r *recorder) take() []*audit.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.evs
	r.evs = nil
	return out
}

func (r *recorder) setRefuse(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refuse = err
}

func startAudited(t *testing.T) (*testServer, *recorder) {
	t.Helper()
	rec := &recorder{}
	ts := startServer(t, func(c *server.Config) { c.Audit = rec })
	return ts, rec
}

func one(t *testing.T, evs []*audit.Event) *audit.Event {
	t.Helper()
	if len(evs) != 1 {
		t.Fatalf("%d events, want 1: %+v", len(evs), evs)
	}
	return evs[0]
}

func TestAuditCheckEvents(t *testing.T) {
	ts, rec := startAudited(t)
	ts.writeSchema(testSchema)
	tok := ts.write(update(touch, mustParse(t, "doc:1#viewer@user:ann", "doc:1#viewer@agent:bot", "agent:bot#acts_for@user:ann")...)...)
	rec.take()

	_, err := ts.perm.Check(ts.ctx(), &pb.CheckRequest{Resource: obj("doc", "1"), Permission: "view", Subject: subj("agent", "bot"),
		Consistency: fresh(tok), Context: mustStruct(map[string]any{"task": "T-1"})})
	if err != nil {
		t.Fatal(err)
	}
	ev := one(t, rec.take())
	if ev.Operation != audit.OpCheck || ev.Resource != "doc:1" || ev.Permission != "view" || ev.Subject != "agent:bot" ||
		ev.SubjectKind != audit.Agent || ev.Principal != "user:ann" || ev.Decision != audit.Allowed || ev.Caller != "key-1" ||
		ev.Transport != "grpc" || !strings.HasPrefix(ev.Source, "127.0.0.1:") || ev.Context["task"] != "T-1" || ev.Revision == 0 {
		t.Errorf("check event: %+v", ev)
	}
	if len(ev.Chain) != 2 || ev.Chain[0].Subject != "agent:bot" || ev.Chain[1].Subject != "user:ann" || ev.Chain[0].Link != audit.Allowed {
		t.Errorf("chain %+v", ev.Chain)
	}
	if ev.RequestID == "" {
		t.Error("no request id assigned")
	}

	// A client's request ID is kept; a malformed one replaced.
	for id, keep := range map[string]bool{"client-id-7": true, strings.Repeat("x", 200): false, "has space": false} {
		ctx := metadata.AppendToOutgoingContext(ts.ctx(), server.RequestIDHeader, id)
		if _, err := ts.perm.Check(ctx, &pb.CheckRequest{Resource: obj("doc", "1"), Permission: "view", Subject: subj("user", "ann")}); err != nil {
			t.Fatal(err)
		}
		ev := one(t, rec.take())
		if (ev.RequestID == id) != keep || ev.RequestID == "" {
			t.Errorf("client request id %.20q recorded as %.20q", id, ev.RequestID)
		}
		if ev.SubjectKind != audit.Person || ev.Principal != "user:ann" {
			t.Errorf("person check: kind %q principal %q", ev.SubjectKind, ev.Principal)
		}
	}

	// A failed check is audited with its status.
	_, err = ts.perm.Check(ts.ctx(), &pb.CheckRequest{Resource: obj("doc", "1"), Permission: "view", Subject: subj("ghost", "x")})
	wantCode(t, err, codes.InvalidArgument)
	if ev := one(t, rec.take()); ev.Decision != audit.Error || ev.Code != "InvalidArgument" || !strings.Contains(ev.Error, "ghost") {
		t.Errorf("failed check: %+v", ev)
	}
	// Refused calls are audited too: TestAuditRefusedCalls.

	// CheckBulk: one event per item, one request ID.
	bulk, err := ts.perm.CheckBulk(ts.ctx(), &pb.CheckBulkRequest{Items: []*pb.CheckBulkRequestItem{
		{Resource: obj("doc", "1"), Permission: "view", Subject: subj("agent", "bot")},
		{Resource: obj("doc", "1"), Permission: "view", Subject: subj("user", "zed")},
		{Resource: obj("doc", "1"), Permission: "nope", Subject: subj("user", "ann")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	evs := rec.take()
	if len(evs) != 3 || len(bulk.GetPairs()) != 3 {
		t.Fatalf("%d events for 3 items", len(evs))
	}
	for i, want := range []audit.Decision{audit.Allowed, audit.Denied, audit.Error} {
		if evs[i].Decision != want || evs[i].Operation != audit.OpCheckBulk || evs[i].RequestID != evs[0].RequestID {
			t.Errorf("item %d: %+v", i, evs[i])
		}
	}
	if evs[0].Principal != "user:ann" || len(evs[0].Chain) != 2 || evs[2].Code != "InvalidArgument" || evs[1].Principal != "user:zed" {
		t.Errorf("bulk items: %+v / %+v / %+v", evs[0], evs[1], evs[2])
	}
}

func TestAuditWriteAndLookupEvents(t *testing.T) {
	ts, rec := startAudited(t)
	schemaTok := ts.writeSchema(testSchema)
	ev := one(t, rec.take())
	if ev.Operation != audit.OpWriteSchema || !strings.HasPrefix(ev.Detail, "schema sha256:") || ev.Revision == 0 {
		t.Errorf("schema write: %+v", ev)
	}
	_ = schemaTok

	exp := time.Date(2031, 1, 2, 3, 4, 5, 0, time.UTC)
	rl := mustParse(t, `doc:2#viewer@user:bo[within_limit:{"limit":5}]`)[0]
	rl2 := mustParse(t, "doc:3#viewer@user:cy")[0]
	rl2.OptionalExpiresAt = timestamppb.New(exp)
	tok := ts.write(&pb.RelationshipUpdate{Operation: touch, Relationship: rl}, &pb.RelationshipUpdate{Operation: create, Relationship: rl2},
		&pb.RelationshipUpdate{Operation: touch, Relationship: mustParse(t, "agent:bot#acts_for@user:bo")[0]})
	evs := rec.take()
	if len(evs) != 3 {
		t.Fatalf("%d events for 3 updates", len(evs))
	}
	if e := evs[0]; e.Update != "touch" || e.Resource != "doc:2" || e.Permission != "viewer" || e.Subject != "user:bo" ||
		e.Caveat != "within_limit" || e.Context["limit"] != 5.0 || e.Decision != audit.OK || e.Revision == 0 || e.SubjectKind != audit.Person {
		t.Errorf("update 0: %+v", e)
	}
	if e := evs[1]; e.Update != "create" || e.ExpiresAt == nil || !e.ExpiresAt.Equal(exp) || e.Revision != evs[0].Revision {
		t.Errorf("update 1: %+v", e)
	}
	if e := evs[2]; e.Resource != "agent:bot" || e.Permission != "acts_for" {
		t.Errorf("update 2: %+v", e)
	}

	// A failed write: every update is audited with the error.
	_, err := ts.rels.WriteRelationships(ts.ctx(), &pb.WriteRelationshipsRequest{Updates: update(create, rl2)})
	wantCode(t, err, codes.AlreadyExists)
	if e := one(t, rec.take()); e.Decision != audit.Error || e.Code != "AlreadyExists" || e.Resource != "doc:3" {
		t.Errorf("failed write: %+v", e)
	}

	// A lookup counts what it returned.
	stream, err := ts.perm.LookupResources(ts.ctx(), &pb.LookupResourcesRequest{ResourceObjectType: "doc", Permission: "view",
		Subject: subj("user", "cy"), Consistency: fresh(tok)})
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := stream.Recv(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if e := one(t, rec.take()); e.Operation != audit.OpLookupResources || e.Resource != "doc" || e.Count != 1 || e.Principal != "user:cy" || e.Revision == 0 {
		t.Errorf("lookup: %+v", e)
	}

	del, err := ts.rels.DeleteRelationships(ts.ctx(), &pb.DeleteRelationshipsRequest{Filter: &pb.RelationshipFilter{ResourceType: "doc", OptionalRelation: "viewer",
		OptionalSubjectFilter: &pb.SubjectFilter{SubjectType: "user", OptionalSubjectId: "cy"}}})
	if err != nil {
		t.Fatal(err)
	}
	if e := one(t, rec.take()); e.Operation != audit.OpDeleteRelationships || e.Count != 1 || e.Detail != "filter doc#viewer@user:cy" ||
		e.Subject != "user:cy" || e.Revision == 0 || del.GetDeletedCount() != 1 {
		t.Errorf("delete: %+v", e)
	}

	imp, err := ts.rels.ImportRelationships(ts.ctx())
	if err != nil {
		t.Fatal(err)
	}
	imp.Send(&pb.ImportRelationshipsRequest{Relationships: mustParse(t, "doc:7#viewer@user:a", "doc:8#viewer@user:b")})
	imp.Send(&pb.ImportRelationshipsRequest{Relationships: mustParse(t, "doc:9#viewer@user:c")})
	if _, err := imp.CloseAndRecv(); err != nil {
		t.Fatal(err)
	}
	if e := one(t, rec.take()); e.Operation != audit.OpImportRelationships || e.Count != 3 || e.Revision == 0 || e.Detail != "3 relationships received in 2 messages" {
		t.Errorf("import: %+v", e)
	}

	// REST goes through the same interceptor, with the client's address
	// from the gateway and its X-Request-Id.
	req, _ := http.NewRequest(http.MethodPost, ts.base+"/v1/permissions/check", strings.NewReader(`{"resource":{"objectType":"doc","objectId":"7"},"permission":"view","subject":{"object":{"objectType":"user","objectId":"a"}}}`))
	req.Header.Set("Authorization", "Bearer "+testKey)
	req.Header.Set("X-Request-Id", "rest-7")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if e := one(t, rec.take()); e.Transport != "rest" || e.RequestID != "rest-7" || e.Source != "127.0.0.1" || e.Caller != "key-1" {
		t.Errorf("REST check: %+v", e)
	}
}

func TestAuditRefusalFailsReadsNotWrites(t *testing.T) {
	ts, rec := startAudited(t)
	ts.writeSchema(testSchema)
	rec.setRefuse(errors.New("audit trail full"))
	_, err := ts.perm.Check(ts.ctx(), &pb.CheckRequest{Resource: obj("doc", "1"), Permission: "view", Subject: subj("user", "ann")})
	wantCode(t, err, codes.Unavailable, "audit trail cannot record this call", "audit trail full")
	// The write has happened by the time it is audited: it stands, and the
	// loss is the Auditor's to count and log.
	if _, err := ts.rels.WriteRelationships(ts.ctx(), &pb.WriteRelationshipsRequest{Updates: update(touch, mustParse(t, "doc:1#viewer@user:ann")...)}); err != nil {
		t.Errorf("write with a refusing audit trail: %v", err)
	}
	if !strings.Contains(ts.logs.String(), "a write was not audited") {
		t.Error("the unaudited write is not logged")
	}
}

func TestAuditQueryService(t *testing.T) {
	// Off: the service says so.
	off := startServer(t, nil)
	_, err := pb.NewAuditServiceClient(off.conn).Query(off.ctx(), &pb.AuditServiceQueryRequest{})
	wantCode(t, err, codes.FailedPrecondition, "auditing is off")

	// A file trail answers, and records the query itself.
	l, err := audit.New(context.Background(), audit.Options{Sink: mustFileSink(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(context.Background()) })
	ts := startServer(t, func(c *server.Config) {
		c.Audit = l
		c.PresharedKeys = []string{testKey, "second-key"}
		c.PresharedKeyNames = []string{"svc-a", "svc-b"}
	})
	ts.writeSchema(testSchema)
	ts.write(update(touch, mustParse(t, "doc:1#viewer@user:ann")...)...)
	ac := pb.NewAuditServiceClient(ts.conn)
	resp, err := ac.Query(ts.ctx(), &pb.AuditServiceQueryRequest{Resource: "doc:1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetEvents()) != 1 || resp.GetEvents()[0].GetCaller() != "svc-a" || resp.GetEvents()[0].GetUpdate() != "touch" || len(resp.GetEvents()[0].GetHash()) != 64 {
		t.Fatalf("query: %v", resp.GetEvents())
	}
	resp, err = pb.NewAuditServiceClient(ts.dial("second-key")).Query(ts.ctx(), &pb.AuditServiceQueryRequest{Operations: []string{"audit_query"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetEvents()) != 1 || resp.GetEvents()[0].GetDetail() != "query resource=doc:1" || resp.GetEvents()[0].GetCaller() != "svc-a" {
		t.Errorf("the first query's own event: %v", resp.GetEvents())
	}
	// REST: the route of mandate.http.yaml, in the OpenAPI document too.
	status, body := ts.restCall("/v1/audit/query", testKey, map[string]any{"operations": []string{"write_relationships"}, "limit": 5})
	if evs, _ := body["events"].([]any); status != http.StatusOK || len(evs) != 1 || evs[0].(map[string]any)["resource"] != "doc:1" {
		t.Errorf("REST audit query: HTTP %d %v", status, body)
	}
	m := ts.restRaw(http.MethodGet, "/metrics", "", nil)
	metricsText, _ := io.ReadAll(m.Body)
	m.Body.Close()
	for _, name := range []string{"mandate_audit_events_written_total", "mandate_audit_queue_length", "mandate_audit_write_errors_total"} {
		if !strings.Contains(string(metricsText), name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	doc := ts.restRaw(http.MethodGet, "/openapi.json", "", nil)
	raw, _ := io.ReadAll(doc.Body)
	doc.Body.Close()
	if !strings.Contains(string(raw), `"/v1/audit/query"`) || !strings.Contains(string(raw), "v1AuditEvent") {
		t.Error("/openapi.json does not describe /v1/audit/query")
	}

	for _, tc := range []struct {
		req  *pb.AuditServiceQueryRequest
		want string
	}{
		{&pb.AuditServiceQueryRequest{Limit: 1001}, "limit"},
		{&pb.AuditServiceQueryRequest{Principal: "ann"}, "principal"},
		{&pb.AuditServiceQueryRequest{Decisions: []string{"perhaps"}}, "decision"},
		{&pb.AuditServiceQueryRequest{Since: timestamppb.New(time.Now()), Until: timestamppb.New(time.Now().Add(-time.Hour))}, "until"},
	} {
		_, err := ac.Query(ts.ctx(), tc.req)
		wantCode(t, err, codes.InvalidArgument, tc.want)
	}

	// A trail that cannot be read back (stdout) says so.
	w, _ := audit.New(context.Background(), audit.Options{Sink: audit.NewWriterSink("stdout", io.Discard, "run-1")})
	t.Cleanup(func() { w.Close(context.Background()) })
	so := startServer(t, func(c *server.Config) { c.Audit = w })
	_, err = pb.NewAuditServiceClient(so.conn).Query(so.ctx(), &pb.AuditServiceQueryRequest{})
	wantCode(t, err, codes.FailedPrecondition, "cannot be queried")
}

func TestPresharedKeyNames(t *testing.T) {
	for _, tc := range []struct {
		keys, names []string
		want        string
	}{
		{[]string{"a1", "b2"}, []string{"only-one"}, "1 names for 2 keys"},
		{[]string{"a1", "b2"}, []string{"x", "x"}, `"x" is given twice`},
		{[]string{"a1"}, []string{"has space"}, "printable ASCII"},
	} {
		st := memory.New()
		_, err := server.New(st, engine.New(), server.Config{GRPCAddr: "127.0.0.1:0", PresharedKeys: tc.keys, PresharedKeyNames: tc.names})
		st.Close()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.names, err, tc.want)
		}
	}
}

func mustFileSink(t *testing.T) *audit.FileSink {
	t.Helper()
	s, err := audit.OpenFileSink(t.TempDir(), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestAuditAuthzedAPI(t *testing.T) {
	ts, rec := startAudited(t)
	ts.writeSchema(testSchema)
	rec.take()
	perms := v1.NewPermissionsServiceClient(ts.conn)
	w, err := perms.WriteRelationships(ts.ctx(), &v1.WriteRelationshipsRequest{Updates: []*v1.RelationshipUpdate{
		{Operation: v1.RelationshipUpdate_OPERATION_TOUCH, Relationship: &v1.Relationship{
			Resource: &v1.ObjectReference{ObjectType: "doc", ObjectId: "9"}, Relation: "viewer",
			Subject: &v1.SubjectReference{Object: &v1.ObjectReference{ObjectType: "agent", ObjectId: "bot"}}}},
		{Operation: v1.RelationshipUpdate_OPERATION_TOUCH, Relationship: &v1.Relationship{
			Resource: &v1.ObjectReference{ObjectType: "agent", ObjectId: "bot"}, Relation: "acts_for",
			Subject: &v1.SubjectReference{Object: &v1.ObjectReference{ObjectType: "user", ObjectId: "ann"}}}},
		{Operation: v1.RelationshipUpdate_OPERATION_TOUCH, Relationship: &v1.Relationship{
			Resource: &v1.ObjectReference{ObjectType: "doc", ObjectId: "9"}, Relation: "viewer",
			Subject: &v1.SubjectReference{Object: &v1.ObjectReference{ObjectType: "user", ObjectId: "ann"}}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	evs := rec.take()
	if len(evs) != 3 || evs[0].Transport != "grpc-authzed" || evs[0].Update != "touch" || evs[0].SubjectKind != audit.Agent || evs[1].Resource != "agent:bot" || evs[0].Revision == 0 {
		t.Fatalf("authzed write events: %+v", evs)
	}
	ctx := metadata.AppendToOutgoingContext(ts.ctx(), server.OnBehalfOfHeader, "user:ann")
	resp, err := perms.CheckPermission(ctx, &v1.CheckPermissionRequest{
		Consistency: &v1.Consistency{Requirement: &v1.Consistency_AtLeastAsFresh{AtLeastAsFresh: w.GetWrittenAt()}},
		Resource:    &v1.ObjectReference{ObjectType: "doc", ObjectId: "9"}, Permission: "view",
		Subject: &v1.SubjectReference{Object: &v1.ObjectReference{ObjectType: "agent", ObjectId: "bot"}}})
	if err != nil {
		t.Fatal(err)
	}
	ev := one(t, rec.take())
	if ev.Operation != audit.OpCheck || ev.Decision != audit.Allowed || resp.GetPermissionship() != v1.CheckPermissionResponse_PERMISSIONSHIP_HAS_PERMISSION ||
		ev.Subject != "agent:bot" || ev.SubjectKind != audit.Agent || ev.OnBehalfOf != "user:ann" || ev.Principal != "user:ann" || ev.Resource != "doc:9" || ev.Revision == 0 {
		t.Errorf("authzed check event: %+v", ev)
	}
	// SpiceDB's response has no field for the chain; the event has it all
	// the same, from the core's answer.
	if len(ev.Chain) != 2 || ev.Chain[0].Subject != "agent:bot" || ev.Chain[1].Subject != "user:ann" {
		t.Errorf("authzed check chain: %+v", ev.Chain)
	}
}

// TestAuditRefusedCalls checks that calls refused for a missing or wrong
// preshared key are audited too, unary and streaming, over gRPC and REST,
// with the refusal's code, the operation and the source. What the caller
// asked is not recorded: the call is refused before its body is read
// (TestUnauthenticatedBodyIsNotRead).
func TestAuditRefusedCalls(t *testing.T) {
	ts, rec := startAudited(t)
	ts.writeSchema(testSchema)
	rec.take()
	check := &pb.CheckRequest{Resource: &pb.ObjectReference{ObjectType: "doc", ObjectId: "1"}, Permission: "view",
		Subject: &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: "user", ObjectId: "ann"}}}
	for _, key := range []string{"", "not-the-key"} {
		_, err := pb.NewPermissionServiceClient(ts.dial(key)).Check(ts.ctx(), check)
		wantCode(t, err, codes.Unauthenticated, "")
		ev := one(t, rec.take())
		if ev.Operation != audit.OpCheck || ev.Code != codes.Unauthenticated.String() || ev.Decision != audit.Error ||
			ev.Caller != "" || ev.Resource != "" || ev.Subject != "" || ev.Source == "" || ev.Transport != "grpc" {
			t.Errorf("key %q: refused check audited as %+v", key, ev)
		}
	}
	stream, err := pb.NewPermissionServiceClient(ts.dial("not-the-key")).LookupResources(ts.ctx(), &pb.LookupResourcesRequest{
		ResourceObjectType: "doc", Permission: "view", Subject: check.Subject})
	if err == nil {
		_, err = stream.Recv()
	}
	wantCode(t, err, codes.Unauthenticated, "")
	if ev := one(t, rec.take()); ev.Operation != audit.OpLookupResources || ev.Code != codes.Unauthenticated.String() {
		t.Errorf("refused lookup audited as %+v", ev)
	}
	status, _ := ts.restCall("/v1/permissions/check", "not-the-key", map[string]any{
		"resource": map[string]any{"objectType": "doc", "objectId": "1"}, "permission": "view",
		"subject": map[string]any{"object": map[string]any{"objectType": "user", "objectId": "ann"}}})
	if status != http.StatusUnauthorized {
		t.Errorf("REST check with a wrong key: HTTP %d", status)
	}
	if ev := one(t, rec.take()); ev.Operation != audit.OpCheck || ev.Code != codes.Unauthenticated.String() || ev.Transport != "rest" || ev.Resource != "" {
		t.Errorf("refused REST check audited as %+v", ev)
	}
}
