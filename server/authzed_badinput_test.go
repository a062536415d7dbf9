package server_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"github.com/authzed/authzed-go/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// errorSchema is testSchema without Mandate's agent type, so that SpiceDB
// and Mandate mean the same by it.
const errorSchema = `use expiration

definition user {}

definition group {
	relation member: user | group#member
}

caveat within_limit(amount int, limit int) {
	amount <= limit
}

definition doc {
	relation owner: user
	relation viewer: user | user:* | group#member | user with within_limit | user with expiration
	relation banned: user
	permission edit = owner
	permission view = (viewer + owner) - banned
}
`

// TestAuthzedErrorCodesMatchSpiceDB sends the same bad requests to Mandate
// and to SpiceDB v1.56.1's own server and requires the same gRPC code, the
// one SpiceDB documents for the mistake; a refused write changes nothing.
func TestAuthzedErrorCodesMatchSpiceDB(t *testing.T) {
	ts := startServer(t, nil)
	mandate := mandateClient(t, ts, testKey)
	spice := startSpiceDB(t)
	ctx := ts.ctx()
	seed := func(c *authzed.Client) {
		if _, err := c.WriteSchema(ctx, &v1.WriteSchemaRequest{Schema: errorSchema}); err != nil {
			t.Fatalf("WriteSchema: %v", err)
		}
		var texts []string
		for i := range 20 {
			texts = append(texts, fmt.Sprintf("doc:d%02d#viewer@user:many", i))
		}
		texts = append(texts, "doc:readme#owner@user:ann", "group:eng#member@user:bob", "doc:readme#viewer@group:eng#member")
		if _, err := c.WriteRelationships(ctx, &v1.WriteRelationshipsRequest{Updates: zupdates(zcreate, zrels(t, texts...)...)}); err != nil {
			t.Fatalf("WriteRelationships: %v", err)
		}
	}
	seed(mandate)
	seed(spice)

	check := func(res, perm, sub string) func(context.Context, *authzed.Client) error {
		return func(ctx context.Context, c *authzed.Client) error {
			_, err := c.CheckPermission(ctx, &v1.CheckPermissionRequest{Consistency: zfull, Resource: zres(res), Permission: perm, Subject: zsubj(sub)})
			return err
		}
	}
	write := func(op v1.RelationshipUpdate_Operation, texts ...string) func(context.Context, *authzed.Client) error {
		return func(ctx context.Context, c *authzed.Client) error {
			_, err := c.WriteRelationships(ctx, &v1.WriteRelationshipsRequest{Updates: zupdates(op, zrels(t, texts...)...)})
			return err
		}
	}
	read := func(req *v1.ReadRelationshipsRequest) func(context.Context, *authzed.Client) error {
		return func(ctx context.Context, c *authzed.Client) error {
			stream, err := c.ReadRelationships(ctx, req)
			return streamErr(stream, err)
		}
	}
	del := func(req *v1.DeleteRelationshipsRequest) func(context.Context, *authzed.Client) error {
		return func(ctx context.Context, c *authzed.Client) error {
			_, err := c.DeleteRelationships(ctx, req)
			return err
		}
	}
	lookup := func(req *v1.LookupResourcesRequest) func(context.Context, *authzed.Client) error {
		return func(ctx context.Context, c *authzed.Client) error {
			stream, err := c.LookupResources(ctx, req)
			return streamErr(stream, err)
		}
	}
	schema := func(text string) func(context.Context, *authzed.Client) error {
		return func(ctx context.Context, c *authzed.Client) error {
			_, err := c.WriteSchema(ctx, &v1.WriteSchemaRequest{Schema: text})
			return err
		}
	}
	token := func(text string) *v1.ZedToken { return &v1.ZedToken{Token: text} }
	docFilter := &v1.RelationshipFilter{ResourceType: "doc"}
	var tooMany []string
	for i := range 1001 {
		tooMany = append(tooMany, fmt.Sprintf("doc:many%d#viewer@user:x", i))
	}

	cases := []struct {
		name string
		call func(context.Context, *authzed.Client) error
		want codes.Code
	}{
		// Names the schema does not define.
		{"check: unknown resource type", check("folder:x", "view", "user:ann"), codes.FailedPrecondition},
		{"check: unknown permission", check("doc:readme", "nope", "user:ann"), codes.FailedPrecondition},
		{"check: unknown subject type", check("doc:readme", "view", "robot:r2"), codes.FailedPrecondition},
		{"check: unknown subject relation", check("doc:readme", "view", "group:eng#nope"), codes.FailedPrecondition},
		{"expand: unknown permission", func(ctx context.Context, c *authzed.Client) error {
			_, err := c.ExpandPermissionTree(ctx, &v1.ExpandPermissionTreeRequest{Resource: zres("doc:readme"), Permission: "nope"})
			return err
		}, codes.FailedPrecondition},
		{"lookup resources: unknown type", lookup(&v1.LookupResourcesRequest{ResourceObjectType: "folder", Permission: "view", Subject: zsubj("user:ann")}), codes.FailedPrecondition},
		{"lookup subjects: unknown permission", func(ctx context.Context, c *authzed.Client) error {
			stream, err := c.LookupSubjects(ctx, &v1.LookupSubjectsRequest{Resource: zres("doc:readme"), Permission: "nope", SubjectObjectType: "user"})
			return streamErr(stream, err)
		}, codes.FailedPrecondition},
		{"write: unknown resource type", write(ztouch, "folder:x#viewer@user:ann"), codes.FailedPrecondition},
		{"write: unknown relation", write(ztouch, "doc:x#nope@user:ann"), codes.FailedPrecondition},
		{"write: unknown subject type", write(ztouch, "doc:x#viewer@robot:r2"), codes.FailedPrecondition},
		{"read: unknown resource type", read(&v1.ReadRelationshipsRequest{RelationshipFilter: &v1.RelationshipFilter{ResourceType: "folder"}}), codes.FailedPrecondition},
		{"read: unknown relation", read(&v1.ReadRelationshipsRequest{RelationshipFilter: &v1.RelationshipFilter{ResourceType: "doc", OptionalRelation: "nope"}}), codes.FailedPrecondition},
		{"delete: unknown subject type", del(&v1.DeleteRelationshipsRequest{RelationshipFilter: &v1.RelationshipFilter{ResourceType: "doc", OptionalSubjectFilter: &v1.SubjectFilter{SubjectType: "robot"}}}), codes.FailedPrecondition},

		// Relationships the schema does not allow.
		{"write: to a permission", write(ztouch, "doc:x#view@user:ann"), codes.InvalidArgument},
		{"write: subject type not allowed", write(ztouch, "doc:x#owner@group:eng"), codes.InvalidArgument},
		{"write: userset not allowed", write(ztouch, "doc:x#owner@group:eng#member"), codes.InvalidArgument},
		{"write: wildcard not allowed", write(ztouch, "doc:x#owner@user:*"), codes.InvalidArgument},
		{"write: caveat not allowed", write(ztouch, "doc:x#owner@user:ann[within_limit]"), codes.InvalidArgument},
		// SpiceDB checks the caveat against the relation's allowed types
		// before it looks the caveat up.
		{"write: unknown caveat", write(ztouch, "doc:x#viewer@user:ann[nope]"), codes.InvalidArgument},
		{"write: the same relationship twice", write(ztouch, "doc:x#viewer@user:ann", "doc:x#viewer@user:ann"), codes.InvalidArgument},
		{"write: too many updates", write(ztouch, tooMany...), codes.InvalidArgument},
		{"write: create what exists", write(zcreate, "doc:y#viewer@user:new", "doc:readme#owner@user:ann"), codes.AlreadyExists},
		{"write: precondition fails", func(ctx context.Context, c *authzed.Client) error {
			_, err := c.WriteRelationships(ctx, &v1.WriteRelationshipsRequest{
				Updates: zupdates(ztouch, zrels(t, "doc:y#viewer@user:new")...),
				OptionalPreconditions: []*v1.Precondition{{Operation: v1.Precondition_OPERATION_MUST_MATCH,
					Filter: &v1.RelationshipFilter{ResourceType: "doc", OptionalResourceId: "readme", OptionalRelation: "banned"}}},
			})
			return err
		}, codes.FailedPrecondition},
		{"write: empty precondition", func(ctx context.Context, c *authzed.Client) error {
			_, err := c.WriteRelationships(ctx, &v1.WriteRelationshipsRequest{
				Updates:               zupdates(ztouch, zrels(t, "doc:y#viewer@user:new")...),
				OptionalPreconditions: []*v1.Precondition{{Operation: v1.Precondition_OPERATION_MUST_MATCH}},
			})
			return err
		}, codes.InvalidArgument},
		{"write: wrong caveat context type", func(ctx context.Context, c *authzed.Client) error {
			r := zrels(t, "doc:y#viewer@user:new[within_limit]")[0]
			r.OptionalCaveat.Context = mustStruct(map[string]any{"limit": "lots"})
			_, err := c.WriteRelationships(ctx, &v1.WriteRelationshipsRequest{Updates: zupdates(ztouch, r)})
			return err
		}, codes.InvalidArgument},

		// Request shapes.
		{"check: malformed object ID", check("doc:bad id", "view", "user:ann"), codes.InvalidArgument},
		{"check: wildcard resource", check("doc:*", "view", "user:ann"), codes.InvalidArgument},
		{"check: malformed type", check("Doc:readme", "view", "user:ann"), codes.InvalidArgument},
		{"check: no subject", func(ctx context.Context, c *authzed.Client) error {
			_, err := c.CheckPermission(ctx, &v1.CheckPermissionRequest{Resource: zres("doc:readme"), Permission: "view"})
			return err
		}, codes.InvalidArgument},
		{"check: wrong context type", func(ctx context.Context, c *authzed.Client) error {
			_, err := c.CheckPermission(ctx, &v1.CheckPermissionRequest{Consistency: zfull, Resource: zres("doc:readme"), Permission: "view", Subject: zsubj("user:carl"),
				Context: &structpb.Struct{Fields: map[string]*structpb.Value{"amount": structpb.NewStringValue("lots")}}})
			return err
		}, codes.OK},
		{"check: malformed ZedToken", func(ctx context.Context, c *authzed.Client) error {
			_, err := c.CheckPermission(ctx, &v1.CheckPermissionRequest{Consistency: zfresh(token("garbage")), Resource: zres("doc:readme"), Permission: "view", Subject: zsubj("user:ann")})
			return err
		}, codes.InvalidArgument},
		{"check: malformed exact snapshot", func(ctx context.Context, c *authzed.Client) error {
			_, err := c.CheckPermission(ctx, &v1.CheckPermissionRequest{Consistency: zexact(token("garbage")), Resource: zres("doc:readme"), Permission: "view", Subject: zsubj("user:ann")})
			return err
		}, codes.InvalidArgument},
		{"write: wildcard resource", func(ctx context.Context, c *authzed.Client) error {
			r := zrels(t, "doc:x#viewer@user:ann")[0]
			r.Resource.ObjectId = "*"
			_, err := c.WriteRelationships(ctx, &v1.WriteRelationshipsRequest{Updates: zupdates(ztouch, r)})
			return err
		}, codes.InvalidArgument},
		{"read: empty filter", read(&v1.ReadRelationshipsRequest{RelationshipFilter: &v1.RelationshipFilter{}}), codes.InvalidArgument},
		{"read: ID and prefix", read(&v1.ReadRelationshipsRequest{RelationshipFilter: &v1.RelationshipFilter{ResourceType: "doc", OptionalResourceId: "a", OptionalResourceIdPrefix: "a"}}), codes.InvalidArgument},
		{"read: limit over the maximum", read(&v1.ReadRelationshipsRequest{RelationshipFilter: docFilter, OptionalLimit: 1001}), codes.InvalidArgument},
		{"read: a cursor from another request", func(ctx context.Context, c *authzed.Client) error {
			stream, err := c.ReadRelationships(ctx, &v1.ReadRelationshipsRequest{RelationshipFilter: docFilter, OptionalLimit: 1})
			if err != nil {
				return err
			}
			first, err := stream.Recv()
			if err != nil {
				return err
			}
			return read(&v1.ReadRelationshipsRequest{RelationshipFilter: &v1.RelationshipFilter{ResourceType: "group"}, OptionalCursor: first.GetAfterResultCursor()})(ctx, c)
		}, codes.InvalidArgument},
		{"read: a garbage cursor", read(&v1.ReadRelationshipsRequest{RelationshipFilter: docFilter, OptionalCursor: &v1.Cursor{Token: "garbage"}}), codes.InvalidArgument},
		{"lookup resources: limit over the maximum", lookup(&v1.LookupResourcesRequest{ResourceObjectType: "doc", Permission: "view", Subject: zsubj("user:ann"), OptionalLimit: 1001}), codes.InvalidArgument},
		{"lookup subjects: concrete limit", func(ctx context.Context, c *authzed.Client) error {
			stream, err := c.LookupSubjects(ctx, &v1.LookupSubjectsRequest{Resource: zres("doc:readme"), Permission: "view", SubjectObjectType: "user", OptionalConcreteLimit: 5})
			return streamErr(stream, err)
		}, codes.Unimplemented},
		{"delete: empty filter", del(&v1.DeleteRelationshipsRequest{RelationshipFilter: &v1.RelationshipFilter{}}), codes.InvalidArgument},
		{"delete: no filter", del(&v1.DeleteRelationshipsRequest{}), codes.InvalidArgument},
		{"delete: more than the limit", del(&v1.DeleteRelationshipsRequest{RelationshipFilter: docFilter, OptionalLimit: 5}), codes.InvalidArgument},
		{"delete: limit over the maximum", del(&v1.DeleteRelationshipsRequest{RelationshipFilter: docFilter, OptionalLimit: 1001}), codes.InvalidArgument},
		{"export: limit over the maximum", func(ctx context.Context, c *authzed.Client) error {
			stream, err := c.ExportBulkRelationships(ctx, &v1.ExportBulkRelationshipsRequest{OptionalLimit: 10_001})
			return streamErr(stream, err)
		}, codes.InvalidArgument},
		{"check bulk: too many items", func(ctx context.Context, c *authzed.Client) error {
			items := make([]*v1.CheckBulkPermissionsRequestItem, 10_001)
			for i := range items {
				items[i] = &v1.CheckBulkPermissionsRequestItem{Resource: zres("doc:readme"), Permission: "view", Subject: zsubj("user:ann")}
			}
			_, err := c.CheckBulkPermissions(ctx, &v1.CheckBulkPermissionsRequest{Items: items})
			return err
		}, codes.InvalidArgument},
		{"import: a relationship that exists", func(ctx context.Context, c *authzed.Client) error {
			stream, err := c.ImportBulkRelationships(ctx)
			if err != nil {
				return err
			}
			if err := stream.Send(&v1.ImportBulkRelationshipsRequest{Relationships: zrels(t, "doc:z#viewer@user:new", "doc:readme#owner@user:ann")}); err != nil {
				return err
			}
			_, err = stream.CloseAndRecv()
			return err
		}, codes.AlreadyExists},
		{"watch: object types and filters", func(ctx context.Context, c *authzed.Client) error {
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			stream, err := c.Watch(ctx, &v1.WatchRequest{OptionalObjectTypes: []string{"doc"}, OptionalRelationshipFilters: []*v1.RelationshipFilter{docFilter}})
			if err != nil {
				return err
			}
			_, err = stream.Recv()
			return err
		}, codes.InvalidArgument},

		{"check: wildcard subject", check("doc:readme", "view", "user:*"), codes.InvalidArgument},
		{"lookup resources: wildcard subject", lookup(&v1.LookupResourcesRequest{ResourceObjectType: "doc", Permission: "view", Subject: zsubj("user:*")}), codes.InvalidArgument},
		{"lookup subjects: unknown subject type", func(ctx context.Context, c *authzed.Client) error {
			stream, err := c.LookupSubjects(ctx, &v1.LookupSubjectsRequest{Resource: zres("doc:readme"), Permission: "view", SubjectObjectType: "robot"})
			return streamErr(stream, err)
		}, codes.FailedPrecondition},
		{"expand: wildcard resource", func(ctx context.Context, c *authzed.Client) error {
			_, err := c.ExpandPermissionTree(ctx, &v1.ExpandPermissionTreeRequest{Resource: zres("doc:*"), Permission: "view"})
			return err
		}, codes.InvalidArgument},
		{"check bulk: an unknown type is the item's error", func(ctx context.Context, c *authzed.Client) error {
			resp, err := c.CheckBulkPermissions(ctx, &v1.CheckBulkPermissionsRequest{Consistency: zfull, Items: []*v1.CheckBulkPermissionsRequestItem{
				{Resource: zres("doc:readme"), Permission: "view", Subject: zsubj("user:ann")},
				{Resource: zres("folder:x"), Permission: "view", Subject: zsubj("user:ann")},
			}})
			if err != nil {
				return err
			}
			if resp.GetPairs()[0].GetItem() == nil {
				return status.Error(codes.Internal, "the valid item failed")
			}
			return status.ErrorProto(resp.GetPairs()[1].GetError())
		}, codes.FailedPrecondition},
		{"read: wildcard subject with a relation", read(&v1.ReadRelationshipsRequest{RelationshipFilter: &v1.RelationshipFilter{ResourceType: "doc",
			OptionalSubjectFilter: &v1.SubjectFilter{SubjectType: "user", OptionalSubjectId: "*", OptionalRelation: &v1.SubjectFilter_RelationFilter{Relation: "member"}}}}), codes.FailedPrecondition},
		{"write: expiration not allowed", func(ctx context.Context, c *authzed.Client) error {
			return write(ztouch, "doc:x#owner@user:ann[expiration:2100-01-01T00:00:00Z]")(ctx, c)
		}, codes.InvalidArgument},
		{"write: unknown caveat parameter", func(ctx context.Context, c *authzed.Client) error {
			r := zrels(t, "doc:y#viewer@user:new[within_limit]")[0]
			r.OptionalCaveat.Context = mustStruct(map[string]any{"nope": 1})
			_, err := c.WriteRelationships(ctx, &v1.WriteRelationshipsRequest{Updates: zupdates(ztouch, r)})
			return err
		}, codes.InvalidArgument},
		{"watch: malformed start", func(ctx context.Context, c *authzed.Client) error {
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			stream, err := c.Watch(ctx, &v1.WatchRequest{OptionalStartCursor: token("garbage")})
			if err != nil {
				return err
			}
			_, err = stream.Recv()
			return err
		}, codes.InvalidArgument},

		// Schemas.
		{"schema: syntax error", schema("definition user {"), codes.InvalidArgument},
		{"schema: bad caveat expression", schema("caveat c(x int) { y > 1 }\ndefinition user {}"), codes.InvalidArgument},
		{"schema: a name defined twice", schema("definition user {}\ndefinition user {}"), codes.InvalidArgument},
		// Type errors are FailedPrecondition in SpiceDB.
		{"schema: undefined type", schema("definition user {}\ndefinition doc {\n\trelation viewer: nobody\n}"), codes.FailedPrecondition},
		{"schema: undefined relation", schema("definition user {}\ndefinition doc {\n\trelation viewer: user\n\tpermission view = nope\n}"), codes.FailedPrecondition},
		{"schema: removing a relation in use", schema(strings.NewReplacer("\trelation owner: user\n", "", "permission edit = owner", "permission edit = viewer", "(viewer + owner)", "viewer").Replace(errorSchema)), codes.InvalidArgument},
		{"schema: removing a type a relation uses", schema(strings.Replace(errorSchema, "relation owner: user", "relation owner: group", 1)), codes.InvalidArgument},
		{"schema: removing everything", schema(""), codes.InvalidArgument},
	}
	// Where SpiceDB fails to classify a mistake (Unknown: an unwrapped
	// error), Mandate answers with the code the mistake deserves.
	spiceDBDiffers := map[string]codes.Code{
		"write: wrong caveat context type": codes.Unknown,
		"write: unknown caveat parameter":  codes.Unknown,
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := ts.state()
			got := status.Code(tc.call(ctx, mandate))
			spiceCode := status.Code(tc.call(ctx, spice))
			wantSpice := tc.want
			if c, ok := spiceDBDiffers[tc.name]; ok {
				wantSpice = c
			}
			if spiceCode != wantSpice {
				t.Errorf("SpiceDB answers %v, the case expects %v", spiceCode, wantSpice)
			}
			if got != tc.want {
				t.Errorf("Mandate answers %v, want %v (SpiceDB: %v)", got, tc.want, spiceCode)
			}
			if got != codes.OK && !ts.state().equal(before) {
				t.Error("a refused request changed the store")
			}
		})
	}
}
