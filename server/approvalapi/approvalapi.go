// Package approvalapi is the mandate.v1 ApprovalService: a thin gRPC facade
// that converts wire shapes to server/approval's domain types and back.
// Who decides is the caller's verified person: a scoped API key bound to a
// person (keys file field "person"), read from the call's op.Identity. A
// key bound to no one may file, read and watch requests, and end tasks,
// but never approve, deny or revoke.
package approvalapi

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server/approval"
	"github.com/mandate-authz/mandate/server/op"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// Service implements pb.ApprovalServiceServer over an *approval.Service.
type Service struct {
	pb.UnimplementedApprovalServiceServer
	svc   *approval.Service
	token func(store.Revision) *pb.RevisionToken
}

// New returns the facade; token encodes a revision as the server's
// revision tokens do.
func New(svc *approval.Service, token func(store.Revision) *pb.RevisionToken) *Service {
	return &Service{svc: svc, token: token}
}

func invalid(field string, err error) error {
	return status.Errorf(codes.InvalidArgument, "%s: %v", field, err)
}

func object(field string, o *pb.ObjectReference, required bool) (*rel.Object, error) {
	if o == nil {
		if required {
			return nil, invalid(field, errors.New("required"))
		}
		return nil, nil
	}
	obj := rel.Object{Type: o.GetObjectType(), ID: o.GetObjectId()}
	if err := rel.ValidateObject(obj); err != nil {
		return nil, invalid(field, err)
	}
	return &obj, nil
}

func ref(o rel.Object) *pb.ObjectReference {
	if o.Type == "" {
		return nil
	}
	return &pb.ObjectReference{ObjectType: o.Type, ObjectId: o.ID}
}

// person is the verified person the call speaks for.
func person(ctx context.Context) (rel.Object, error) {
	id, _ := op.IdentityFrom(ctx)
	typ, oid, ok := strings.Cut(id.Person, ":")
	if !ok {
		return rel.Object{}, status.Error(codes.PermissionDenied, "only a verified person decides approval requests: call with a scoped API key bound to a person (keys file field \"person: user:alice\")")
	}
	return rel.Object{Type: typ, ID: oid}, nil
}

// fail maps the service's errors to gRPC codes.
func fail(ctx context.Context, err error) error {
	switch {
	case errors.Is(err, approval.ErrInvalid), errors.Is(err, store.ErrInvalidRecord):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, approval.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, approval.ErrNotAllowed):
		return status.Error(codes.PermissionDenied, err.Error())
	case errors.Is(err, approval.ErrNotPending):
		return status.Error(codes.FailedPrecondition, err.Error())
	case ctx.Err() != nil:
		return status.FromContextError(ctx.Err()).Err()
	}
	if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
		return err
	}
	return status.Error(codes.Unavailable, err.Error())
}

func (s *Service) wire(r approval.Request) *pb.Approval {
	out := &pb.Approval{
		Id: r.ID, Agent: ref(r.Agent), Principal: ref(r.Principal), Resource: ref(r.Resource), Permission: r.Permission,
		Task: r.Task, Reason: r.Reason, Rule: r.Rule, EvaluationId: r.EvaluationID, Status: Status(r.Status),
		Decider: ref(r.Decider), Note: r.Note, SingleUse: r.SingleUse,
		CreatedAt: timestamppb.New(r.Created), ExpiresAt: timestamppb.New(r.Expires),
	}
	for _, o := range r.Chain {
		out.Chain = append(out.Chain, ref(o))
	}
	if r.Duration > 0 {
		out.Duration = durationpb.New(r.Duration)
	}
	if !r.Decided.IsZero() {
		out.DecidedAt = timestamppb.New(r.Decided)
	}
	if !r.GrantExpires.IsZero() {
		out.GrantExpiresAt = timestamppb.New(r.GrantExpires)
	}
	if !r.Redeemed.IsZero() {
		out.RedeemedAt = timestamppb.New(r.Redeemed)
	}
	if r.Revision != 0 {
		out.WrittenAt = s.token(r.Revision)
	}
	return out
}

// Status is a status's wire form (UNSPECIFIED for one it does not know).
func Status(st approval.Status) pb.ApprovalStatus {
	for wire, status := range statuses {
		if status == st {
			return wire
		}
	}
	return pb.ApprovalStatus_APPROVAL_STATUS_UNSPECIFIED
}

// statuses maps each wire status onto the service's; Status reads it back.
var statuses = map[pb.ApprovalStatus]approval.Status{
	pb.ApprovalStatus_APPROVAL_STATUS_UNSPECIFIED: "",
	pb.ApprovalStatus_APPROVAL_STATUS_PENDING:     approval.Pending,
	pb.ApprovalStatus_APPROVAL_STATUS_APPROVED:    approval.Approved,
	pb.ApprovalStatus_APPROVAL_STATUS_DENIED:      approval.Denied,
	pb.ApprovalStatus_APPROVAL_STATUS_EXPIRED:     approval.Expired,
	pb.ApprovalStatus_APPROVAL_STATUS_REDEEMED:    approval.Redeemed,
	pb.ApprovalStatus_APPROVAL_STATUS_REVOKED:     approval.Revoked,
}

func filter(f *pb.ApprovalFilter) (approval.Filter, error) {
	var out approval.Filter
	var err error
	if out.Principal, err = object("filter.principal", f.GetPrincipal(), false); err != nil {
		return out, err
	}
	if out.Approver, err = object("filter.approver", f.GetApprover(), false); err != nil {
		return out, err
	}
	if out.Agent, err = object("filter.agent", f.GetAgent(), false); err != nil {
		return out, err
	}
	st, ok := statuses[f.GetStatus()]
	if !ok {
		return out, invalid("filter.status", fmt.Errorf("unknown status %d", f.GetStatus()))
	}
	out.Status, out.Task = st, f.GetTask()
	return out, nil
}

// Request files a request.
func (s *Service) Request(ctx context.Context, req *pb.ApprovalServiceRequestRequest) (*pb.ApprovalServiceRequestResponse, error) {
	agent, err := object("agent", req.GetAgent(), true)
	if err != nil {
		return nil, err
	}
	principal, err := object("principal", req.GetPrincipal(), true)
	if err != nil {
		return nil, err
	}
	resource, err := object("resource", req.GetResource(), true)
	if err != nil {
		return nil, err
	}
	r := approval.Request{Agent: *agent, Principal: *principal, Resource: *resource, Permission: req.GetPermission(),
		Task: req.GetTask(), Reason: req.GetReason(), Rule: req.GetRule(), EvaluationID: req.GetEvaluationId()}
	if d := req.GetDuration(); d != nil {
		r.Duration = d.AsDuration()
	}
	out, err := s.svc.File(ctx, r)
	if err != nil {
		return nil, fail(ctx, err)
	}
	return &pb.ApprovalServiceRequestResponse{Approval: s.wire(out)}, nil
}

// Get returns one request.
func (s *Service) Get(ctx context.Context, req *pb.ApprovalServiceGetRequest) (*pb.ApprovalServiceGetResponse, error) {
	r, err := s.svc.Get(ctx, req.GetId())
	if err != nil {
		return nil, fail(ctx, err)
	}
	return &pb.ApprovalServiceGetResponse{Approval: s.wire(r)}, nil
}

// List returns the matching requests.
func (s *Service) List(ctx context.Context, req *pb.ApprovalServiceListRequest) (*pb.ApprovalServiceListResponse, error) {
	f, err := filter(req.GetFilter())
	if err != nil {
		return nil, err
	}
	rs, err := s.svc.List(ctx, f)
	if err != nil {
		return nil, fail(ctx, err)
	}
	out := &pb.ApprovalServiceListResponse{}
	for _, r := range rs {
		out.Approvals = append(out.Approvals, s.wire(r))
	}
	return out, nil
}

// Approve grants a request as the calling person.
func (s *Service) Approve(ctx context.Context, req *pb.ApproveRequest) (*pb.ApproveResponse, error) {
	who, err := person(ctx)
	if err != nil {
		return nil, err
	}
	d := approval.Decision{Approver: who, SingleUse: req.GetSingleUse(), Note: req.GetNote()}
	if req.GetDuration() != nil {
		d.Duration = req.GetDuration().AsDuration()
	}
	r, err := s.svc.Approve(ctx, req.GetId(), d)
	if err != nil {
		return nil, fail(ctx, err)
	}
	return &pb.ApproveResponse{Approval: s.wire(r)}, nil
}

// Deny refuses a request as the calling person.
func (s *Service) Deny(ctx context.Context, req *pb.DenyRequest) (*pb.DenyResponse, error) {
	who, err := person(ctx)
	if err != nil {
		return nil, err
	}
	r, err := s.svc.Deny(ctx, req.GetId(), approval.Decision{Approver: who, Note: req.GetNote()})
	if err != nil {
		return nil, fail(ctx, err)
	}
	return &pb.DenyResponse{Approval: s.wire(r)}, nil
}

// Revoke ends a grant as the calling person.
func (s *Service) Revoke(ctx context.Context, req *pb.ApprovalServiceRevokeRequest) (*pb.ApprovalServiceRevokeResponse, error) {
	who, err := person(ctx)
	if err != nil {
		return nil, err
	}
	r, err := s.svc.Revoke(ctx, req.GetId(), who)
	if err != nil {
		return nil, fail(ctx, err)
	}
	return &pb.ApprovalServiceRevokeResponse{Approval: s.wire(r)}, nil
}

// EndTask revokes the task's grants and tokens. Ending a task only takes
// access away, so any caller with the approvals scope may; the audit
// names the person, or the key.
func (s *Service) EndTask(ctx context.Context, req *pb.EndTaskRequest) (*pb.EndTaskResponse, error) {
	by, err := person(ctx)
	if err != nil {
		id, _ := op.IdentityFrom(ctx)
		by = rel.Object{Type: "key", ID: id.Name}
		if id.Name == "" {
			by.ID = "anonymous"
		}
	}
	n, err := s.svc.EndTask(ctx, req.GetTask(), by)
	if err != nil {
		return nil, fail(ctx, err)
	}
	return &pb.EndTaskResponse{Ended: int32(n)}, nil
}

// Watch streams the matching requests, then their changes.
func (s *Service) Watch(req *pb.ApprovalServiceWatchRequest, stream grpc.ServerStreamingServer[pb.ApprovalServiceWatchResponse]) error {
	f, err := filter(req.GetFilter())
	if err != nil {
		return err
	}
	ctx := stream.Context()
	for r, err := range s.svc.Watch(ctx, f) {
		if err != nil {
			return fail(ctx, err)
		}
		if err := stream.Send(&pb.ApprovalServiceWatchResponse{Approval: s.wire(r)}); err != nil {
			return err
		}
	}
	return status.FromContextError(ctx.Err()).Err()
}
