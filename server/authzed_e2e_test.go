package server_test

//lint:file-ignore SA1019 the test checks that LookupSubjects still fills the deprecated fields older clients read.

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"github.com/authzed/authzed-go/v1"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server"
)

// seedAuthzed writes testSchema and a data set through the authzed API in
// batches of 1000 updates, returning the last ZedToken and every
// relationship written.
func seedAuthzed(t *testing.T, ts *testServer) (*v1.ZedToken, []string) {
	t.Helper()
	c := mandateClient(t, ts, testKey)
	ctx := ts.ctx()
	if _, err := c.WriteSchema(ctx, &v1.WriteSchemaRequest{Schema: testSchema}); err != nil {
		t.Fatalf("WriteSchema: %v", err)
	}
	texts := []string{
		"doc:readme#owner@user:ann",
		"doc:readme#viewer@group:eng#member",
		"group:eng#member@user:bob",
		"group:eng#member@group:ops#member",
		"group:ops#member@user:oz",
		`doc:readme#viewer@user:carl[within_limit:{"limit":100}]`,
		"doc:readme#viewer@user:dan",
		"doc:readme#banned@user:dan",
		"doc:readme#viewer@user:eve[expiration:2100-01-01T00:00:00Z]",
		"doc:readme#viewer@user:old[expiration:2000-01-01T00:00:00Z]",
		"doc:public#viewer@user:*",
		"doc:public#banned@user:dan",
	}
	for i := range 2500 {
		texts = append(texts, fmt.Sprintf("doc:d%04d#viewer@user:u%02d", i, i%50))
	}
	var token *v1.ZedToken
	for start := 0; start < len(texts); start += 1000 {
		batch := texts[start:min(start+1000, len(texts))]
		resp, err := c.WriteRelationships(ctx, &v1.WriteRelationshipsRequest{Updates: zupdates(zcreate, zrels(t, batch...)...)})
		if err != nil {
			t.Fatalf("WriteRelationships batch at %d: %v", start, err)
		}
		token = resp.GetWrittenAt()
	}
	return token, texts
}

func TestAuthzedEndToEnd(t *testing.T) {
	ts := startServer(t, nil)
	c := mandateClient(t, ts, testKey)
	ctx := ts.ctx()

	t.Run("read schema before any is NotFound", func(t *testing.T) {
		_, err := c.ReadSchema(ctx, &v1.ReadSchemaRequest{})
		wantCode(t, err, codes.NotFound, "No schema")
	})

	token, written := seedAuthzed(t, ts)

	t.Run("schema round trip", func(t *testing.T) {
		resp, err := c.ReadSchema(ctx, &v1.ReadSchemaRequest{})
		if err != nil {
			t.Fatal(err)
		}
		native, err := ts.schema.ReadSchema(ctx, &pb.ReadSchemaRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetSchemaText() != testSchema || native.GetSchemaText() != testSchema || resp.GetReadAt().GetToken() != native.GetReadAt().GetToken() {
			t.Errorf("ReadSchema = %q at %q; native %q at %q", resp.GetSchemaText(), resp.GetReadAt().GetToken(), native.GetSchemaText(), native.GetReadAt().GetToken())
		}
	})

	t.Run("relationships written in batches read back equal through both APIs", func(t *testing.T) {
		got := zreadAll(t, ctx, c, zfresh(token), &v1.RelationshipFilter{ResourceType: "doc"}, 1000)
		native := nativeReadAll(t, ts, fresh(token.GetToken()), &pb.RelationshipFilter{ResourceType: "doc"})
		if !slices.Equal(got, native) {
			t.Fatalf("authzed read %d relationships, native %d", len(got), len(native))
		}
		var want []string
		for _, w := range written {
			if strings.HasPrefix(w, "doc:") && !strings.Contains(w, "user:old") {
				want = append(want, w)
			}
		}
		if len(got) != len(want) {
			t.Errorf("read %d doc relationships, wrote %d live ones", len(got), len(want))
		}
		// A read by ID prefix filters like SpiceDB's optional_resource_id_prefix.
		pre := zreadAll(t, ctx, c, zfull, &v1.RelationshipFilter{ResourceType: "doc", OptionalResourceIdPrefix: "d249"}, 3)
		if len(pre) != 10 || !strings.HasPrefix(pre[0], "doc:d2490#") {
			t.Errorf("prefix read = %v", pre)
		}
	})

	checks := []struct {
		res, perm, sub string
		context        map[string]any
		want           v1.CheckPermissionResponse_Permissionship
		missing        []string
	}{
		{"doc:readme", "edit", "user:ann", nil, v1.CheckPermissionResponse_PERMISSIONSHIP_HAS_PERMISSION, nil},
		{"doc:readme", "view", "user:bob", nil, v1.CheckPermissionResponse_PERMISSIONSHIP_HAS_PERMISSION, nil},
		{"doc:readme", "view", "user:oz", nil, v1.CheckPermissionResponse_PERMISSIONSHIP_HAS_PERMISSION, nil},
		{"doc:readme", "view", "user:carl", map[string]any{"amount": 5}, v1.CheckPermissionResponse_PERMISSIONSHIP_HAS_PERMISSION, nil},
		{"doc:readme", "view", "user:carl", map[string]any{"amount": 500}, v1.CheckPermissionResponse_PERMISSIONSHIP_NO_PERMISSION, nil},
		{"doc:readme", "view", "user:carl", nil, v1.CheckPermissionResponse_PERMISSIONSHIP_CONDITIONAL_PERMISSION, []string{"amount"}},
		{"doc:readme", "view", "user:dan", nil, v1.CheckPermissionResponse_PERMISSIONSHIP_NO_PERMISSION, nil},
		{"doc:readme", "view", "user:eve", nil, v1.CheckPermissionResponse_PERMISSIONSHIP_HAS_PERMISSION, nil},
		{"doc:readme", "view", "user:old", nil, v1.CheckPermissionResponse_PERMISSIONSHIP_NO_PERMISSION, nil},
		{"doc:readme", "viewer", "group:eng#member", nil, v1.CheckPermissionResponse_PERMISSIONSHIP_HAS_PERMISSION, nil},
		{"doc:public", "view", "user:zed", nil, v1.CheckPermissionResponse_PERMISSIONSHIP_HAS_PERMISSION, nil},
		{"doc:public", "view", "user:dan", nil, v1.CheckPermissionResponse_PERMISSIONSHIP_NO_PERMISSION, nil},
		{"doc:d0007", "view", "user:u07", nil, v1.CheckPermissionResponse_PERMISSIONSHIP_HAS_PERMISSION, nil},
		{"doc:d0007", "view", "user:u08", nil, v1.CheckPermissionResponse_PERMISSIONSHIP_NO_PERMISSION, nil},
	}
	modes := []struct {
		name   string
		z      *v1.Consistency
		native *pb.Consistency
	}{
		{"default", nil, nil},
		{"minimize_latency", zfast, &pb.Consistency{Requirement: &pb.Consistency_MinimizeLatency{MinimizeLatency: true}}},
		{"at_least_as_fresh", zfresh(token), fresh(token.GetToken())},
		{"at_exact_snapshot", zexact(token), &pb.Consistency{Requirement: &pb.Consistency_AtExactSnapshot{AtExactSnapshot: &pb.RevisionToken{Token: token.GetToken()}}}},
		{"fully_consistent", zfull, fullyConsistent()},
	}
	for _, m := range modes {
		t.Run("check "+m.name, func(t *testing.T) {
			for _, ch := range checks {
				resp, err := c.CheckPermission(ctx, &v1.CheckPermissionRequest{
					Consistency: m.z, Resource: zres(ch.res), Permission: ch.perm, Subject: zsubj(ch.sub), Context: mustStruct(ch.context),
				})
				if err != nil {
					t.Fatalf("%s#%s@%s: %v", ch.res, ch.perm, ch.sub, err)
				}
				nsub := zsubj(ch.sub)
				native, err := ts.perm.Check(ctx, &pb.CheckRequest{
					Consistency: m.native, Resource: obj(zres(ch.res).ObjectType, zres(ch.res).ObjectId), Permission: ch.perm,
					Subject: &pb.SubjectReference{Object: obj(nsub.Object.ObjectType, nsub.Object.ObjectId), OptionalRelation: nsub.OptionalRelation},
					Context: mustStruct(ch.context),
				})
				if err != nil {
					t.Fatal(err)
				}
				got, missing := resp.GetPermissionship(), resp.GetPartialCaveatInfo().GetMissingRequiredContext()
				if got != ch.want || !slices.Equal(missing, ch.missing) {
					t.Errorf("%s#%s@%s = %v missing %v, want %v missing %v", ch.res, ch.perm, ch.sub, got, missing, ch.want, ch.missing)
				}
				if permissionshipOf(native.GetDecision()) != got || !slices.Equal(native.GetMissingParameters(), missing) {
					t.Errorf("%s#%s@%s: authzed %v, native %v", ch.res, ch.perm, ch.sub, got, native.GetDecision())
				}
				if resp.GetCheckedAt().GetToken() == "" {
					t.Error("no checked_at")
				}
				if m.name == "at_exact_snapshot" && resp.GetCheckedAt().GetToken() != token.GetToken() {
					t.Errorf("at_exact_snapshot answered at %q, want the snapshot %q", resp.GetCheckedAt().GetToken(), token.GetToken())
				}
			}
		})
	}

	t.Run("exact snapshot sees the past, fresh sees the write", func(t *testing.T) {
		before := token
		resp, err := c.WriteRelationships(ctx, &v1.WriteRelationshipsRequest{Updates: zupdates(ztouch, zrels(t, "doc:readme#viewer@user:late")...)})
		if err != nil {
			t.Fatal(err)
		}
		after := resp.GetWrittenAt()
		check := func(cons *v1.Consistency) v1.CheckPermissionResponse_Permissionship {
			r, err := c.CheckPermission(ctx, &v1.CheckPermissionRequest{Consistency: cons, Resource: zres("doc:readme"), Permission: "view", Subject: zsubj("user:late")})
			if err != nil {
				t.Fatal(err)
			}
			return r.GetPermissionship()
		}
		if got := check(zexact(before)); got != v1.CheckPermissionResponse_PERMISSIONSHIP_NO_PERMISSION {
			t.Errorf("at the earlier snapshot: %v", got)
		}
		for _, cons := range []*v1.Consistency{zfresh(after), zfresh(before), zfull, zexact(after)} {
			if got := check(cons); got != v1.CheckPermissionResponse_PERMISSIONSHIP_HAS_PERMISSION {
				t.Errorf("%v: %v", cons, got)
			}
		}
		// The ZedToken is Mandate's revision token: the native API takes it.
		native := checkDecision(t, ts, fresh(after.GetToken()), "doc:readme", "view", "user:late")
		if native != pb.Decision_DECISION_ALLOWED {
			t.Errorf("native check with the ZedToken: %v", native)
		}
		token = after
	})

	t.Run("check bulk", func(t *testing.T) {
		items := []*v1.CheckBulkPermissionsRequestItem{
			{Resource: zres("doc:readme"), Permission: "view", Subject: zsubj("user:ann")},
			{Resource: zres("doc:readme"), Permission: "view", Subject: zsubj("user:zed")},
			{Resource: zres("doc:readme"), Permission: "nope", Subject: zsubj("user:ann")},
			{Resource: zres("doc:readme"), Permission: "view", Subject: zsubj("user:carl")},
			{Resource: zres("folder:x"), Permission: "view", Subject: zsubj("user:ann")},
		}
		resp, err := c.CheckBulkPermissions(ctx, &v1.CheckBulkPermissionsRequest{Consistency: zfresh(token), Items: items})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for i, p := range resp.GetPairs() {
			if p.GetRequest().GetPermission() != items[i].GetPermission() {
				t.Errorf("pair %d answers %v", i, p.GetRequest())
			}
			if e := p.GetError(); e != nil {
				got = append(got, codes.Code(e.GetCode()).String())
				continue
			}
			got = append(got, p.GetItem().GetPermissionship().String())
		}
		want := []string{"PERMISSIONSHIP_HAS_PERMISSION", "PERMISSIONSHIP_NO_PERMISSION", "FailedPrecondition", "PERMISSIONSHIP_CONDITIONAL_PERMISSION", "FailedPrecondition"}
		if !slices.Equal(got, want) {
			t.Errorf("CheckBulkPermissions = %v, want %v", got, want)
		}
		if m := resp.GetPairs()[3].GetItem().GetPartialCaveatInfo().GetMissingRequiredContext(); !slices.Equal(m, []string{"amount"}) {
			t.Errorf("missing context = %v", m)
		}
	})

	t.Run("lookup resources with cursors and limits", func(t *testing.T) {
		all := zlookupResources(t, c, &v1.LookupResourcesRequest{Consistency: zfresh(token), ResourceObjectType: "doc", Permission: "view", Subject: zsubj("user:u07")}, 0)
		native, _ := lookupResources(t, ts, &pb.LookupResourcesRequest{Consistency: fresh(token.GetToken()), ResourceObjectType: "doc", Permission: "view", Subject: subj("user", "u07")})
		if !slices.Equal(all, native) {
			t.Fatalf("authzed lookup %v\nnative %v", all, native)
		}
		if len(all) != 51 || all[50] != "public" {
			t.Fatalf("u07 sees %d documents: %v", len(all), all)
		}
		for _, limit := range []uint32{1, 7, 50, 51, 1000} {
			paged := zlookupResources(t, c, &v1.LookupResourcesRequest{Consistency: zfresh(token), ResourceObjectType: "doc", Permission: "view", Subject: zsubj("user:u07")}, limit)
			if !slices.Equal(paged, all) {
				t.Errorf("pages of %d: %d results, want %d", limit, len(paged), len(all))
			}
		}
		// Conditional results say what they miss.
		stream, err := c.LookupResources(ctx, &v1.LookupResourcesRequest{Consistency: zfresh(token), ResourceObjectType: "doc", Permission: "view", Subject: zsubj("user:carl")})
		if err != nil {
			t.Fatal(err)
		}
		var carl []string
		for _, r := range recvAll(t, stream) {
			s := r.GetResourceObjectId()
			if r.GetPermissionship() == v1.LookupPermissionship_LOOKUP_PERMISSIONSHIP_CONDITIONAL_PERMISSION {
				s += "?" + strings.Join(r.GetPartialCaveatInfo().GetMissingRequiredContext(), ",")
			}
			carl = append(carl, s)
		}
		if !slices.Equal(carl, []string{"public", "readme?amount"}) {
			t.Errorf("carl's documents = %v", carl)
		}
	})

	t.Run("a lookup cursor pins its revision", func(t *testing.T) {
		stream, err := c.LookupResources(ctx, &v1.LookupResourcesRequest{Consistency: zfresh(token), ResourceObjectType: "doc", Permission: "view", Subject: zsubj("user:u09"), OptionalLimit: 2})
		if err != nil {
			t.Fatal(err)
		}
		first := recvAll(t, stream)
		if _, err := c.WriteRelationships(ctx, &v1.WriteRelationshipsRequest{Updates: zupdates(ztouch, zrels(t, "doc:d0100a#viewer@user:u09")...)}); err != nil {
			t.Fatal(err)
		}
		stream, err = c.LookupResources(ctx, &v1.LookupResourcesRequest{ResourceObjectType: "doc", Permission: "view", Subject: zsubj("user:u09"), OptionalLimit: 2, OptionalCursor: first[1].GetAfterResultCursor()})
		if err != nil {
			t.Fatal(err)
		}
		next := recvAll(t, stream)
		if len(first) != 2 || len(next) != 2 || next[0].GetResourceObjectId() != "d0109" || next[0].GetLookedUpAt().GetToken() != first[0].GetLookedUpAt().GetToken() {
			t.Errorf("pages %v then %v", first, next)
		}
	})

	t.Run("lookup subjects", func(t *testing.T) {
		got := zlookupSubjects(t, c, &v1.LookupSubjectsRequest{Consistency: zfresh(token), Resource: zres("doc:readme"), Permission: "view", SubjectObjectType: "user"})
		stream, err := ts.perm.LookupSubjects(ctx, &pb.LookupSubjectsRequest{Consistency: fresh(token.GetToken()), Resource: obj("doc", "readme"), Permission: "view", SubjectObjectType: "user"})
		if err != nil {
			t.Fatal(err)
		}
		var native []string
		for _, r := range recvAll(t, stream) {
			s := r.GetSubjectObjectId()
			if r.GetDecision() == pb.Decision_DECISION_CONDITIONAL {
				s += "?" + strings.Join(r.GetMissingParameters(), ",")
			}
			native = append(native, s)
		}
		if want := []string{"ann", "bob", "carl?amount", "eve", "late", "oz"}; !slices.Equal(got, want) || !slices.Equal(native, want) {
			t.Errorf("subjects = %v, native %v, want %v", got, native, want)
		}
		// A wildcard comes with its exclusions. (Mandate also lists the
		// known subjects the wildcard covers; SpiceDB lists only those
		// reached through their own relationships.)
		pub := zlookupSubjects(t, c, &v1.LookupSubjectsRequest{Consistency: zfresh(token), Resource: zres("doc:public"), Permission: "view", SubjectObjectType: "user"})
		if len(pub) == 0 || pub[0] != "*-[dan]" || slices.Contains(pub, "dan") {
			t.Errorf("public's subjects = %v", pub)
		}
		none := zlookupSubjects(t, c, &v1.LookupSubjectsRequest{Consistency: zfresh(token), Resource: zres("doc:public"), Permission: "view", SubjectObjectType: "user",
			WildcardOption: v1.LookupSubjectsRequest_WILDCARD_OPTION_EXCLUDE_WILDCARDS})
		if !slices.Equal(none, pub[1:]) {
			t.Errorf("without wildcards: %v", none)
		}
	})

	t.Run("expand", func(t *testing.T) {
		resp, err := c.ExpandPermissionTree(ctx, &v1.ExpandPermissionTreeRequest{Consistency: zfresh(token), Resource: zres("doc:readme"), Permission: "view"})
		if err != nil {
			t.Fatal(err)
		}
		root := resp.GetTreeRoot()
		if root.GetIntermediate().GetOperation() != v1.AlgebraicSubjectSet_OPERATION_EXCLUSION || root.GetExpandedRelation() != "view" ||
			root.GetExpandedObject().GetObjectId() != "readme" || resp.GetExpandedAt().GetToken() == "" {
			t.Fatalf("expand root = %v", root)
		}
		native, err := ts.perm.Expand(ctx, &pb.ExpandRequest{Consistency: fresh(token.GetToken()), Resource: obj("doc", "readme"), Permission: "view"})
		if err != nil {
			t.Fatal(err)
		}
		var zleaves, nleaves []string
		var zwalk func(n *v1.PermissionRelationshipTree)
		zwalk = func(n *v1.PermissionRelationshipTree) {
			for _, s := range n.GetLeaf().GetSubjects() {
				zleaves = append(zleaves, n.GetExpandedRelation()+"@"+s.GetObject().GetObjectType()+":"+s.GetObject().GetObjectId()+"#"+s.GetOptionalRelation())
			}
			for _, ch := range n.GetIntermediate().GetChildren() {
				zwalk(ch)
			}
		}
		zwalk(root)
		var nwalk func(n *pb.ExpandNode)
		nwalk = func(n *pb.ExpandNode) {
			for _, s := range n.GetSubjects() {
				nleaves = append(nleaves, n.GetRelation()+"@"+s.GetSubject().GetObject().GetObjectType()+":"+s.GetSubject().GetObject().GetObjectId()+"#"+s.GetSubject().GetOptionalRelation())
			}
			for _, ch := range n.GetChildren() {
				nwalk(ch)
			}
		}
		nwalk(native.GetTree())
		if !slices.Equal(sorted(zleaves), sorted(nleaves)) || !slices.Contains(zleaves, "viewer@group:eng#member") || !slices.Contains(zleaves, "banned@user:dan#") {
			t.Errorf("expand leaves %v, native %v", sorted(zleaves), sorted(nleaves))
		}
	})

	t.Run("delete by filter with a limit", func(t *testing.T) {
		filter := &v1.RelationshipFilter{ResourceType: "doc", OptionalRelation: "viewer", OptionalSubjectFilter: &v1.SubjectFilter{SubjectType: "user", OptionalSubjectId: "u03"}}
		before := ts.state()
		_, err := c.DeleteRelationships(ctx, &v1.DeleteRelationshipsRequest{RelationshipFilter: filter, OptionalLimit: 10})
		wantCode(t, err, codes.InvalidArgument, "more than 10")
		if !ts.state().equal(before) {
			t.Fatal("a refused delete changed the store")
		}
		resp, err := c.DeleteRelationships(ctx, &v1.DeleteRelationshipsRequest{RelationshipFilter: filter, OptionalLimit: 10, OptionalAllowPartialDeletions: true})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetRelationshipsDeletedCount() != 10 || resp.GetDeletionProgress() != v1.DeleteRelationshipsResponse_DELETION_PROGRESS_PARTIAL {
			t.Errorf("partial delete: %v", resp)
		}
		left := zreadAll(t, ctx, c, zexact(resp.GetDeletedAt()), filter, 0)
		if len(left) != 40 || left[0] != "doc:d0503#viewer@user:u03" {
			t.Errorf("after a partial delete of the first 10: %d left, first %v", len(left), left[:1])
		}
		resp, err = c.DeleteRelationships(ctx, &v1.DeleteRelationshipsRequest{RelationshipFilter: filter})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetRelationshipsDeletedCount() != 40 || resp.GetDeletionProgress() != v1.DeleteRelationshipsResponse_DELETION_PROGRESS_COMPLETE {
			t.Errorf("unlimited delete: %v", resp)
		}
		token = resp.GetDeletedAt()
		r, err := c.CheckPermission(ctx, &v1.CheckPermissionRequest{Consistency: zfresh(token), Resource: zres("doc:d0003"), Permission: "view", Subject: zsubj("user:u03")})
		if err != nil || r.GetPermissionship() != v1.CheckPermissionResponse_PERMISSIONSHIP_NO_PERMISSION {
			t.Errorf("after the delete, u03 views d0003: %v %v", r.GetPermissionship(), err)
		}
		// By ID prefix: d24xx documents.
		resp, err = c.DeleteRelationships(ctx, &v1.DeleteRelationshipsRequest{RelationshipFilter: &v1.RelationshipFilter{ResourceType: "doc", OptionalResourceIdPrefix: "d24"}})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetRelationshipsDeletedCount() != 100-2 {
			// d2403 and d2453 belonged to u03, deleted above.
			t.Errorf("prefix delete removed %d", resp.GetRelationshipsDeletedCount())
		}
		token = resp.GetDeletedAt()
	})

	t.Run("preconditions", func(t *testing.T) {
		must := &v1.Precondition{Operation: v1.Precondition_OPERATION_MUST_MATCH, Filter: &v1.RelationshipFilter{ResourceType: "doc", OptionalResourceId: "readme", OptionalRelation: "owner"}}
		mustNot := &v1.Precondition{Operation: v1.Precondition_OPERATION_MUST_NOT_MATCH, Filter: must.Filter}
		before := ts.state()
		_, err := c.WriteRelationships(ctx, &v1.WriteRelationshipsRequest{Updates: zupdates(ztouch, zrels(t, "doc:readme#viewer@user:pre")...), OptionalPreconditions: []*v1.Precondition{mustNot}})
		wantCode(t, err, codes.FailedPrecondition, "precondition")
		if !ts.state().equal(before) {
			t.Fatal("a write whose precondition failed changed the store")
		}
		resp, err := c.WriteRelationships(ctx, &v1.WriteRelationshipsRequest{Updates: zupdates(ztouch, zrels(t, "doc:readme#viewer@user:pre")...), OptionalPreconditions: []*v1.Precondition{must}})
		if err != nil {
			t.Fatal(err)
		}
		token = resp.GetWrittenAt()
	})

	t.Run("bulk import is atomic and export pages equal the native export", func(t *testing.T) {
		imp, err := c.ImportBulkRelationships(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for b := range 3 {
			var batch []*v1.Relationship
			for i := range 500 {
				batch = append(batch, zrels(t, fmt.Sprintf("doc:imp%d_%03d#viewer@user:i%d", b, i, i%9))...)
			}
			if err := imp.Send(&v1.ImportBulkRelationshipsRequest{Relationships: batch}); err != nil {
				t.Fatal(err)
			}
		}
		resp, err := imp.CloseAndRecv()
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetNumLoaded() != 1500 {
			t.Errorf("loaded %d, want 1500", resp.GetNumLoaded())
		}

		// A duplicate in a later message fails the whole stream.
		before := ts.state()
		imp, err = c.ImportBulkRelationships(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := imp.Send(&v1.ImportBulkRelationshipsRequest{Relationships: zrels(t, "doc:fresh1#viewer@user:x", "doc:fresh2#viewer@user:x")}); err != nil {
			t.Fatal(err)
		}
		if err := imp.Send(&v1.ImportBulkRelationshipsRequest{Relationships: zrels(t, "doc:imp0_001#viewer@user:i1")}); err != nil {
			t.Fatal(err)
		}
		_, err = imp.CloseAndRecv()
		wantCode(t, err, codes.AlreadyExists, "doc:imp0_001#viewer@user:i1", "nothing was imported")
		if !ts.state().equal(before) {
			t.Fatal("a failed import changed the store")
		}

		head := &v1.ZedToken{Token: ts.seedToken()}
		export := func(req *v1.ExportBulkRelationshipsRequest) ([]string, []*v1.Cursor) {
			stream, err := c.ExportBulkRelationships(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			var rels []string
			var cursors []*v1.Cursor
			for _, m := range recvAll(t, stream) {
				if req.OptionalLimit > 0 && len(m.GetRelationships()) > int(req.OptionalLimit) {
					t.Fatalf("batch of %d over the limit %d", len(m.GetRelationships()), req.OptionalLimit)
				}
				for _, r := range m.GetRelationships() {
					rels = append(rels, zrelText(r))
				}
				cursors = append(cursors, m.GetAfterResultCursor())
			}
			return rels, cursors
		}
		req := &v1.ExportBulkRelationshipsRequest{Consistency: zexact(head), OptionalLimit: 400}
		got, cursors := export(req)
		nstream, err := ts.rels.ExportRelationships(ctx, &pb.ExportRelationshipsRequest{Consistency: &pb.Consistency{Requirement: &pb.Consistency_AtExactSnapshot{AtExactSnapshot: &pb.RevisionToken{Token: head.GetToken()}}}})
		if err != nil {
			t.Fatal(err)
		}
		var native []string
		for _, m := range recvAll(t, nstream) {
			for _, r := range m.GetRelationships() {
				native = append(native, nativeRelText(r))
			}
		}
		if !slices.Equal(got, native) || len(got) < 1500 {
			t.Fatalf("export: %d relationships, native %d", len(got), len(native))
		}
		// Resuming from the second batch's cursor yields the rest, at the
		// same revision, even after a write.
		if _, err := c.WriteRelationships(ctx, &v1.WriteRelationshipsRequest{Updates: zupdates(ztouch, zrels(t, "doc:a_late#viewer@user:x")...)}); err != nil {
			t.Fatal(err)
		}
		req.OptionalCursor = cursors[1]
		rest, _ := export(req)
		if !slices.Equal(rest, got[800:]) {
			t.Errorf("resumed export: %d relationships, want %d", len(rest), len(got)-800)
		}
		filtered, _ := export(&v1.ExportBulkRelationshipsRequest{OptionalRelationshipFilter: &v1.RelationshipFilter{ResourceType: "doc", OptionalResourceIdPrefix: "imp2_"}})
		if len(filtered) != 500 {
			t.Errorf("filtered export: %d relationships, want 500", len(filtered))
		}
	})
}

// seedToken returns a revision token for the store's head.
func (ts *testServer) seedToken() string {
	ts.t.Helper()
	resp, err := ts.schema.ReadSchema(ts.ctx(), &pb.ReadSchemaRequest{Consistency: fullyConsistent()})
	if err != nil {
		ts.t.Fatal(err)
	}
	return resp.GetReadAt().GetToken()
}

// zlookupResources returns every resource ID, paging by limit (0: one call).
func zlookupResources(t *testing.T, c *authzed.Client, req *v1.LookupResourcesRequest, limit uint32) []string {
	t.Helper()
	req.OptionalLimit = limit
	var out []string
	for page := 0; ; page++ {
		if page > 10_000 {
			t.Fatal("LookupResources paging does not end")
		}
		stream, err := c.LookupResources(t.Context(), req)
		if err != nil {
			t.Fatal(err)
		}
		msgs := recvAll(t, stream)
		if limit > 0 && len(msgs) > int(limit) {
			t.Fatalf("page of %d results over the limit of %d", len(msgs), limit)
		}
		for _, m := range msgs {
			out = append(out, m.GetResourceObjectId())
		}
		if limit == 0 || len(msgs) < int(limit) {
			return out
		}
		req.OptionalCursor = msgs[len(msgs)-1].GetAfterResultCursor()
	}
}

// zlookupSubjects renders each subject as id, id?missing,params or
// *-[excluded,ids].
func zlookupSubjects(t *testing.T, c *authzed.Client, req *v1.LookupSubjectsRequest) []string {
	t.Helper()
	stream, err := c.LookupSubjects(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range recvAll(t, stream) {
		s := r.GetSubject().GetSubjectObjectId()
		if r.GetSubject().GetPermissionship() == v1.LookupPermissionship_LOOKUP_PERMISSIONSHIP_CONDITIONAL_PERMISSION {
			s += "?" + strings.Join(r.GetSubject().GetPartialCaveatInfo().GetMissingRequiredContext(), ",")
		}
		if len(r.GetExcludedSubjects()) > 0 {
			var ex []string
			for _, x := range r.GetExcludedSubjects() {
				ex = append(ex, x.GetSubjectObjectId())
			}
			s += "-[" + strings.Join(ex, ",") + "]"
		}
		if r.GetSubjectObjectId() != r.GetSubject().GetSubjectObjectId() {
			t.Errorf("deprecated subject_object_id %q differs from subject %q", r.GetSubjectObjectId(), r.GetSubject().GetSubjectObjectId())
		}
		out = append(out, s)
	}
	return sorted(out)
}

// TestAuthzedServing: the authzed API shares the listener's auth, health,
// metrics and reflection, and answers Unimplemented for what it lacks.
func TestAuthzedServing(t *testing.T) {
	ts := startServer(t, nil)
	ctx := ts.ctx()
	ts.writeSchema(testSchema)

	for _, key := range []string{"", "wrong-key"} {
		c := mandateClient(t, ts, key)
		_, err := c.CheckPermission(ctx, &v1.CheckPermissionRequest{Resource: zres("doc:readme"), Permission: "view", Subject: zsubj("user:ann")})
		wantCode(t, err, codes.Unauthenticated)
		stream, err := c.ReadRelationships(ctx, &v1.ReadRelationshipsRequest{RelationshipFilter: &v1.RelationshipFilter{ResourceType: "doc"}})
		wantCode(t, streamErr(stream, err), codes.Unauthenticated)
	}

	c := mandateClient(t, ts, testKey)
	// Fully consistent: at minimize_latency the engine may not have applied
	// the schema write yet.
	full := &v1.Consistency{Requirement: &v1.Consistency_FullyConsistent{FullyConsistent: true}}
	if _, err := c.CheckPermission(ctx, &v1.CheckPermissionRequest{Resource: zres("doc:readme"), Permission: "view", Subject: zsubj("user:ann"), Consistency: full}); err != nil {
		t.Fatal(err)
	}
	_, err := c.ReflectSchema(ctx, &v1.ReflectSchemaRequest{})
	wantCode(t, err, codes.Unimplemented)
	_, err = v1.NewExperimentalServiceClient(ts.conn).ExperimentalCountRelationships(ctx, &v1.ExperimentalCountRelationshipsRequest{Name: "x"})
	wantCode(t, err, codes.Unimplemented)

	health := healthpb.NewHealthClient(ts.conn)
	for _, svc := range []string{"authzed.api.v1.PermissionsService", "authzed.api.v1.SchemaService", "authzed.api.v1.WatchService"} {
		resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health of %s: %v %v", svc, resp.GetStatus(), err)
		}
	}

	resp := ts.restRaw("GET", "/metrics", "", nil)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`method="/authzed.api.v1.PermissionsService/CheckPermission",transport="grpc"} 1`,
		`code="Unauthenticated",method="/authzed.api.v1.PermissionsService/ReadRelationships"`,
		`mandate_check_decisions_total{decision="denied"} 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s:\n%s", want, body)
		}
	}
}

// TestAuthzedAgents: a check whose subject is an agent gets Mandate's
// delegation semantics; the caveat context carries task context, and the
// mandate-on-behalf-of header names the principal when the agent acts for
// several.
func TestAuthzedAgents(t *testing.T) {
	ts := startServer(t, nil)
	c := mandateClient(t, ts, testKey)
	ctx := ts.ctx()
	const agentSchema = `caveat task_scope(action string, task string) {
	action == "view" && task == "triage"
}

definition user {}

definition agent {
	relation acts_for: user | user with task_scope
}

definition doc {
	relation owner: user
	relation viewer: user | agent
	permission edit = owner
	permission view = viewer + owner
}
`
	if _, err := c.WriteSchema(ctx, &v1.WriteSchemaRequest{Schema: agentSchema}); err != nil {
		t.Fatal(err)
	}
	w, err := c.WriteRelationships(ctx, &v1.WriteRelationshipsRequest{Updates: zupdates(zcreate, zrels(t,
		"doc:plan#owner@user:ann",
		"doc:plan#viewer@agent:bot",
		"doc:plan#viewer@agent:scoped",
		"doc:plan#viewer@agent:multi",
		"doc:plan#viewer@user:bob",
		"agent:bot#acts_for@user:ann",
		"agent:scoped#acts_for@user:ann[task_scope]",
		"agent:multi#acts_for@user:ann",
		"agent:multi#acts_for@user:carl",
		"agent:lazy#acts_for@user:ann",
	)...)})
	if err != nil {
		t.Fatal(err)
	}
	token := w.GetWrittenAt()
	type result struct {
		perm    v1.CheckPermissionResponse_Permissionship
		missing []string
	}
	check := func(t *testing.T, sub, perm string, context map[string]any, md ...string) (result, error) {
		t.Helper()
		cctx := ctx
		if len(md) > 0 {
			cctx = metadata.AppendToOutgoingContext(ctx, md...)
		}
		resp, err := c.CheckPermission(cctx, &v1.CheckPermissionRequest{Consistency: zfresh(token), Resource: zres("doc:plan"), Permission: perm, Subject: zsubj(sub), Context: mustStruct(context)})
		return result{resp.GetPermissionship(), resp.GetPartialCaveatInfo().GetMissingRequiredContext()}, err
	}
	const (
		has  = v1.CheckPermissionResponse_PERMISSIONSHIP_HAS_PERMISSION
		no   = v1.CheckPermissionResponse_PERMISSIONSHIP_NO_PERMISSION
		cond = v1.CheckPermissionResponse_PERMISSIONSHIP_CONDITIONAL_PERMISSION
	)
	cases := []struct {
		name, sub, perm string
		context         map[string]any
		md              []string
		want            result
		nativeOBO       *pb.ObjectReference
	}{
		{"agent acting for its principal", "agent:bot", "view", nil, nil, result{has, nil}, nil},
		{"an agent has no more than its own grants", "agent:bot", "edit", nil, nil, result{no, nil}, nil},
		{"an agent without a grant of its own", "agent:lazy", "view", nil, nil, result{no, nil}, nil},
		{"task context satisfies the delegation's caveat", "agent:scoped", "view", map[string]any{"task": "triage"}, nil, result{has, nil}, nil},
		{"another task is out of scope", "agent:scoped", "view", map[string]any{"task": "billing"}, nil, result{no, nil}, nil},
		{"without task context the answer is conditional", "agent:scoped", "view", nil, nil, result{cond, []string{"task"}}, nil},
		{"the caller cannot override the action", "agent:scoped", "edit", map[string]any{"task": "triage", "action": "view"}, nil, result{no, nil}, nil},
		{"the header names the principal", "agent:multi", "view", nil, []string{"mandate-on-behalf-of", "user:ann"}, result{has, nil}, obj("user", "ann")},
		{"a principal without the grant", "agent:multi", "view", nil, []string{"mandate-on-behalf-of", "user:carl"}, result{no, nil}, obj("user", "carl")},
		{"a plain user is unaffected", "user:bob", "view", nil, nil, result{has, nil}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := check(t, tc.sub, tc.perm, tc.context, tc.md...)
			if err != nil {
				t.Fatal(err)
			}
			if got.perm != tc.want.perm || !slices.Equal(got.missing, tc.want.missing) {
				t.Errorf("got %v missing %v, want %v missing %v", got.perm, got.missing, tc.want.perm, tc.want.missing)
			}
			typ, id, _ := strings.Cut(tc.sub, ":")
			native, err := ts.perm.Check(ctx, &pb.CheckRequest{Consistency: fresh(token.GetToken()), Resource: obj("doc", "plan"), Permission: tc.perm,
				Subject: subj(typ, id), Context: mustStruct(tc.context), OnBehalfOf: tc.nativeOBO})
			if err != nil {
				t.Fatal(err)
			}
			if permissionshipOf(native.GetDecision()) != got.perm || !slices.Equal(native.GetMissingParameters(), got.missing) {
				t.Errorf("authzed %v, native %v", got.perm, native.GetDecision())
			}
		})
	}

	t.Run("an ambiguous agent needs the header", func(t *testing.T) {
		_, err := check(t, "agent:multi", "view", nil)
		wantCode(t, err, codes.FailedPrecondition, "mandate-on-behalf-of")
	})
	t.Run("a malformed header", func(t *testing.T) {
		_, err := check(t, "agent:multi", "view", nil, "mandate-on-behalf-of", "ann")
		wantCode(t, err, codes.InvalidArgument, "mandate-on-behalf-of", "type:id")
	})
	t.Run("the header on a non-agent subject", func(t *testing.T) {
		_, err := check(t, "user:bob", "view", nil, "mandate-on-behalf-of", "user:ann")
		wantCode(t, err, codes.InvalidArgument, "mandate-on-behalf-of")
	})
	t.Run("lookup resources for an agent", func(t *testing.T) {
		got := zlookupResources(t, c, &v1.LookupResourcesRequest{Consistency: zfresh(token), ResourceObjectType: "doc", Permission: "view", Subject: zsubj("agent:bot")}, 0)
		if !slices.Equal(got, []string{"plan"}) {
			t.Errorf("bot's documents = %v", got)
		}
		stream, err := c.LookupResources(metadata.AppendToOutgoingContext(ctx, "mandate-on-behalf-of", "user:carl"), &v1.LookupResourcesRequest{Consistency: zfresh(token), ResourceObjectType: "doc", Permission: "view", Subject: zsubj("agent:multi")})
		if err != nil {
			t.Fatal(err)
		}
		if got := recvAll(t, stream); len(got) != 0 {
			t.Errorf("multi acting for carl sees %v", got)
		}
	})
}

// TestAuthzedZedTokens: ZedTokens are Mandate's revision tokens, valid only
// for the store that issued them, with SpiceDB's answers to the wrong ones.
func TestAuthzedZedTokens(t *testing.T) {
	shared := func(c *server.Config) { c.StoreName = "zedtoken-test" }
	a := startServer(t, shared)
	ahead := startServer(t, shared) // the same store name: its tokens decode
	other := startServer(t, nil)
	ctx := a.ctx()
	token := func(ts *testServer, writes int) *v1.ZedToken {
		c := mandateClient(t, ts, testKey)
		w, err := c.WriteSchema(ctx, &v1.WriteSchemaRequest{Schema: testSchema})
		if err != nil {
			t.Fatal(err)
		}
		tok := w.GetWrittenAt()
		for i := range writes {
			resp, err := c.WriteRelationships(ctx, &v1.WriteRelationshipsRequest{Updates: zupdates(ztouch, zrels(t, fmt.Sprintf("doc:d%d#viewer@user:ann", i))...)})
			if err != nil {
				t.Fatal(err)
			}
			tok = resp.GetWrittenAt()
		}
		return tok
	}
	own := token(a, 1)
	future := token(ahead, 5)
	foreign := token(other, 0)
	c := mandateClient(t, a, testKey)
	check := func(cons *v1.Consistency) error {
		_, err := c.CheckPermission(ctx, &v1.CheckPermissionRequest{Consistency: cons, Resource: zres("doc:d0"), Permission: "view", Subject: zsubj("user:ann")})
		return err
	}
	for _, cons := range []*v1.Consistency{zfresh(own), zexact(own), zfresh(foreign)} {
		if err := check(cons); err != nil {
			t.Errorf("%v: %v", cons, err)
		}
	}
	wantCode(t, check(zexact(foreign)), codes.InvalidArgument, "different Mandate store")
	wantCode(t, check(zfresh(future)), codes.OutOfRange, "invalid revision")
	wantCode(t, check(zexact(future)), codes.OutOfRange, "invalid revision")
	stream, err := c.Watch(ctx, &v1.WatchRequest{OptionalStartCursor: foreign})
	if err == nil {
		_, err = stream.Recv()
	}
	wantCode(t, err, codes.InvalidArgument, "different datastore")

	// Preconditions by resource ID prefix cannot be checked atomically by
	// the store: refused, not approximated.
	_, err = c.WriteRelationships(ctx, &v1.WriteRelationshipsRequest{
		Updates: zupdates(ztouch, zrels(t, "doc:x#viewer@user:ann")...),
		OptionalPreconditions: []*v1.Precondition{{Operation: v1.Precondition_OPERATION_MUST_NOT_MATCH,
			Filter: &v1.RelationshipFilter{ResourceType: "doc", OptionalResourceIdPrefix: "d"}}},
	})
	wantCode(t, err, codes.Unimplemented, "optional_resource_id_prefix")
}
