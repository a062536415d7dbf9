package server

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/mandate-authz/mandate/engine"
	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server/approval"
	"github.com/mandate-authz/mandate/server/approvalapi"
	"github.com/mandate-authz/mandate/server/op"
	"github.com/mandate-authz/mandate/store"
)

// Approvals (see server/approval and server/op/approval.go): the server
// keeps approval requests and grants as store records, follows them in a
// loop of its own beside the engine's (as it does revocations), serves
// mandate.v1 ApprovalService, and shapes agents' checks by the escalation
// rules (Config.Escalation) and the grants.

// ApprovalConfig configures approvals; zero fields take the defaults of
// server/approval.
type ApprovalConfig struct {
	// RequestTTL is how long a request stays pending (default 24h).
	RequestTTL time.Duration
	// DefaultGrant and MaxGrant: a grant's duration when the approver names
	// none (default 15m), and the longest allowed (default 8h).
	DefaultGrant, MaxGrant time.Duration
	// HistoryRetention is how long finished requests are kept (default 30
	// days; see approval.Service.Prune).
	HistoryRetention time.Duration
	// SweepInterval is how often expiries are recorded and history pruned
	// (default 30s).
	SweepInterval time.Duration
}

// Approval headers of authzed.api.v1 checks.
const (
	// ApprovalRequiredTrailer names the escalation rule on a check answered
	// NO_PERMISSION because a person's approval is required.
	ApprovalRequiredTrailer = "mandate-approval-required"
	// ApprovalEvaluationTrailer carries the evaluation id to quote when
	// filing the request.
	ApprovalEvaluationTrailer = "mandate-approval-evaluation-id"
	// ApprovalIDHeader names the approval grant a check redeems.
	ApprovalIDHeader = "mandate-approval-id"
)

// newApprovals builds the approval service over the store's records.
func (s *Server) newApprovals() error {
	rs, ok := s.st.(store.RecordStore)
	if !ok {
		return nil // a store without records serves no approvals
	}
	svc, err := approval.New(approval.Config{
		Records: rs, Core: s.core, Log: s.log,
		RequestTTL: s.cfg.Approvals.RequestTTL, DefaultGrant: s.cfg.Approvals.DefaultGrant, MaxGrant: s.cfg.Approvals.MaxGrant,
		HistoryRetention: s.cfg.Approvals.HistoryRetention,
	})
	if err != nil {
		return err
	}
	s.approvals = svc
	// The server's follower keeps the view current; checks wait for it to
	// reach their revision, and answer without grants when it does not.
	if err := s.RegisterRecordSet(svc); err != nil {
		return err
	}
	var esc op.Escalator
	if s.cfg.Escalation != nil {
		esc = s.cfg.Escalation
	}
	s.core.SetApprovals(svc, esc)
	return nil
}

// Approvals returns the approval service (nil when the store keeps no
// records): the web inbox calls it directly.
func (s *Server) Approvals() *approval.Service { return s.approvals }

// registerApprovals registers ApprovalService on the gRPC server.
func (s *Server) registerApprovals(g grpc.ServiceRegistrar) {
	if s.approvals == nil {
		return
	}
	pb.RegisterApprovalServiceServer(g, approvalapi.New(s.approvals, s.token))
}

// approvalSweepInterval is how often, by default, expired requests and
// grants are recorded as expired (they stop allowing at their time
// regardless) and finished ones past their retention are deleted.
const approvalSweepInterval = 30 * time.Second

func (c ApprovalConfig) sweepInterval() time.Duration {
	if c.SweepInterval > 0 {
		return c.SweepInterval
	}
	return approvalSweepInterval
}

// checkDecisionToProto is a check's decision, with APPROVAL_REQUIRED for a
// check an escalation rule held. A denial only the agent's own grant is
// missing for stays DENIED (as before approvals existed), carrying the
// approval context.
func checkDecisionToProto(res op.CheckResult) pb.Decision {
	if res.Decision == engine.Denied && res.Approval != nil && res.Approval.Required && res.Approval.Rule != "" {
		return pb.Decision_DECISION_APPROVAL_REQUIRED
	}
	return decisionToProto(res.Decision)
}

func approvalContextToProto(a *op.ApprovalOutcome) *pb.ApprovalContext {
	if a == nil {
		return nil
	}
	out := &pb.ApprovalContext{Rule: a.Rule, Description: a.Description, EvaluationId: a.EvaluationID, GrantId: a.GrantID}
	for _, o := range a.Chain {
		out.Chain = append(out.Chain, objectToProto(o))
	}
	if a.Required {
		out.Request = &pb.ApprovalServiceRequestRequest{
			Agent: objectToProto(a.Request.Agent), Principal: objectToProto(a.Request.Principal),
			Resource: objectToProto(a.Request.Resource), Permission: a.Request.Permission,
			Task: a.Task, Rule: a.Rule, EvaluationId: a.EvaluationID,
		}
		if a.MaxDuration > 0 {
			out.Request.Duration = durationpb.New(a.MaxDuration)
		}
	}
	return out
}

// approvalIDFromMetadata reads an authzed.api.v1 check's approval id.
func approvalIDFromMetadata(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	values := md.Get(ApprovalIDHeader)
	switch {
	case len(values) == 0:
		return "", nil
	case len(values) > 1:
		return "", status.Errorf(codes.InvalidArgument, "metadata %s: sent %d times; name one approval", ApprovalIDHeader, len(values))
	case values[0] == "" || len(values[0]) > 64:
		return "", status.Errorf(codes.InvalidArgument, "metadata %s: expected an approval id of 1 to 64 bytes", ApprovalIDHeader)
	}
	return values[0], nil
}

// setApprovalTrailer tells an authzed.api.v1 client why a check it sees as
// NO_PERMISSION was held: the rule that escalated it.
func setApprovalTrailer(ctx context.Context, a *op.ApprovalOutcome) {
	if a == nil || !a.Required {
		return
	}
	md := metadata.Pairs(ApprovalEvaluationTrailer, a.EvaluationID)
	if a.Rule != "" {
		md.Append(ApprovalRequiredTrailer, a.Rule)
	}
	grpc.SetTrailer(ctx, md)
}
