package server_test

import (
	"slices"
	"sort"
	"testing"
	"time"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"google.golang.org/grpc/codes"

	"github.com/mandate-authz/mandate/server"
)

func TestAuthzedWatch(t *testing.T) {
	ts := startServer(t, nil)
	c := mandateClient(t, ts, testKey)
	ctx := ts.ctx()
	w, err := c.WriteSchema(ctx, &v1.WriteSchemaRequest{Schema: testSchema})
	if err != nil {
		t.Fatal(err)
	}
	start := w.GetWrittenAt()

	all, err := c.Watch(ctx, &v1.WatchRequest{OptionalStartCursor: start})
	if err != nil {
		t.Fatal(err)
	}
	groups, err := c.Watch(ctx, &v1.WatchRequest{OptionalStartCursor: start, OptionalObjectTypes: []string{"group"}})
	if err != nil {
		t.Fatal(err)
	}
	byFilter, err := c.Watch(ctx, &v1.WatchRequest{OptionalStartCursor: start, OptionalRelationshipFilters: []*v1.RelationshipFilter{
		{ResourceType: "doc", OptionalResourceIdPrefix: "b"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	write := func(op v1.RelationshipUpdate_Operation, texts ...string) *v1.ZedToken {
		t.Helper()
		resp, err := c.WriteRelationships(ctx, &v1.WriteRelationshipsRequest{Updates: zupdates(op, zrels(t, texts...)...)})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetWrittenAt()
	}
	t1 := write(zcreate, "doc:a#viewer@user:ann", "doc:b#viewer@user:ann", "group:eng#member@user:bob")
	t2 := write(zdelete, "doc:a#viewer@user:ann")

	want := []struct {
		token   *v1.ZedToken
		updates []string
	}{
		{t1, []string{"OPERATION_TOUCH doc:a#viewer@user:ann", "OPERATION_TOUCH doc:b#viewer@user:ann", "OPERATION_TOUCH group:eng#member@user:bob"}},
		{t2, []string{"OPERATION_DELETE doc:a#viewer@user:ann"}},
	}
	for i, w := range want {
		r, err := all.Recv()
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, u := range r.GetUpdates() {
			got = append(got, u.GetOperation().String()+" "+zrelText(u.GetRelationship()))
		}
		sort.Strings(got)
		if !slices.Equal(got, w.updates) || r.GetChangesThrough().GetToken() != w.token.GetToken() {
			t.Errorf("change %d = %v through %v, want %v through %v", i, got, r.GetChangesThrough(), w.updates, w.token)
		}
	}
	for name, stream := range map[string]v1.WatchService_WatchClient{"object types": groups, "relationship filter": byFilter} {
		r, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{"object types": "group:eng#member@user:bob", "relationship filter": "doc:b#viewer@user:ann"}[name]
		if len(r.GetUpdates()) != 1 || zrelText(r.GetUpdates()[0].GetRelationship()) != want {
			t.Errorf("watch by %s got %v, want %s", name, r.GetUpdates(), want)
		}
	}

	t.Run("schema updates only when asked for", func(t *testing.T) {
		schemaWatch, err := c.Watch(ctx, &v1.WatchRequest{OptionalStartCursor: t2, OptionalUpdateKinds: []v1.WatchKind{
			v1.WatchKind_WATCH_KIND_INCLUDE_RELATIONSHIP_UPDATES, v1.WatchKind_WATCH_KIND_INCLUDE_SCHEMA_UPDATES,
		}})
		if err != nil {
			t.Fatal(err)
		}
		sw, err := c.WriteSchema(ctx, &v1.WriteSchemaRequest{Schema: testSchema + "\ndefinition folder {}\n"})
		if err != nil {
			t.Fatal(err)
		}
		r, err := schemaWatch.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if !r.GetSchemaUpdated() || r.GetChangesThrough().GetToken() != sw.GetWrittenAt().GetToken() {
			t.Errorf("schema write reported as %v", r)
		}
		// The plain watch skipped the schema write: its next message is the
		// next relationship change.
		t3 := write(ztouch, "doc:c#viewer@user:cy")
		r, err = all.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if r.GetSchemaUpdated() || r.GetChangesThrough().GetToken() != t3.GetToken() {
			t.Errorf("plain watch after a schema write got %v", r)
		}
	})

	t.Run("checkpoints when asked for", func(t *testing.T) {
		head := write(ztouch, "doc:d#viewer@user:dee")
		cp, err := c.Watch(ctx, &v1.WatchRequest{OptionalUpdateKinds: []v1.WatchKind{v1.WatchKind_WATCH_KIND_INCLUDE_CHECKPOINTS}})
		if err != nil {
			t.Fatal(err)
		}
		begin := time.Now()
		r, err := cp.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if !r.GetIsCheckpoint() || r.GetChangesThrough().GetToken() != head.GetToken() || len(r.GetUpdates()) != 0 {
			t.Errorf("checkpoint = %v, want one through %v", r, head)
		}
		if d := time.Since(begin); d > 3*time.Second {
			t.Errorf("first checkpoint after %v", d)
		}
	})

	t.Run("bad requests", func(t *testing.T) {
		bad := []struct {
			name string
			req  *v1.WatchRequest
			code codes.Code
		}{
			{"types and filters", &v1.WatchRequest{OptionalObjectTypes: []string{"doc"}, OptionalRelationshipFilters: []*v1.RelationshipFilter{{ResourceType: "doc"}}}, codes.InvalidArgument},
			{"unknown type in a filter", &v1.WatchRequest{OptionalRelationshipFilters: []*v1.RelationshipFilter{{ResourceType: "nope"}}}, codes.FailedPrecondition},
			{"malformed start", &v1.WatchRequest{OptionalStartCursor: &v1.ZedToken{Token: "garbage"}}, codes.InvalidArgument},
		}
		for _, b := range bad {
			stream, err := c.Watch(ctx, b.req)
			if err == nil {
				_, err = stream.Recv()
			}
			wantCode(t, err, b.code)
		}
	})

	// Shutdown ends the watch with Unavailable instead of hanging.
	if err := ts.shutdown(); err != nil {
		t.Fatalf("Run returned %v", err)
	}
	// (Changes already sent are delivered first.)
	for err == nil {
		_, err = all.Recv()
	}
	wantCode(t, err, codes.Unavailable, "shutting down")
}

// TestAuthzedStreamsOutliveRequestTimeout: Watch and the bulk streams last as
// long as the client wants, like their mandate.v1 counterparts; only unary
// calls are cut off by the request timeout.
func TestAuthzedStreamsOutliveRequestTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	ts := startServer(t, func(c *server.Config) { c.Limits.RequestTimeout = timeout })
	c := mandateClient(t, ts, testKey)
	ctx := ts.ctx()
	w, err := c.WriteSchema(ctx, &v1.WriteSchemaRequest{Schema: testSchema})
	if err != nil {
		t.Fatal(err)
	}
	watch, err := c.Watch(ctx, &v1.WatchRequest{OptionalStartCursor: w.GetWrittenAt()})
	if err != nil {
		t.Fatal(err)
	}
	imp, err := c.ImportBulkRelationships(ctx)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * timeout) // both streams are now older than the timeout
	if err := imp.Send(&v1.ImportBulkRelationshipsRequest{Relationships: zrels(t, "doc:late#viewer@user:ann")}); err != nil {
		t.Fatal(err)
	}
	if _, err := imp.CloseAndRecv(); err != nil {
		t.Fatalf("import stream older than the request timeout: %v", err)
	}
	r, err := watch.Recv()
	if err != nil {
		t.Fatalf("watch older than the request timeout: %v", err)
	}
	if len(r.GetUpdates()) != 1 || zrelText(r.GetUpdates()[0].GetRelationship()) != "doc:late#viewer@user:ann" {
		t.Errorf("watch got %v, want the imported relationship", r.GetUpdates())
	}
}
