// Package tokenapi is the mandate.v1 TokenService: a thin gRPC facade that
// converts wire shapes to server/capability's domain types and back. The
// server registers it; audit events and authentication come from the
// server's interceptors and operation core.
package tokenapi

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server/capability"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// Service implements pb.TokenServiceServer.
type Service struct {
	pb.UnimplementedTokenServiceServer
	checker *capability.Checker
	eng     capability.Engine
	records capability.RecordWriter
	token   func(store.Revision) *pb.RevisionToken
}

// New returns the service. token encodes a revision as the server's
// revision tokens do.
func New(checker *capability.Checker, eng capability.Engine, records capability.RecordWriter, token func(store.Revision) *pb.RevisionToken) *Service {
	return &Service{checker: checker, eng: eng, records: records, token: token}
}

func invalid(field string, err error) error {
	return status.Errorf(codes.InvalidArgument, "%s: %v", field, err)
}

func object(field string, o *pb.ObjectReference) (rel.Object, error) {
	if o == nil {
		return rel.Object{}, invalid(field, errors.New("required"))
	}
	obj := rel.Object{Type: o.GetObjectType(), ID: o.GetObjectId()}
	if err := rel.ValidateObject(obj); err != nil {
		return rel.Object{}, invalid(field, err)
	}
	return obj, nil
}

func ref(s string) *pb.ObjectReference {
	if s == "" {
		return nil
	}
	typ, id, _ := strings.Cut(s, ":")
	return &pb.ObjectReference{ObjectType: typ, ObjectId: id}
}

// Mint signs a token after the engine confirms the principal holds every
// right.
func (s *Service) Mint(ctx context.Context, req *pb.MintRequest) (*pb.MintResponse, error) {
	holder, err := object("holder", req.GetHolder())
	if err != nil {
		return nil, err
	}
	principal, err := object("on_behalf_of", req.GetOnBehalfOf())
	if err != nil {
		return nil, err
	}
	g := capability.Grant{Holder: holder, OnBehalfOf: principal, Task: req.GetTask(), MaxUses: int(req.GetMaxUses())}
	if req.GetTtl() == nil {
		return nil, invalid("ttl", errors.New("required"))
	}
	g.TTL = req.GetTtl().AsDuration()
	for i, r := range req.GetRights() {
		right := capability.Right{Type: r.GetResourceType(), ID: r.GetResourceId(), Permissions: r.GetPermissions()}
		if right.ID == rel.Wildcard {
			right.ID = ""
		}
		g.Rights = append(g.Rights, right)
		if len(right.Permissions) == 0 {
			return nil, invalid(fmt.Sprintf("rights[%d].permissions", i), errors.New("expected at least one permission"))
		}
	}
	if c := req.GetContext(); c != nil {
		g.Context = c.AsMap()
	}
	tok, err := s.checker.Mint(ctx, s.eng, g)
	switch {
	case errors.Is(err, capability.ErrNotHeld):
		return nil, status.Error(codes.PermissionDenied, err.Error())
	case err != nil && ctx.Err() != nil:
		return nil, status.FromContextError(ctx.Err()).Err()
	case err != nil:
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	text, err := tok.Encode()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &pb.MintResponse{Token: text, TokenId: tok.ID(), ExpiresAt: timestamppb.New(tok.Expires())}, nil
}

// Revoke stores a revocation and returns its revision.
func (s *Service) Revoke(ctx context.Context, req *pb.RevokeRequest) (*pb.RevokeResponse, error) {
	r := capability.Revocation{Reason: req.GetReason()}
	switch t := req.GetTarget().(type) {
	case *pb.RevokeRequest_Token:
		tok, err := capability.Inspect(t.Token)
		if err != nil {
			return nil, invalid("token", err)
		}
		// Once the token has expired the revocation no longer matters.
		r.By, r.Value, r.Until = capability.RevokeToken, tok.ID(), tok.Expires()
	case *pb.RevokeRequest_TokenId:
		r.By, r.Value = capability.RevokeToken, t.TokenId
	case *pb.RevokeRequest_Holder:
		o, err := object("holder", t.Holder)
		if err != nil {
			return nil, err
		}
		r.By, r.Value = capability.RevokeHolder, o.String()
	case *pb.RevokeRequest_Principal:
		o, err := object("principal", t.Principal)
		if err != nil {
			return nil, err
		}
		r.By, r.Value = capability.RevokePrincipal, o.String()
	case *pb.RevokeRequest_Task:
		r.By, r.Value = capability.RevokeTask, t.Task
	default:
		return nil, invalid("target", errors.New("expected token, token_id, holder, principal or task"))
	}
	rev, err := capability.Revoke(ctx, s.records, r)
	switch {
	case err != nil && ctx.Err() != nil:
		return nil, status.FromContextError(ctx.Err()).Err()
	case errors.Is(err, capability.ErrInvalidRevocation), errors.Is(err, store.ErrInvalidRecord):
		return nil, status.Error(codes.InvalidArgument, err.Error())
	case err != nil:
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	return &pb.RevokeResponse{RevokedAt: s.token(rev)}, nil
}

// Inspect returns a token's blocks and whether it verifies here.
func (s *Service) Inspect(_ context.Context, req *pb.InspectRequest) (*pb.InspectResponse, error) {
	tok, err := capability.Inspect(req.GetToken())
	if err != nil {
		return nil, invalid("token", err)
	}
	out := &pb.InspectResponse{}
	for i, b := range tok.Blocks {
		pbb := &pb.TokenBlock{
			Id: b.ID, ParentId: b.Parent, KeyId: b.KeyID, OnBehalfOf: ref(b.OnBehalfOf), Holder: ref(b.Holder),
			Task: b.Task, MaxUses: uint32(b.MaxUses), IssuedAt: timestamppb.New(b.IssuedAt),
		}
		if !b.Expires.IsZero() {
			pbb.ExpiresAt = timestamppb.New(b.Expires)
		}
		for _, r := range b.Rights {
			pbb.Rights = append(pbb.Rights, &pb.TokenRight{ResourceType: r.Type, ResourceId: r.ID, Permissions: r.Permissions})
		}
		if len(b.Context) > 0 {
			c, err := structpb.NewStruct(b.Context)
			if err != nil {
				return nil, status.Errorf(codes.Internal, "block %d context: %v", i, err)
			}
			pbb.Context = c
		}
		out.Blocks = append(out.Blocks, pbb)
	}
	if _, err := s.checker.Verifier.Verify(req.GetToken()); err != nil {
		var e *capability.Error
		if errors.As(err, &e) {
			out.Reason = string(e.Reason)
		}
		out.Detail = err.Error()
	} else {
		out.Verified = true
	}
	return out, nil
}

// ListRevocations lists the revocations this replica has applied.
func (s *Service) ListRevocations(context.Context, *pb.ListRevocationsRequest) (*pb.ListRevocationsResponse, error) {
	out := &pb.ListRevocationsResponse{}
	for _, r := range s.checker.Revocations.List() {
		out.Revocations = append(out.Revocations, &pb.TokenRevocation{
			By: string(r.By), Value: r.Value, Reason: r.Reason, RevokedAt: timestamppb.New(r.RevokedAt), Revision: s.token(r.Revision),
		})
	}
	return out, nil
}
