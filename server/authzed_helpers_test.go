package server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"github.com/authzed/authzed-go/v1"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/store/rel"
)

// Helpers for driving the authzed.api.v1 API in tests.

func zobj(typ, id string) *v1.ObjectReference {
	return &v1.ObjectReference{ObjectType: typ, ObjectId: id}
}

// zsubj parses "type:id" or "type:id#relation".
func zsubj(text string) *v1.SubjectReference {
	typ, rest, _ := strings.Cut(text, ":")
	id, relation, _ := strings.Cut(rest, "#")
	return &v1.SubjectReference{Object: zobj(typ, id), OptionalRelation: relation}
}

// zres parses "type:id".
func zres(text string) *v1.ObjectReference {
	typ, id, _ := strings.Cut(text, ":")
	return zobj(typ, id)
}

// zrels parses relationships in validation-file text form.
func zrels(t *testing.T, texts ...string) []*v1.Relationship {
	t.Helper()
	out := make([]*v1.Relationship, len(texts))
	for i, text := range texts {
		r, err := rel.Parse(text)
		if err != nil {
			t.Fatalf("parse %q: %v", text, err)
		}
		out[i] = zrel(r)
	}
	return out
}

func zrel(r rel.Relationship) *v1.Relationship {
	out := &v1.Relationship{
		Resource: zobj(r.Resource.Type, r.Resource.ID),
		Relation: r.Relation,
		Subject:  &v1.SubjectReference{Object: zobj(r.Subject.Type, r.Subject.ID), OptionalRelation: r.Subject.Relation},
	}
	if r.Caveat != nil {
		out.OptionalCaveat = &v1.ContextualizedCaveat{CaveatName: r.Caveat.Name, Context: mustStruct(r.Caveat.Context)}
	}
	if !r.Expiration.IsZero() {
		out.OptionalExpiresAt = timestamppb.New(r.Expiration)
	}
	return out
}

func zupdates(op v1.RelationshipUpdate_Operation, rels ...*v1.Relationship) []*v1.RelationshipUpdate {
	out := make([]*v1.RelationshipUpdate, len(rels))
	for i, r := range rels {
		out[i] = &v1.RelationshipUpdate{Operation: op, Relationship: r}
	}
	return out
}

const (
	zcreate = v1.RelationshipUpdate_OPERATION_CREATE
	ztouch  = v1.RelationshipUpdate_OPERATION_TOUCH
	zdelete = v1.RelationshipUpdate_OPERATION_DELETE
)

func zfresh(t *v1.ZedToken) *v1.Consistency {
	return &v1.Consistency{Requirement: &v1.Consistency_AtLeastAsFresh{AtLeastAsFresh: t}}
}

func zexact(t *v1.ZedToken) *v1.Consistency {
	return &v1.Consistency{Requirement: &v1.Consistency_AtExactSnapshot{AtExactSnapshot: t}}
}

var (
	zfull = &v1.Consistency{Requirement: &v1.Consistency_FullyConsistent{FullyConsistent: true}}
	zfast = &v1.Consistency{Requirement: &v1.Consistency_MinimizeLatency{MinimizeLatency: true}}
)

// zrelText renders an authzed relationship in validation-file form.
func zrelText(r *v1.Relationship) string {
	s := fmt.Sprintf("%s:%s#%s@%s:%s", r.GetResource().GetObjectType(), r.GetResource().GetObjectId(), r.GetRelation(),
		r.GetSubject().GetObject().GetObjectType(), r.GetSubject().GetObject().GetObjectId())
	if rl := r.GetSubject().GetOptionalRelation(); rl != "" {
		s += "#" + rl
	}
	if c := r.GetOptionalCaveat(); c != nil {
		s += "[" + c.GetCaveatName()
		if len(c.GetContext().GetFields()) > 0 {
			s += ":" + fmt.Sprint(c.GetContext().AsMap())
		}
		s += "]"
	}
	if e := r.GetOptionalExpiresAt(); e != nil {
		s += "[expiration:" + e.AsTime().UTC().Format(time.RFC3339) + "]"
	}
	return s
}

// nativeRelText renders a mandate.v1 relationship like zrelText.
func nativeRelText(r *pb.Relationship) string {
	z := &v1.Relationship{
		Resource: zobj(r.GetResource().GetObjectType(), r.GetResource().GetObjectId()),
		Relation: r.GetRelation(),
		Subject:  &v1.SubjectReference{Object: zobj(r.GetSubject().GetObject().GetObjectType(), r.GetSubject().GetObject().GetObjectId()), OptionalRelation: r.GetSubject().GetOptionalRelation()},
	}
	if c := r.GetOptionalCaveat(); c != nil {
		z.OptionalCaveat = &v1.ContextualizedCaveat{CaveatName: c.GetCaveatName(), Context: c.GetContext()}
	}
	z.OptionalExpiresAt = r.GetOptionalExpiresAt()
	return zrelText(z)
}

// recvAll drains a server stream.
func recvAll[T any](t *testing.T, stream interface{ Recv() (T, error) }) []T {
	t.Helper()
	var out []T
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		out = append(out, m)
	}
}

// streamErr drains a server stream and returns its error (nil at EOF).
func streamErr[T any](stream interface{ Recv() (T, error) }, err error) error {
	if err != nil {
		return err
	}
	for {
		if _, err := stream.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// zreadAll reads every relationship matching filter, paging by limit.
func zreadAll(t *testing.T, ctx context.Context, c *authzed.Client, consistency *v1.Consistency, filter *v1.RelationshipFilter, limit uint32) []string {
	t.Helper()
	req := &v1.ReadRelationshipsRequest{Consistency: consistency, RelationshipFilter: filter, OptionalLimit: limit}
	var out []string
	for page := 0; ; page++ {
		if page > 10_000 {
			t.Fatal("ReadRelationships paging does not end")
		}
		stream, err := c.ReadRelationships(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		msgs := recvAll(t, stream)
		if limit > 0 && len(msgs) > int(limit) {
			t.Fatalf("page of %d relationships over the limit of %d", len(msgs), limit)
		}
		for _, m := range msgs {
			out = append(out, zrelText(m.GetRelationship()))
		}
		if limit == 0 || len(msgs) < int(limit) {
			return out
		}
		req.OptionalCursor = msgs[len(msgs)-1].GetAfterResultCursor()
	}
}

// nativeReadAll reads every relationship of a resource type via mandate.v1.
func nativeReadAll(t *testing.T, ts *testServer, consistency *pb.Consistency, filter *pb.RelationshipFilter) []string {
	t.Helper()
	stream, err := ts.rels.ReadRelationships(ts.ctx(), &pb.ReadRelationshipsRequest{Consistency: consistency, Filter: filter})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range recvAll(t, stream) {
		out = append(out, nativeRelText(m.GetRelationship()))
	}
	return out
}

// permissionshipOf maps a native decision to the authzed permissionship.
func permissionshipOf(d pb.Decision) v1.CheckPermissionResponse_Permissionship {
	switch d {
	case pb.Decision_DECISION_ALLOWED:
		return v1.CheckPermissionResponse_PERMISSIONSHIP_HAS_PERMISSION
	case pb.Decision_DECISION_CONDITIONAL:
		return v1.CheckPermissionResponse_PERMISSIONSHIP_CONDITIONAL_PERMISSION
	}
	return v1.CheckPermissionResponse_PERMISSIONSHIP_NO_PERMISSION
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	sort.Strings(s)
	return s
}
