package server_test

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
)

// seed writes the test schema and a small data set, returning the last token.
func (ts *testServer) seed() string {
	ts.t.Helper()
	ts.writeSchema(testSchema)
	return ts.write(update(create, mustParse(ts.t,
		"doc:readme#owner@user:ann",
		"doc:readme#viewer@group:eng#member",
		"group:eng#member@user:bob",
		`doc:readme#viewer@user:carl[within_limit:{"limit":100}]`,
		"doc:readme#viewer@user:dan",
		"doc:readme#banned@user:dan",
		"doc:readme#viewer@user:eve[expiration:2100-01-01T00:00:00Z]",
		"doc:public#viewer@user:*",
		"doc:public#banned@user:dan",
	)...)...)
}

func TestGRPCEndToEnd(t *testing.T) {
	ts := startServer(t, nil)
	ctx := ts.ctx()

	t.Run("read schema before any is NotFound", func(t *testing.T) {
		_, err := ts.schema.ReadSchema(ctx, &pb.ReadSchemaRequest{})
		wantCode(t, err, codes.NotFound, "no schema")
	})

	token := ts.seed()

	t.Run("read schema", func(t *testing.T) {
		resp, err := ts.schema.ReadSchema(ctx, &pb.ReadSchemaRequest{Consistency: fresh(token)})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetSchemaText() != testSchema || resp.GetReadAt().GetToken() == "" {
			t.Errorf("ReadSchema = %q at %q", resp.GetSchemaText(), resp.GetReadAt().GetToken())
		}
	})

	t.Run("preconditions", func(t *testing.T) {
		ownerExists := &pb.Precondition{Operation: pb.Precondition_OPERATION_MUST_MATCH, Filter: &pb.RelationshipFilter{
			ResourceType: "doc", OptionalResourceIds: []string{"readme"}, OptionalRelation: "owner",
			OptionalSubjectFilter: &pb.SubjectFilter{SubjectType: "user", OptionalSubjectId: "ann"},
		}}
		ownerAbsent := &pb.Precondition{Operation: pb.Precondition_OPERATION_MUST_NOT_MATCH, Filter: ownerExists.Filter}
		before := ts.state()
		_, err := ts.rels.WriteRelationships(ctx, &pb.WriteRelationshipsRequest{
			Updates:               update(touch, mustParse(t, "doc:readme#viewer@user:fay")...),
			OptionalPreconditions: []*pb.Precondition{ownerAbsent},
		})
		wantCode(t, err, codes.FailedPrecondition, "precondition")
		if !ts.state().equal(before) {
			t.Fatal("a write whose precondition failed changed the store")
		}
		resp, err := ts.rels.WriteRelationships(ctx, &pb.WriteRelationshipsRequest{
			Updates:               update(touch, mustParse(t, "doc:readme#viewer@user:fay")...),
			OptionalPreconditions: []*pb.Precondition{ownerExists},
		})
		if err != nil {
			t.Fatalf("write with a holding precondition: %v", err)
		}
		token = resp.GetWrittenAt().GetToken()
	})

	t.Run("create of an existing relationship is AlreadyExists and atomic", func(t *testing.T) {
		before := ts.state()
		_, err := ts.rels.WriteRelationships(ctx, &pb.WriteRelationshipsRequest{
			Updates: update(create, mustParse(t, "doc:other#viewer@user:zed", "doc:readme#owner@user:ann")...),
		})
		wantCode(t, err, codes.AlreadyExists, "doc:readme#owner@user:ann")
		if !ts.state().equal(before) {
			t.Fatal("a failed write changed the store")
		}
	})

	t.Run("check", func(t *testing.T) {
		cases := []struct {
			name, res, perm, sub string
			context              map[string]any
			want                 pb.Decision
			missing              []string
		}{
			{"owner", "doc:readme", "edit", "user:ann", nil, pb.Decision_DECISION_ALLOWED, nil},
			{"owner views", "doc:readme", "view", "user:ann", nil, pb.Decision_DECISION_ALLOWED, nil},
			{"through a group", "doc:readme", "view", "user:bob", nil, pb.Decision_DECISION_ALLOWED, nil},
			{"caveat holds", "doc:readme", "view", "user:carl", map[string]any{"amount": 50}, pb.Decision_DECISION_ALLOWED, nil},
			{"caveat fails", "doc:readme", "view", "user:carl", map[string]any{"amount": 500}, pb.Decision_DECISION_DENIED, nil},
			{"caveat lacks context", "doc:readme", "view", "user:carl", nil, pb.Decision_DECISION_CONDITIONAL, []string{"amount"}},
			{"relationship context wins", "doc:readme", "view", "user:carl", map[string]any{"amount": 50, "limit": 1}, pb.Decision_DECISION_ALLOWED, nil},
			{"banned", "doc:readme", "view", "user:dan", nil, pb.Decision_DECISION_DENIED, nil},
			{"unexpired", "doc:readme", "view", "user:eve", nil, pb.Decision_DECISION_ALLOWED, nil},
			{"precondition write", "doc:readme", "view", "user:fay", nil, pb.Decision_DECISION_ALLOWED, nil},
			{"wildcard", "doc:public", "view", "user:zed", nil, pb.Decision_DECISION_ALLOWED, nil},
			{"wildcard minus banned", "doc:public", "view", "user:dan", nil, pb.Decision_DECISION_DENIED, nil},
			{"stranger", "doc:readme", "view", "user:zed", nil, pb.Decision_DECISION_DENIED, nil},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				resType, resID, _ := strings.Cut(c.res, ":")
				subType, subID, _ := strings.Cut(c.sub, ":")
				resp, err := ts.perm.Check(ctx, &pb.CheckRequest{
					Consistency: fresh(token), Resource: obj(resType, resID), Permission: c.perm,
					Subject: subj(subType, subID), Context: mustStruct(c.context),
				})
				if err != nil {
					t.Fatal(err)
				}
				if resp.GetDecision() != c.want || !slices.Equal(resp.GetMissingParameters(), c.missing) {
					t.Errorf("got %v missing %v, want %v missing %v", resp.GetDecision(), resp.GetMissingParameters(), c.want, c.missing)
				}
				if resp.GetCheckedAt().GetToken() == "" {
					t.Error("no checked_at token")
				}
			})
		}
	})

	t.Run("check bulk", func(t *testing.T) {
		resp, err := ts.perm.CheckBulk(ctx, &pb.CheckBulkRequest{Consistency: fresh(token), Items: []*pb.CheckBulkRequestItem{
			{Resource: obj("doc", "readme"), Permission: "view", Subject: subj("user", "ann")},
			{Resource: obj("doc", "bad id"), Permission: "view", Subject: subj("user", "ann")},
			{Resource: obj("doc", "readme"), Permission: "view", Subject: subj("user", "zed")},
			{Resource: obj("doc", "readme"), Permission: "nope", Subject: subj("user", "ann")},
			{Resource: obj("doc", "readme"), Permission: "view", Subject: subj("user", "carl")},
		}})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, p := range resp.GetPairs() {
			if e := p.GetError(); e != nil {
				got = append(got, fmt.Sprintf("error %v", codes.Code(e.GetCode())))
				continue
			}
			got = append(got, p.GetItem().GetDecision().String())
		}
		want := []string{"DECISION_ALLOWED", "error InvalidArgument", "DECISION_DENIED", "error InvalidArgument", "DECISION_CONDITIONAL"}
		if !slices.Equal(got, want) {
			t.Errorf("CheckBulk = %v, want %v", got, want)
		}
		if msg := resp.GetPairs()[1].GetError().GetMessage(); !strings.Contains(msg, "items[1].resource") {
			t.Errorf("item error %q does not name the field", msg)
		}
		if msg := resp.GetPairs()[3].GetError().GetMessage(); !strings.Contains(msg, "nope") {
			t.Errorf("item error %q does not name the permission", msg)
		}
	})

	t.Run("lookup resources with paging", func(t *testing.T) {
		var rels []*pb.Relationship
		for i := range 5 {
			rels = append(rels, mustParse(t, fmt.Sprintf("doc:page%d#viewer@user:gil", i))...)
		}
		token = ts.write(update(create, rels...)...)
		req := &pb.LookupResourcesRequest{Consistency: fresh(token), ResourceObjectType: "doc", Permission: "view", Subject: subj("user", "gil"), OptionalLimit: 2}
		var pages [][]string
		for range 5 {
			ids, cur := lookupResources(t, ts, req)
			if len(ids) == 0 {
				break
			}
			pages = append(pages, ids)
			req.OptionalCursor = cur
		}
		// doc:public's wildcard covers gil too.
		want := [][]string{{"page0", "page1"}, {"page2", "page3"}, {"page4", "public"}}
		if fmt.Sprint(pages) != fmt.Sprint(want) {
			t.Errorf("pages = %v, want %v", pages, want)
		}
		all, _ := lookupResources(t, ts, &pb.LookupResourcesRequest{Consistency: fresh(token), ResourceObjectType: "doc", Permission: "view", Subject: subj("user", "carl")})
		if fmt.Sprint(all) != "[public readme]" {
			t.Errorf("carl's documents = %v", all)
		}
	})

	t.Run("lookup subjects", func(t *testing.T) {
		stream, err := ts.perm.LookupSubjects(ctx, &pb.LookupSubjectsRequest{Consistency: fresh(token), Resource: obj("doc", "readme"), Permission: "view", SubjectObjectType: "user"})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for {
			r, err := stream.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			s := r.GetSubjectObjectId()
			if r.GetDecision() == pb.Decision_DECISION_CONDITIONAL {
				s += "?" + strings.Join(r.GetMissingParameters(), ",")
			}
			got = append(got, s)
		}
		want := []string{"ann", "bob", "carl?amount", "eve", "fay"}
		if !slices.Equal(got, want) {
			t.Errorf("subjects = %v, want %v", got, want)
		}

		stream, err = ts.perm.LookupSubjects(ctx, &pb.LookupSubjectsRequest{Consistency: fresh(token), Resource: obj("doc", "public"), Permission: "view", SubjectObjectType: "user"})
		if err != nil {
			t.Fatal(err)
		}
		r, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if r.GetSubjectObjectId() != "*" || len(r.GetExcludedSubjects()) != 1 || r.GetExcludedSubjects()[0].GetSubjectObjectId() != "dan" {
			t.Errorf("public's subjects = %v", r)
		}
	})

	t.Run("expand", func(t *testing.T) {
		resp, err := ts.perm.Expand(ctx, &pb.ExpandRequest{Consistency: fresh(token), Resource: obj("doc", "readme"), Permission: "view"})
		if err != nil {
			t.Fatal(err)
		}
		tree := resp.GetTree()
		if tree.GetOperation() != "exclusion" || len(tree.GetChildren()) != 2 || resp.GetExpandedAt().GetToken() == "" {
			t.Fatalf("expand tree = %v", tree)
		}
		leaves := map[string]bool{}
		var walk func(n *pb.ExpandNode)
		walk = func(n *pb.ExpandNode) {
			for _, s := range n.GetSubjects() {
				leaves[relText(s)] = true
			}
			for _, c := range n.GetChildren() {
				walk(c)
			}
		}
		walk(tree)
		for _, want := range []string{"doc:readme#owner@user:ann", "doc:readme#banned@user:dan", "doc:readme#viewer@group:eng#member"} {
			if !leaves[want] {
				t.Errorf("expansion lacks %s; has %v", want, leaves)
			}
		}
	})

	t.Run("read relationships with paging", func(t *testing.T) {
		req := &pb.ReadRelationshipsRequest{Consistency: fresh(token), Filter: &pb.RelationshipFilter{ResourceType: "doc", OptionalResourceIds: []string{"readme"}}, OptionalLimit: 3}
		var got []string
		for range 10 {
			stream, err := ts.rels.ReadRelationships(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			var last *pb.Cursor
			n := 0
			for {
				r, err := stream.Recv()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, relText(r.GetRelationship()))
				last = r.GetAfterResultCursor()
				n++
			}
			if n == 0 {
				break
			}
			req.OptionalCursor = last
		}
		var want []string
		for _, r := range ts.state().rels {
			if strings.HasPrefix(r, "doc:readme#") {
				want = append(want, r)
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("paged read:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	})

	t.Run("delete by filter with a limit", func(t *testing.T) {
		filter := &pb.RelationshipFilter{ResourceType: "doc", OptionalRelation: "viewer", OptionalSubjectFilter: &pb.SubjectFilter{SubjectType: "user", OptionalSubjectId: "gil"}}
		before := ts.state()
		_, err := ts.rels.DeleteRelationships(ctx, &pb.DeleteRelationshipsRequest{Filter: filter, OptionalLimit: 3})
		wantCode(t, err, codes.FailedPrecondition, "more than 3")
		if !ts.state().equal(before) {
			t.Fatal("a refused delete changed the store")
		}
		resp, err := ts.rels.DeleteRelationships(ctx, &pb.DeleteRelationshipsRequest{Filter: filter})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetDeletedCount() != 5 {
			t.Errorf("deleted %d, want 5", resp.GetDeletedCount())
		}
		token = resp.GetDeletedAt().GetToken()
		check := checkDecision(t, ts, fresh(token), "doc:page0", "view", "user:gil")
		if check != pb.Decision_DECISION_DENIED {
			t.Errorf("after delete, gil views page0: %v", check)
		}
	})

	t.Run("validate and write schema", func(t *testing.T) {
		candidate := strings.Replace(testSchema, "\trelation banned: user\n", "", 1)
		candidate = strings.Replace(candidate, "(viewer + owner) - banned", "viewer + owner", 1)
		resp, err := ts.schema.ValidateSchema(ctx, &pb.ValidateSchemaRequest{Schema: candidate})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetValid() || resp.GetError() != nil {
			t.Errorf("valid = %v, error = %v; want invalid through orphans only", resp.GetValid(), resp.GetError())
		}
		var diffs []string
		for _, d := range resp.GetDiffs() {
			diffs = append(diffs, d.GetKind()+" "+d.GetName()+"#"+d.GetRelation())
		}
		if want := []string{"relation_removed doc#banned", "permission_changed doc#view"}; !slices.Equal(diffs, want) {
			t.Errorf("diffs = %v, want %v", diffs, want)
		}
		orphans := strings.Join(resp.GetOrphanedRelationships(), "\n")
		for _, want := range []string{"doc:readme#banned@user:dan", "doc:public#banned@user:dan"} {
			if !strings.Contains(orphans, want) {
				t.Errorf("orphans %q lack %s", orphans, want)
			}
		}

		before := ts.state()
		_, err = ts.schema.WriteSchema(ctx, &pb.WriteSchemaRequest{Schema: candidate})
		wantCode(t, err, codes.FailedPrecondition, "doc:readme#banned@user:dan", "doc:public#banned@user:dan")
		if !ts.state().equal(before) {
			t.Fatal("a refused schema write changed the store")
		}

		bad, err := ts.schema.ValidateSchema(ctx, &pb.ValidateSchemaRequest{Schema: "definition user {}\ndefinition doc {\n\trelation viewer: nobody\n}\n"})
		if err != nil {
			t.Fatal(err)
		}
		if bad.GetValid() || bad.GetError() == nil || !strings.Contains(bad.GetError().GetMessage(), "nobody") {
			t.Errorf("validate of a broken schema = %v", bad)
		}

		additive := testSchema + "\ndefinition folder {\n\trelation viewer: user\n}\n"
		ok, err := ts.schema.ValidateSchema(ctx, &pb.ValidateSchemaRequest{Schema: additive})
		if err != nil {
			t.Fatal(err)
		}
		if !ok.GetValid() || len(ok.GetDiffs()) != 1 || ok.GetDiffs()[0].GetKind() != "definition_added" {
			t.Errorf("validate of an additive schema = %v", ok)
		}
	})
}

func lookupResources(t *testing.T, ts *testServer, req *pb.LookupResourcesRequest) ([]string, *pb.Cursor) {
	t.Helper()
	stream, err := ts.perm.LookupResources(ts.ctx(), req)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	var cur *pb.Cursor
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return ids, cur
		}
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.GetResourceObjectId())
		cur = r.GetAfterResultCursor()
	}
}

func checkDecision(t *testing.T, ts *testServer, c *pb.Consistency, res, perm, sub string) pb.Decision {
	t.Helper()
	resType, resID, _ := strings.Cut(res, ":")
	subType, subID, _ := strings.Cut(sub, ":")
	resp, err := ts.perm.Check(ts.ctx(), &pb.CheckRequest{Consistency: c, Resource: obj(resType, resID), Permission: perm, Subject: subj(subType, subID)})
	if err != nil {
		t.Fatalf("Check %s#%s@%s: %v", res, perm, sub, err)
	}
	return resp.GetDecision()
}

func TestAgentExplanation(t *testing.T) {
	ts := startServer(t, nil)
	ts.seed()
	token := ts.write(update(create, mustParse(t,
		"agent:bot#acts_for@user:ann",
		"doc:readme#viewer@agent:bot",
		"doc:readme#viewer@agent:orphan",
	)...)...)
	ctx := ts.ctx()

	resp, err := ts.perm.Check(ctx, &pb.CheckRequest{Consistency: fresh(token), Resource: obj("doc", "readme"), Permission: "view", Subject: subj("agent", "bot"), Explain: true})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetDecision() != pb.Decision_DECISION_ALLOWED {
		t.Errorf("bot acting for ann: %v", resp.GetDecision())
	}
	var chain []string
	for _, e := range resp.GetDelegation().GetChain() {
		chain = append(chain, e.GetSubject().GetObjectType()+":"+e.GetSubject().GetObjectId())
	}
	if !slices.Equal(chain, []string{"agent:bot", "user:ann"}) {
		t.Errorf("chain = %v, want [agent:bot user:ann]", chain)
	}

	resp, err = ts.perm.Check(ctx, &pb.CheckRequest{Consistency: fresh(token), Resource: obj("doc", "readme"), Permission: "view", Subject: subj("agent", "orphan"), Explain: true})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetDecision() != pb.Decision_DECISION_DENIED || resp.GetDelegation().GetReason() != "no_delegation" {
		t.Errorf("agent without delegation: %v, reason %q", resp.GetDecision(), resp.GetDelegation().GetReason())
	}

	_, err = ts.perm.Check(ctx, &pb.CheckRequest{Consistency: fresh(token), Resource: obj("doc", "readme"), Permission: "view", Subject: subj("user", "ann"), OnBehalfOf: obj("user", "bob")})
	wantCode(t, err, codes.InvalidArgument, "on_behalf_of")
}

func TestWatchGRPC(t *testing.T) {
	ts := startServer(t, nil)
	start := ts.writeSchema(testSchema)
	ctx := ts.ctx()

	all, err := ts.rels.Watch(ctx, &pb.WatchRequest{OptionalStartCursor: &pb.RevisionToken{Token: start}})
	if err != nil {
		t.Fatal(err)
	}
	groups, err := ts.rels.Watch(ctx, &pb.WatchRequest{
		OptionalStartCursor: &pb.RevisionToken{Token: start},
		OptionalFilters:     []*pb.RelationshipFilter{{ResourceType: "group"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t1 := ts.write(update(create, mustParse(t, "doc:a#viewer@user:ann", "group:eng#member@user:bob")...)...)
	t2 := ts.write(update(del, mustParse(t, "doc:a#viewer@user:ann")...)...)

	want := []struct {
		token   string
		updates []string
	}{
		{t1, []string{"OPERATION_TOUCH doc:a#viewer@user:ann", "OPERATION_TOUCH group:eng#member@user:bob"}},
		{t2, []string{"OPERATION_DELETE doc:a#viewer@user:ann"}},
	}
	for i, w := range want {
		r, err := all.Recv()
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, u := range r.GetUpdates() {
			// The change stream may report a create as the relationship
			// now present (a touch).
			op := strings.Replace(u.GetOperation().String(), "CREATE", "TOUCH", 1)
			got = append(got, op+" "+relText(u.GetRelationship()))
		}
		sort.Strings(got)
		if !slices.Equal(got, w.updates) {
			t.Errorf("change %d = %v, want %v", i, got, w.updates)
		}
		if r.GetChangesThrough().GetToken() != w.token {
			t.Errorf("change %d through %q, want the write's token %q", i, r.GetChangesThrough().GetToken(), w.token)
		}
	}
	r, err := groups.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(r.GetUpdates()) != 1 || relText(r.GetUpdates()[0].GetRelationship()) != "group:eng#member@user:bob" {
		t.Errorf("filtered watch got %v", r.GetUpdates())
	}

	// A schema change shows as such.
	ts.writeSchema(testSchema + "\ndefinition folder {}\n")
	r, err = all.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if !r.GetSchemaUpdated() {
		t.Errorf("schema write not flagged: %v", r)
	}

	// Shutdown ends the watch with Unavailable instead of hanging.
	if err := ts.shutdown(); err != nil {
		t.Fatalf("Run returned %v", err)
	}
	_, err = all.Recv()
	wantCode(t, err, codes.Unavailable, "shutting down")
}

func TestImportExportGRPC(t *testing.T) {
	ts := startServer(t, nil)
	ts.writeSchema(testSchema)
	ctx := ts.ctx()

	imp, err := ts.rels.ImportRelationships(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for b := range 3 {
		var batch []*pb.Relationship
		for i := range 100 {
			r := mustParse(t, fmt.Sprintf("doc:d%d_%03d#viewer@user:u%d", b, i, i%7))[0]
			batch = append(batch, r)
			want = append(want, relText(r))
		}
		if err := imp.Send(&pb.ImportRelationshipsRequest{Relationships: batch}); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := imp.CloseAndRecv()
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetNumLoaded() != 300 {
		t.Errorf("loaded %d, want 300", resp.GetNumLoaded())
	}
	sort.Strings(want)

	export := func(req *pb.ExportRelationshipsRequest) ([][]string, []*pb.Cursor) {
		stream, err := ts.rels.ExportRelationships(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		var batches [][]string
		var cursors []*pb.Cursor
		for {
			r, err := stream.Recv()
			if err == io.EOF {
				return batches, cursors
			}
			if err != nil {
				t.Fatal(err)
			}
			var b []string
			for _, rl := range r.GetRelationships() {
				b = append(b, relText(rl))
			}
			batches = append(batches, b)
			cursors = append(cursors, r.GetAfterResultCursor())
		}
	}
	req := &pb.ExportRelationshipsRequest{Consistency: fresh(resp.GetWrittenAt().GetToken()), OptionalBatchSize: 128}
	batches, cursors := export(req)
	if len(batches) != 3 || len(batches[0]) != 128 || len(batches[2]) != 44 {
		t.Fatalf("batch sizes: %d batches", len(batches))
	}
	if got := slices.Concat(batches...); !slices.Equal(got, want) {
		t.Errorf("export differs from import:\n%v\nwant\n%v", got, want)
	}

	// Resuming from the first batch's cursor yields the rest, at the same
	// revision, even after a later write.
	ts.write(update(create, mustParse(t, "doc:d0_000a#viewer@user:late")...)...)
	req.OptionalCursor = cursors[0]
	rest, _ := export(req)
	if got := slices.Concat(rest...); !slices.Equal(got, want[128:]) {
		t.Errorf("resumed export = %d relationships, want %d", len(got), len(want)-128)
	}

	// A duplicate fails the import with AlreadyExists, naming the batch and
	// what earlier batches committed; the failing batch writes nothing.
	before := ts.state()
	imp, err = ts.rels.ImportRelationships(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := imp.Send(&pb.ImportRelationshipsRequest{Relationships: mustParse(t, "doc:fresh#viewer@user:x", "doc:d0_001#viewer@user:u1")}); err != nil {
		t.Fatal(err)
	}
	_, err = imp.CloseAndRecv()
	wantCode(t, err, codes.AlreadyExists, "batch 0", "doc:d0_001#viewer@user:u1", "0 relationships from 0 earlier batches")
	if !ts.state().equal(before) {
		t.Fatal("a failed import batch changed the store")
	}
}
