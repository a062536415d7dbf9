package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
)

// mandate approvals: file, read, decide and watch approval requests on a
// server (mandate.v1 ApprovalService). Deciding needs a scoped API key
// bound to a person (keys file field "person").

func newApprovalsCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "approvals",
		Short: "File, list, decide and watch approval requests on a server",
		Long: `An agent check that an escalation rule holds, or that only the agent's own grant is
missing for, is answered approval_required (mandate check prints the rule and what to
file). The agent files a request (approvals request); a person approves or denies it
(approvals approve|deny) with an API key bound to them (keys file field "person"); the
agent's retry then passes while the grant lasts (a single-use grant: a check naming it
with --approval-id, once).`,
	}
	cmd.AddCommand(newApprovalsRequestCommand(), newApprovalsListCommand(), newApprovalsShowCommand(),
		newApprovalsDecideCommand("approve"), newApprovalsDecideCommand("deny"), newApprovalsRevokeCommand(),
		newApprovalsWatchCommand())
	return cmd
}

func objectRef(flag, s string) (*pb.ObjectReference, error) {
	o, err := parseObjectFlag(flag, s)
	if err != nil {
		return nil, err
	}
	return &pb.ObjectReference{ObjectType: o.Type, ObjectId: o.ID}, nil
}

func refString(o *pb.ObjectReference) string {
	if o == nil {
		return ""
	}
	return o.GetObjectType() + ":" + o.GetObjectId()
}

func approvalStatusString(s pb.ApprovalStatus) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "APPROVAL_STATUS_"))
}

// printApprovalLine prints one request on one line: id, status, agent,
// principal, what, task, rule.
func printApprovalLine(w io.Writer, a *pb.Approval) {
	line := fmt.Sprintf("%s %s %s for %s: %s#%s", a.GetId(), approvalStatusString(a.GetStatus()), refString(a.GetAgent()), refString(a.GetPrincipal()), refString(a.GetResource()), a.GetPermission())
	if a.GetTask() != "" {
		line += " task=" + a.GetTask()
	}
	if a.GetRule() != "" {
		line += " rule=" + a.GetRule()
	}
	fmt.Fprintln(w, line)
}

func printApproval(w io.Writer, a *pb.Approval) {
	chain := make([]string, len(a.GetChain()))
	for i, o := range a.GetChain() {
		chain[i] = refString(o)
	}
	fmt.Fprintf(w, "id: %s\nstatus: %s\nagent: %s\nprincipal: %s\nchain: %s\nresource: %s\npermission: %s\n",
		a.GetId(), approvalStatusString(a.GetStatus()), refString(a.GetAgent()), refString(a.GetPrincipal()), strings.Join(chain, " -> "), refString(a.GetResource()), a.GetPermission())
	opt := func(k, v string) {
		if v != "" {
			fmt.Fprintf(w, "%s: %s\n", k, v)
		}
	}
	opt("task", a.GetTask())
	opt("reason", a.GetReason())
	opt("rule", a.GetRule())
	opt("evaluation_id", a.GetEvaluationId())
	if a.GetDuration() != nil {
		opt("requested_duration", a.GetDuration().AsDuration().String())
	}
	opt("created", a.GetCreatedAt().AsTime().Format(time.RFC3339))
	opt("expires", a.GetExpiresAt().AsTime().Format(time.RFC3339))
	opt("decider", refString(a.GetDecider()))
	opt("note", a.GetNote())
	if a.GetGrantExpiresAt() != nil {
		opt("grant_expires", a.GetGrantExpiresAt().AsTime().Format(time.RFC3339))
	}
	if a.GetSingleUse() {
		opt("single_use", "true")
	}
	if a.GetRedeemedAt() != nil {
		opt("redeemed", a.GetRedeemedAt().AsTime().Format(time.RFC3339))
	}
}

func newApprovalsRequestCommand() *cobra.Command {
	var conn clientOptions
	var onBehalfOf, task, reason, rule, evaluation string
	var duration time.Duration
	cmd := &cobra.Command{
		Use:   "request RESOURCE#PERMISSION AGENT --on-behalf-of PRINCIPAL",
		Short: "File an approval request for an agent's check and print its id",
		Long: `Request files an approval request: AGENT asks PRINCIPAL (the person it acts for) for
PERMISSION on RESOURCE. The server checks that a grant would help (the check is allowed but
held by a rule, or denied only for the agent's own grant) and records the chain it resolved.
The request's id is printed alone on stdout, for scripts.`,
		Example: `  mandate approvals request payment:p1#pay agent:bot --on-behalf-of user:alice --task T --reason "pay the invoice"`,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			res, perm, err := parseResourcePermission("RESOURCE#PERMISSION argument", args[0])
			if err != nil {
				return err
			}
			agent, err := objectRef("AGENT argument", args[1])
			if err != nil {
				return err
			}
			principal, err := objectRef("--on-behalf-of", onBehalfOf)
			if err != nil {
				return err
			}
			req := &pb.ApprovalServiceRequestRequest{Agent: agent, Principal: principal, Resource: res, Permission: perm,
				Task: task, Reason: reason, Rule: rule, EvaluationId: evaluation}
			if duration < 0 {
				return fmt.Errorf("--duration %v: expected a positive duration", duration)
			}
			if duration > 0 {
				req.Duration = durationpb.New(duration)
			}
			resp, err := callApprovals(cmd, &conn, "approvals request", func(ctx context.Context, api pb.ApprovalServiceClient) (*pb.ApprovalServiceRequestResponse, error) {
				return api.Request(ctx, req)
			})
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), resp.GetApproval().GetId())
			return nil
		},
	}
	addClientFlags(cmd.Flags(), &conn)
	f := cmd.Flags()
	f.StringVar(&onBehalfOf, "on-behalf-of", "", "the principal the agent acts for (type:id)")
	f.StringVar(&task, "task", "", "the task the request is for (mandate task end revokes its grants)")
	f.StringVar(&reason, "reason", "", "the agent's reason, shown to the person")
	f.StringVar(&rule, "rule", "", "the rule the check named (the server records the rule in force)")
	f.StringVar(&evaluation, "evaluation-id", "", "the evaluation id the check returned")
	f.DurationVar(&duration, "duration", 0, "the grant duration asked for (0: the server's default)")
	return cmd
}

func addFilterFlags(cmd *cobra.Command, principal, approver, agent, status, task *string) {
	f := cmd.Flags()
	f.StringVar(principal, "principal", "", "only requests for this principal (type:id)")
	f.StringVar(approver, "approver", "", "only requests this person may decide (type:id)")
	f.StringVar(agent, "agent", "", "only this agent's requests (type:id)")
	f.StringVar(status, "status", "", "only requests in this status: pending, approved, denied, expired, redeemed or revoked")
	f.StringVar(task, "task", "", "only this task's requests")
}

func parseApprovalFilter(principal, approver, agent, status, task string) (*pb.ApprovalFilter, error) {
	f := &pb.ApprovalFilter{Task: task}
	var err error
	for _, x := range []struct {
		flag, val string
		dst       **pb.ObjectReference
	}{{"--principal", principal, &f.Principal}, {"--approver", approver, &f.Approver}, {"--agent", agent, &f.Agent}} {
		if x.val == "" {
			continue
		}
		if *x.dst, err = objectRef(x.flag, x.val); err != nil {
			return nil, err
		}
	}
	if status != "" {
		v, ok := pb.ApprovalStatus_value["APPROVAL_STATUS_"+strings.ToUpper(status)]
		if !ok || v == 0 {
			return nil, fmt.Errorf("--status %q: expected pending, approved, denied, expired, redeemed or revoked", status)
		}
		f.Status = pb.ApprovalStatus(v)
	}
	return f, nil
}

func newApprovalsListCommand() *cobra.Command {
	var conn clientOptions
	var principal, approver, agent, status, task string
	cmd := &cobra.Command{
		Use:     "list [--principal P] [--approver P] [--agent A] [--status S] [--task T]",
		Short:   "List approval requests, newest first, one a line",
		Example: "  mandate approvals list --approver user:alice --status pending",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := parseApprovalFilter(principal, approver, agent, status, task)
			if err != nil {
				return err
			}
			resp, err := callApprovals(cmd, &conn, "approvals list", func(ctx context.Context, api pb.ApprovalServiceClient) (*pb.ApprovalServiceListResponse, error) {
				return api.List(ctx, &pb.ApprovalServiceListRequest{Filter: f})
			})
			if err != nil {
				return err
			}
			for _, a := range resp.GetApprovals() {
				printApprovalLine(cmd.OutOrStdout(), a)
			}
			return nil
		},
	}
	addClientFlags(cmd.Flags(), &conn)
	addFilterFlags(cmd, &principal, &approver, &agent, &status, &task)
	return cmd
}

func newApprovalsShowCommand() *cobra.Command {
	var conn clientOptions
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "Show one approval request",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := callApprovals(cmd, &conn, "approvals show", func(ctx context.Context, api pb.ApprovalServiceClient) (*pb.ApprovalServiceGetResponse, error) {
				return api.Get(ctx, &pb.ApprovalServiceGetRequest{Id: args[0]})
			})
			if err != nil {
				return err
			}
			printApproval(cmd.OutOrStdout(), resp.GetApproval())
			return nil
		},
	}
	addClientFlags(cmd.Flags(), &conn)
	return cmd
}

func newApprovalsDecideCommand(verb string) *cobra.Command {
	var conn clientOptions
	var note string
	var duration time.Duration
	var singleUse bool
	cmd := &cobra.Command{
		Use:   verb + " ID",
		Short: map[string]string{"approve": "Approve a pending request, as the person the API key is bound to", "deny": "Deny a pending request, as the person the API key is bound to"}[verb],
		Long: `The API key (--token or MANDATE_TOKEN) must be a scoped key bound to a person (keys file
field "person: user:alice") who is the request's principal or holds the permission on the
resource now; any other caller is refused.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if duration < 0 {
				return fmt.Errorf("--duration %v: expected a positive duration", duration)
			}
			a, err := callApprovals(cmd, &conn, "approvals "+verb, func(ctx context.Context, api pb.ApprovalServiceClient) (*pb.Approval, error) {
				if verb == "deny" {
					resp, err := api.Deny(ctx, &pb.DenyRequest{Id: args[0], Note: note})
					return resp.GetApproval(), err
				}
				req := &pb.ApproveRequest{Id: args[0], SingleUse: singleUse, Note: note}
				if duration > 0 {
					req.Duration = durationpb.New(duration)
				}
				resp, err := api.Approve(ctx, req)
				return resp.GetApproval(), err
			})
			if err != nil {
				return err
			}
			printApprovalLine(cmd.OutOrStdout(), a)
			return nil
		},
	}
	addClientFlags(cmd.Flags(), &conn)
	cmd.Flags().StringVar(&note, "note", "", "a note for the agent and the audit trail")
	if verb == "approve" {
		cmd.Flags().DurationVar(&duration, "duration", 0, "how long the grant lasts (0: what the agent asked, else the server's default)")
		cmd.Flags().BoolVar(&singleUse, "single-use", false, "the grant allows one check, which must name it (--approval-id)")
	}
	return cmd
}

func newApprovalsRevokeCommand() *cobra.Command {
	var conn clientOptions
	cmd := &cobra.Command{
		Use:   "revoke ID",
		Short: "End a grant (or withdraw a pending request) early, as the person the API key is bound to",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := callApprovals(cmd, &conn, "approvals revoke", func(ctx context.Context, api pb.ApprovalServiceClient) (*pb.ApprovalServiceRevokeResponse, error) {
				return api.Revoke(ctx, &pb.ApprovalServiceRevokeRequest{Id: args[0]})
			})
			if err != nil {
				return err
			}
			printApprovalLine(cmd.OutOrStdout(), resp.GetApproval())
			return nil
		},
	}
	addClientFlags(cmd.Flags(), &conn)
	return cmd
}

func newApprovalsWatchCommand() *cobra.Command {
	var conn clientOptions
	var principal, approver, agent, status, task, until string
	cmd := &cobra.Command{
		Use:   "watch [filter flags] [--until-decided ID]",
		Short: "Print matching approval requests, then every change, one a line",
		Long: `Watch prints the requests matching the filter, then each change to one, until --timeout.
With --until-decided ID it exits once that request is no longer pending: 0 when approved,
2 otherwise (what an agent waits on before retrying its check).`,
		Example: "  mandate approvals watch --agent agent:bot --timeout 1h\n  mandate approvals watch --until-decided 3f0c... --timeout 10m",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := parseApprovalFilter(principal, approver, agent, status, task)
			if err != nil {
				return err
			}
			c, ctx, cancel, err := connect(cmd, &conn)
			if err != nil {
				return err
			}
			defer cancel()
			defer c.close()
			stream, err := pb.NewApprovalServiceClient(c.conn).Watch(ctx, &pb.ApprovalServiceWatchRequest{Filter: f})
			if err != nil {
				return c.callError("approvals watch", err)
			}
			for {
				resp, err := stream.Recv()
				if err != nil {
					if errors.Is(err, io.EOF) {
						return nil
					}
					return c.callError("approvals watch", err)
				}
				a := resp.GetApproval()
				printApprovalLine(cmd.OutOrStdout(), a)
				if until != "" && a.GetId() == until && a.GetStatus() != pb.ApprovalStatus_APPROVAL_STATUS_PENDING {
					if a.GetStatus() == pb.ApprovalStatus_APPROVAL_STATUS_APPROVED {
						return nil
					}
					return exitCode(exitDenied)
				}
			}
		},
	}
	addClientFlags(cmd.Flags(), &conn)
	addFilterFlags(cmd, &principal, &approver, &agent, &status, &task)
	cmd.Flags().StringVar(&until, "until-decided", "", "exit once this request is decided: 0 approved, 2 otherwise")
	return cmd
}

// printApprovalContext prints what a check said of approvals: the rule
// that held it and what to file, or the grant that allowed it.
func printApprovalContext(w io.Writer, a *pb.ApprovalContext) {
	switch {
	case a == nil:
	case a.GetGrantId() != "":
		fmt.Fprintf(w, "allowed by approval: %s\n", a.GetGrantId())
	case a.GetRequest() != nil:
		if a.GetRule() != "" {
			fmt.Fprintf(w, "approval required by rule: %s\n", a.GetRule())
		} else {
			fmt.Fprintln(w, "resolvable by approval: only the agent's own grant is missing")
		}
		r := a.GetRequest()
		task := ""
		if r.GetTask() != "" {
			task = " --task " + r.GetTask()
		}
		fmt.Fprintf(w, "evaluation: %s\nfile: mandate approvals request %s#%s %s --on-behalf-of %s%s --evaluation-id %s\n",
			a.GetEvaluationId(), refString(r.GetResource()), r.GetPermission(), refString(r.GetAgent()), refString(r.GetPrincipal()), task, a.GetEvaluationId())
	}
}

// callApprovals connects with conn, runs one ApprovalService call and
// words its error as the command name's.
func callApprovals[R any](cmd *cobra.Command, conn *clientOptions, name string, call func(context.Context, pb.ApprovalServiceClient) (R, error)) (R, error) {
	var zero R
	c, ctx, cancel, err := connect(cmd, conn)
	if err != nil {
		return zero, err
	}
	defer cancel()
	defer c.close()
	resp, err := call(ctx, pb.NewApprovalServiceClient(c.conn))
	if err != nil {
		return zero, c.callError(name, err)
	}
	return resp, nil
}
