package server

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server/audit"
	"github.com/mandate-authz/mandate/server/op"
)

type auditService struct {
	pb.UnimplementedAuditServiceServer
	s *Server
}

func (x *auditService) Query(ctx context.Context, req *pb.AuditServiceQueryRequest) (*pb.AuditServiceQueryResponse, error) {
	q := audit.Query{
		Agent: req.GetAgent(), Principal: req.GetPrincipal(), Subject: req.GetSubject(),
		Resource: req.GetResource(), Caller: req.GetCaller(),
		Limit: int(req.GetLimit()), After: req.GetOptionalCursor().GetToken(), Descending: req.GetNewestFirst(),
	}
	if req.GetLimit() > audit.MaxLimit {
		return nil, invalid("limit", "%d is over the maximum of %d", req.GetLimit(), audit.MaxLimit)
	}
	for _, op := range req.GetOperations() {
		q.Operations = append(q.Operations, audit.Operation(op))
	}
	for _, d := range req.GetDecisions() {
		q.Decisions = append(q.Decisions, audit.Decision(d))
	}
	if ts := req.GetSince(); ts != nil {
		if err := ts.CheckValid(); err != nil {
			return nil, invalid("since", "%v", err)
		}
		q.Since = ts.AsTime()
	}
	if ts := req.GetUntil(); ts != nil {
		if err := ts.CheckValid(); err != nil {
			return nil, invalid("until", "%v", err)
		}
		q.Until = ts.AsTime()
	}
	if err := q.Validate(); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	page, err := x.s.core.QueryAudit(ctx, op.AuditQueryRequest{Query: q})
	if err != nil {
		return nil, err
	}
	out := &pb.AuditServiceQueryResponse{Events: make([]*pb.AuditEvent, len(page.Events))}
	for i, ev := range page.Events {
		if out.Events[i], err = auditEventToProto(ev); err != nil {
			return nil, err
		}
	}
	if page.Next != "" {
		out.NextCursor = &pb.Cursor{Token: page.Next}
	}
	return out, nil
}

func auditEventToProto(ev *audit.Event) (*pb.AuditEvent, error) {
	out := &pb.AuditEvent{
		Seq: ev.Seq, ChainId: ev.ChainID, Time: timestamppb.New(ev.Time),
		RequestId: ev.RequestID, Caller: ev.Caller, Source: ev.Source, Transport: ev.Transport,
		Operation: string(ev.Operation), Resource: ev.Resource, Permission: ev.Permission,
		Subject: ev.Subject, SubjectKind: string(ev.SubjectKind), OnBehalfOf: ev.OnBehalfOf, Principal: ev.Principal,
		Decision: string(ev.Decision), Reason: ev.Reason, MissingParameters: ev.Missing,
		ResolvableByApproval: ev.ResolvableByApproval, Code: ev.Code, Error: ev.Error,
		Revision: ev.Revision, Update: ev.Update, Caveat: ev.Caveat, Count: ev.Count, Detail: ev.Detail,
		PrevHash: ev.PrevHash, Hash: ev.Hash,
	}
	if ev.ExpiresAt != nil {
		out.ExpiresAt = timestamppb.New(*ev.ExpiresAt)
	}
	if len(ev.Context) > 0 {
		c, err := structpb.NewStruct(ev.Context)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "audit record seq %d: context: %v", ev.Seq, err)
		}
		out.Context = c
	}
	for _, l := range ev.Chain {
		out.Chain = append(out.Chain, &pb.AuditChainLink{
			Subject: l.Subject, Grant: string(l.Grant), Link: string(l.Link), MissingParameters: l.Missing, Failed: l.Failed,
		})
	}
	return out, nil
}
