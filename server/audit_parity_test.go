package server_test

import (
	"reflect"
	"strings"
	"testing"
	"time"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"google.golang.org/grpc/metadata"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/server/audit"
)

// comparable strips what legitimately differs between two calls of the
// same operation: when, which request, through which API and transport
// (and so from which port), and at which revision.
func comparable(evs []*audit.Event) []audit.Event {
	out := make([]audit.Event, len(evs))
	for i, ev := range evs {
		e := *ev
		e.Time, e.RequestID, e.Transport, e.Source, e.Revision = time.Time{}, "", "", "", 0
		out[i] = e
	}
	return out
}

// nativeSubject parses "type:id" into a mandate.v1 subject.
func nativeSubject(text string) *pb.SubjectReference {
	typ, id, _ := strings.Cut(text, ":")
	return subj(typ, id)
}

// TestAuditEventsAgreeAcrossAPIs checks that the same operation called
// through mandate.v1 and through authzed.api.v1 is audited with the same
// fields (all but time, request ID, transport, source and revision): both
// APIs are facades over one operation core, which builds the events.
func TestAuditEventsAgreeAcrossAPIs(t *testing.T) {
	ts, rec := startAudited(t)
	perms := v1.NewPermissionsServiceClient(ts.conn)
	zschema := v1.NewSchemaServiceClient(ts.conn)

	agree := func(t *testing.T, op audit.Operation, native, authzed []*audit.Event) {
		t.Helper()
		if len(native) == 0 || len(native) != len(authzed) {
			t.Fatalf("%s: %d mandate.v1 events, %d authzed.api.v1 events", op, len(native), len(authzed))
		}
		a, b := comparable(native), comparable(authzed)
		for i := range a {
			if a[i].Operation != op {
				t.Errorf("%s: event %d is a %s", op, i, a[i].Operation)
			}
			if !reflect.DeepEqual(a[i], b[i]) {
				t.Errorf("%s event %d differs:\n  mandate.v1:     %+v\n  authzed.api.v1: %+v", op, i, a[i], b[i])
			}
		}
		if native[0].Transport != "grpc" || authzed[0].Transport != "grpc-authzed" {
			t.Errorf("%s: transports %q and %q", op, native[0].Transport, authzed[0].Transport)
		}
	}

	t.Run("schema write", func(t *testing.T) {
		ts.writeSchema(testSchema)
		native := rec.take()
		if _, err := zschema.WriteSchema(ts.ctx(), &v1.WriteSchemaRequest{Schema: testSchema}); err != nil {
			t.Fatal(err)
		}
		agree(t, audit.OpWriteSchema, native, rec.take())
	})

	rels := []string{"doc:1#viewer@agent:bot", "agent:bot#acts_for@user:ann", "doc:1#viewer@user:ann", "doc:1#viewer@group:eng#member"}
	t.Run("write", func(t *testing.T) {
		ts.write(update(pb.RelationshipUpdate_OPERATION_TOUCH, mustParse(t, rels...)...)...)
		native := rec.take()
		if _, err := perms.WriteRelationships(ts.ctx(), &v1.WriteRelationshipsRequest{Updates: zupdates(v1.RelationshipUpdate_OPERATION_TOUCH, zrels(t, rels...)...)}); err != nil {
			t.Fatal(err)
		}
		authzed := rec.take()
		agree(t, audit.OpWriteRelationships, native, authzed)
		if native[0].SubjectKind != audit.Agent || native[1].SubjectKind != audit.Person || native[3].SubjectKind != audit.Userset {
			t.Errorf("write subject kinds: %+v", native)
		}
	})

	// An agent's check names its chain, through either API.
	oboCtx := metadata.AppendToOutgoingContext(ts.ctx(), server.OnBehalfOfHeader, "user:ann")
	t.Run("check", func(t *testing.T) {
		for _, c := range []struct {
			subject string
			obo     bool
		}{{"user:ann", false}, {"agent:bot", true}, {"user:bob", false}} {
			req := &pb.CheckRequest{Resource: obj("doc", "1"), Permission: "view", Subject: nativeSubject(c.subject), Consistency: fullyConsistent()}
			zreq := &v1.CheckPermissionRequest{Resource: zres("doc:1"), Permission: "view", Subject: zsubj(c.subject),
				Consistency: &v1.Consistency{Requirement: &v1.Consistency_FullyConsistent{FullyConsistent: true}}}
			zctx := ts.ctx()
			if c.obo {
				req.OnBehalfOf = obj("user", "ann")
				zctx = oboCtx
			}
			if _, err := ts.perm.Check(ts.ctx(), req); err != nil {
				t.Fatal(err)
			}
			native := rec.take()
			if _, err := perms.CheckPermission(zctx, zreq); err != nil {
				t.Fatal(err)
			}
			agree(t, audit.OpCheck, native, rec.take())
			if c.obo && (len(native[0].Chain) != 2 || native[0].Principal != "user:ann") {
				t.Errorf("agent check event: %+v", native[0])
			}
		}
	})

	t.Run("bulk check", func(t *testing.T) {
		items := []*pb.CheckBulkRequestItem{
			{Resource: obj("doc", "1"), Permission: "view", Subject: subj("user", "ann")},
			{Resource: obj("doc", "1"), Permission: "view", Subject: subj("user", "bob")},
			{Resource: obj("doc", "1"), Permission: "nope", Subject: subj("user", "ann")},
		}
		if _, err := ts.perm.CheckBulk(ts.ctx(), &pb.CheckBulkRequest{Items: items, Consistency: fullyConsistent()}); err != nil {
			t.Fatal(err)
		}
		native := rec.take()
		var zitems []*v1.CheckBulkPermissionsRequestItem
		for _, it := range items {
			zitems = append(zitems, &v1.CheckBulkPermissionsRequestItem{Resource: zres("doc:1"), Permission: it.GetPermission(),
				Subject: zsubj(it.GetSubject().GetObject().GetObjectType() + ":" + it.GetSubject().GetObject().GetObjectId())})
		}
		if _, err := perms.CheckBulkPermissions(ts.ctx(), &v1.CheckBulkPermissionsRequest{Items: zitems,
			Consistency: &v1.Consistency{Requirement: &v1.Consistency_FullyConsistent{FullyConsistent: true}}}); err != nil {
			t.Fatal(err)
		}
		authzed := rec.take()
		// The unknown permission is an item error, worded by each API; the
		// rest of the event agrees.
		if native[2].Decision != audit.Error || authzed[2].Decision != audit.Error || native[2].Code == "" || authzed[2].Code == "" {
			t.Errorf("failed items: %+v / %+v", native[2], authzed[2])
		}
		native[2].Code, native[2].Error, authzed[2].Code, authzed[2].Error = "", "", "", ""
		agree(t, audit.OpCheckBulk, native, authzed)
	})

	t.Run("lookup resources", func(t *testing.T) {
		stream, err := ts.perm.LookupResources(ts.ctx(), &pb.LookupResourcesRequest{ResourceObjectType: "doc", Permission: "view", Subject: subj("agent", "bot"),
			OnBehalfOf: obj("user", "ann"), Consistency: fullyConsistent()})
		if err != nil {
			t.Fatal(err)
		}
		if got := len(recvAll(t, stream)); got != 1 {
			t.Fatalf("mandate.v1 lookup: %d results", got)
		}
		native := rec.take()
		zstream, err := perms.LookupResources(oboCtx, &v1.LookupResourcesRequest{ResourceObjectType: "doc", Permission: "view", Subject: zsubj("agent:bot"),
			Consistency: &v1.Consistency{Requirement: &v1.Consistency_FullyConsistent{FullyConsistent: true}}})
		if err != nil {
			t.Fatal(err)
		}
		if got := len(recvAll(t, zstream)); got != 1 {
			t.Fatalf("authzed.api.v1 lookup: %d results", got)
		}
		agree(t, audit.OpLookupResources, native, rec.take())
	})

	t.Run("delete", func(t *testing.T) {
		if _, err := ts.rels.DeleteRelationships(ts.ctx(), &pb.DeleteRelationshipsRequest{Filter: &pb.RelationshipFilter{ResourceType: "doc", OptionalResourceIds: []string{"1"}, OptionalRelation: "viewer",
			OptionalSubjectFilter: &pb.SubjectFilter{SubjectType: "user", OptionalSubjectId: "ann"}}}); err != nil {
			t.Fatal(err)
		}
		native := rec.take()
		ts.write(update(pb.RelationshipUpdate_OPERATION_TOUCH, mustParse(t, "doc:1#viewer@user:ann")...)...)
		rec.take()
		if _, err := perms.DeleteRelationships(ts.ctx(), &v1.DeleteRelationshipsRequest{RelationshipFilter: &v1.RelationshipFilter{ResourceType: "doc", OptionalResourceId: "1", OptionalRelation: "viewer",
			OptionalSubjectFilter: &v1.SubjectFilter{SubjectType: "user", OptionalSubjectId: "ann"}}}); err != nil {
			t.Fatal(err)
		}
		authzed := rec.take()
		agree(t, audit.OpDeleteRelationships, native, authzed)
		if native[0].Count != 1 || native[0].Detail != "filter doc:1#viewer@user:ann" {
			t.Errorf("delete event: %+v", native[0])
		}
	})
}
