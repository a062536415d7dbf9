// Package tokenapi is the mandate.v1 TokenService: a thin gRPC facade over
// the operation core's token operations (server/op), converting wire
// shapes to server/capability's domain types and back. The server
// registers it; authentication, audit events and error codes come from the
// server's interceptors and the operation core.
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
	"github.com/mandate-authz/mandate/server/op"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// Service implements pb.TokenServiceServer, and offers the same
// operations to Go callers in the server (the web inbox lists and revokes
// an agent's tokens with Tokens and RevokeTokens).
type Service struct {
	pb.UnimplementedTokenServiceServer
	core  *op.Core
	token func(store.Revision) *pb.RevisionToken
}

// New returns the service. token encodes a revision as the server's
// revision tokens do.
func New(core *op.Core, token func(store.Revision) *pb.RevisionToken) *Service {
	return &Service{core: core, token: token}
}

// Tokens lists the registered, unexpired tokens matching f (their
// metadata; never the tokens), soonest expiry first. Audited.
func (s *Service) Tokens(ctx context.Context, f capability.MintedFilter) ([]capability.Minted, error) {
	out, _, err := s.core.ListTokens(ctx, f)
	return out, err
}

// RevokeTokens stores a revocation and returns its revision. Audited.
func (s *Service) RevokeTokens(ctx context.Context, r capability.Revocation) (store.Revision, error) {
	return s.core.RevokeTokens(ctx, r)
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

// optionalObject is "" for an absent reference, else its type:id.
func optionalObject(field string, o *pb.ObjectReference) (string, error) {
	if o == nil {
		return "", nil
	}
	obj, err := object(field, o)
	return obj.String(), err
}

func ref(s string) *pb.ObjectReference {
	if s == "" {
		return nil
	}
	typ, id, _ := strings.Cut(s, ":")
	return &pb.ObjectReference{ObjectType: typ, ObjectId: id}
}

func rightsToProto(rights []capability.Right) []*pb.TokenRight {
	out := make([]*pb.TokenRight, len(rights))
	for i, r := range rights {
		out[i] = &pb.TokenRight{ResourceType: r.Type, ResourceId: r.ID, Permissions: r.Permissions}
	}
	return out
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
	res, err := s.core.MintToken(ctx, g)
	if err != nil {
		return nil, err
	}
	return &pb.MintResponse{Token: res.Token, TokenId: res.Minted.ID, ExpiresAt: timestamppb.New(res.Minted.Expires)}, nil
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
	rev, err := s.core.RevokeTokens(ctx, r)
	if err != nil {
		return nil, err
	}
	return &pb.RevokeResponse{RevokedAt: s.token(rev)}, nil
}

// ListTokens lists registered tokens.
func (s *Service) ListTokens(ctx context.Context, req *pb.ListTokensRequest) (*pb.ListTokensResponse, error) {
	var f capability.MintedFilter
	var err error
	if f.Principal, err = optionalObject("principal", req.GetPrincipal()); err != nil {
		return nil, err
	}
	if f.Holder, err = optionalObject("holder", req.GetHolder()); err != nil {
		return nil, err
	}
	f.Task = req.GetTask()
	list, rev, err := s.core.ListTokens(ctx, f)
	if err != nil {
		return nil, err
	}
	out := &pb.ListTokensResponse{ListedAt: s.token(rev)}
	for _, m := range list {
		out.Tokens = append(out.Tokens, &pb.MintedToken{
			TokenId: m.ID, ParentId: m.Parent, RootId: m.RootID, Holder: ref(m.Holder), OnBehalfOf: ref(m.Principal),
			Rights: rightsToProto(m.Rights), ExpiresAt: timestamppb.New(m.Expires), Task: m.Task,
			MaxUses: uint32(m.MaxUses), IssuedAt: timestamppb.New(m.IssuedAt), RegisteredAt: s.token(m.Revision),
		})
	}
	return out, nil
}

// Inspect returns a token's blocks and whether it verifies here.
func (s *Service) Inspect(ctx context.Context, req *pb.InspectRequest) (*pb.InspectResponse, error) {
	res, err := s.core.InspectToken(ctx, req.GetToken())
	if err != nil {
		return nil, err
	}
	out := &pb.InspectResponse{}
	for i, b := range res.Token.Blocks {
		pbb := &pb.TokenBlock{
			Id: b.ID, ParentId: b.Parent, KeyId: b.KeyID, OnBehalfOf: ref(b.OnBehalfOf), Holder: ref(b.Holder),
			Task: b.Task, MaxUses: uint32(b.MaxUses), IssuedAt: timestamppb.New(b.IssuedAt), Rights: rightsToProto(b.Rights),
		}
		if !b.Expires.IsZero() {
			pbb.ExpiresAt = timestamppb.New(b.Expires)
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
	if res.Err != nil {
		var e *capability.Error
		if errors.As(res.Err, &e) {
			out.Reason = string(e.Reason)
		}
		out.Detail = res.Err.Error()
	} else {
		out.Verified = true
	}
	return out, nil
}

// ListRevocations lists the revocations this replica has applied.
func (s *Service) ListRevocations(ctx context.Context, _ *pb.ListRevocationsRequest) (*pb.ListRevocationsResponse, error) {
	revs, err := s.core.TokenRevocations(ctx)
	if err != nil {
		return nil, err
	}
	out := &pb.ListRevocationsResponse{}
	for _, r := range revs {
		out.Revocations = append(out.Revocations, &pb.TokenRevocation{
			By: string(r.By), Value: r.Value, Reason: r.Reason, RevokedAt: timestamppb.New(r.RevokedAt), Revision: s.token(r.Revision),
		})
	}
	return out, nil
}
