package difftest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"github.com/authzed/spicedb/pkg/development"
	core "github.com/authzed/spicedb/pkg/proto/core/v1"
	devinterface "github.com/authzed/spicedb/pkg/proto/developer/v1"
	v1dispatch "github.com/authzed/spicedb/pkg/proto/dispatch/v1"
	"github.com/authzed/spicedb/pkg/tuple"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-authz/mandate/store/rel"
)

// RejectedError reports that SpiceDB refused a case's schema or
// relationships; such cases are discarded, not compared.
type RejectedError struct {
	// Schema is set when the schema was refused, else relationships were.
	Schema   bool
	Messages []string
}

func (e *RejectedError) Error() string {
	what := "relationships"
	if e.Schema {
		what = "schema"
	}
	return fmt.Sprintf("spicedb rejected the %s: %s", what, strings.Join(e.Messages, "; "))
}

// spiceDB is the oracle: SpiceDB's in-process development context. Checks
// go through development.RunCheck, lookups through its v1 gRPC service.
type spiceDB struct {
	dc       *development.DevContext
	client   v1.PermissionsServiceClient
	shutdown func()
}

var fullyConsistent = &v1.Consistency{Requirement: &v1.Consistency_FullyConsistent{FullyConsistent: true}}

// SpiceDB builds the oracle system.
func SpiceDB(ctx context.Context, schema string, rels []rel.Relationship) (System, error) {
	tuples := make([]*core.RelationTuple, 0, len(rels))
	for _, r := range rels {
		t, err := coreTuple(r)
		if err != nil {
			return nil, err
		}
		tuples = append(tuples, t)
	}
	dc, devErrs, err := development.NewDevContext(ctx, &devinterface.RequestContext{Schema: schema, Relationships: tuples})
	if err != nil {
		return nil, fmt.Errorf("spicedb development context: %w", err)
	}
	if devErrs != nil && len(devErrs.InputErrors) > 0 {
		rej := &RejectedError{}
		for _, e := range devErrs.InputErrors {
			if e.Source == devinterface.DeveloperError_SCHEMA {
				rej.Schema = true
			}
			rej.Messages = append(rej.Messages, e.Message)
		}
		return nil, rej
	}
	conn, shutdown, err := dc.RunV1InMemoryService()
	if err != nil {
		dc.Dispose()
		return nil, fmt.Errorf("spicedb in-memory service: %w", err)
	}
	return &spiceDB{dc: dc, client: v1.NewPermissionsServiceClient(conn), shutdown: shutdown}, nil
}

func coreTuple(r rel.Relationship) (*core.RelationTuple, error) {
	subRel := r.Subject.Relation
	if subRel == "" {
		subRel = tuple.Ellipsis
	}
	t := &core.RelationTuple{
		ResourceAndRelation: &core.ObjectAndRelation{Namespace: r.Resource.Type, ObjectId: r.Resource.ID, Relation: r.Relation},
		Subject:             &core.ObjectAndRelation{Namespace: r.Subject.Type, ObjectId: r.Subject.ID, Relation: subRel},
	}
	if r.Caveat != nil {
		c := &core.ContextualizedCaveat{CaveatName: r.Caveat.Name}
		if len(r.Caveat.Context) > 0 {
			s, err := structpb.NewStruct(r.Caveat.Context)
			if err != nil {
				return nil, fmt.Errorf("relationship %s: caveat context: %w", r, err)
			}
			c.Context = s
		}
		t.Caveat = c
	}
	if !r.Expiration.IsZero() {
		t.OptionalExpirationTime = timestamppb.New(r.Expiration)
	}
	return t, nil
}

func (s *spiceDB) Close() {
	s.shutdown()
	s.dc.Dispose()
}

func onr(typ, id, relation string) tuple.ObjectAndRelation {
	if relation == "" {
		relation = tuple.Ellipsis
	}
	return tuple.ObjectAndRelation{ObjectType: typ, ObjectID: id, Relation: relation}
}

func (s *spiceDB) Check(ctx context.Context, q Query) (Outcome, error) {
	// RunCheck runs under the DevContext's own context. Give it one that
	// ends with ctx: SpiceDB's check can block forever after an internal
	// error (a failing branch of .all() leaves its siblings unscheduled)
	// and only cancellation releases it.
	dc := *s.dc
	cctx, cancel := context.WithCancel(s.dc.Ctx)
	defer cancel()
	defer context.AfterFunc(ctx, cancel)()
	dc.Ctx = cctx
	res, err := development.RunCheck(&dc,
		onr(q.Resource.Type, q.Resource.ID, q.Permission),
		onr(q.Subject.Type, q.Subject.ID, q.Subject.Relation),
		q.Context)
	if err != nil {
		return No, err
	}
	switch res.Permissionship {
	case v1dispatch.ResourceCheckResult_MEMBER:
		return Has, nil
	case v1dispatch.ResourceCheckResult_CAVEATED_MEMBER:
		return Conditional, nil
	case v1dispatch.ResourceCheckResult_NOT_MEMBER:
		return No, nil
	}
	return No, fmt.Errorf("spicedb check: unexpected membership %v", res.Permissionship)
}

func requestContext(ctx map[string]any) (*structpb.Struct, error) {
	if ctx == nil {
		return nil, nil
	}
	s, err := structpb.NewStruct(ctx)
	if err != nil {
		return nil, fmt.Errorf("request context: %w", err)
	}
	return s, nil
}

func lookupOutcome(p v1.LookupPermissionship) (Outcome, error) {
	switch p {
	case v1.LookupPermissionship_LOOKUP_PERMISSIONSHIP_HAS_PERMISSION:
		return Has, nil
	case v1.LookupPermissionship_LOOKUP_PERMISSIONSHIP_CONDITIONAL_PERMISSION:
		return Conditional, nil
	}
	return No, fmt.Errorf("unexpected lookup permissionship %v", p)
}

func (s *spiceDB) LookupResources(ctx context.Context, q Query) (map[string]Outcome, error) {
	rc, err := requestContext(q.Context)
	if err != nil {
		return nil, err
	}
	stream, err := s.client.LookupResources(ctx, &v1.LookupResourcesRequest{
		Consistency:        fullyConsistent,
		ResourceObjectType: q.ResourceType,
		Permission:         q.Permission,
		Subject: &v1.SubjectReference{
			Object:           &v1.ObjectReference{ObjectType: q.Subject.Type, ObjectId: q.Subject.ID},
			OptionalRelation: q.Subject.Relation,
		},
		Context: rc,
	})
	if err != nil {
		return nil, err
	}
	out := map[string]Outcome{}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		o, err := lookupOutcome(resp.Permissionship)
		if err != nil {
			return nil, err
		}
		// SpiceDB may report a resource more than once (once per path).
		out[resp.ResourceObjectId] = max(out[resp.ResourceObjectId], o)
	}
}

func (s *spiceDB) LookupSubjects(ctx context.Context, q Query) ([]FoundSubject, error) {
	rc, err := requestContext(q.Context)
	if err != nil {
		return nil, err
	}
	stream, err := s.client.LookupSubjects(ctx, &v1.LookupSubjectsRequest{
		Consistency:             fullyConsistent,
		Resource:                &v1.ObjectReference{ObjectType: q.Resource.Type, ObjectId: q.Resource.ID},
		Permission:              q.Permission,
		SubjectObjectType:       q.SubjectType,
		OptionalSubjectRelation: q.SubjectRelation,
		Context:                 rc,
	})
	if err != nil {
		return nil, err
	}
	var out []FoundSubject
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		f, err := foundSubject(resp.Subject)
		if err != nil {
			return nil, err
		}
		for _, x := range resp.ExcludedSubjects {
			e, err := foundSubject(x)
			if err != nil {
				return nil, err
			}
			f.Excluded = append(f.Excluded, e)
		}
		out = append(out, f)
	}
}

func foundSubject(s *v1.ResolvedSubject) (FoundSubject, error) {
	o, err := lookupOutcome(s.Permissionship)
	if err != nil {
		return FoundSubject{}, err
	}
	return FoundSubject{ID: s.SubjectObjectId, Outcome: o}, nil
}
