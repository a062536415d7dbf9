package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/structpb"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
)

// Exit statuses of `check --fail-on-denied`; 1 stays the status of errors.
const (
	exitDenied      = 2
	exitConditional = 3
)

// questionOptions are the flags of the commands that ask about a subject.
type questionOptions struct {
	conn       clientOptions
	cons       consistencyOptions
	context    string
	onBehalfOf string
}

// question is what the SUBJECT argument and those flags put in a request.
type question struct {
	subject     *pb.SubjectReference
	context     *structpb.Struct
	onBehalfOf  *pb.ObjectReference
	consistency *pb.Consistency
}

func (o *questionOptions) parse(subjectArg string) (question, error) {
	var q question
	var err error
	if q.subject, err = parseSubject("SUBJECT argument", subjectArg); err != nil {
		return question{}, err
	}
	if q.context, err = parseContext(o.context); err != nil {
		return question{}, err
	}
	if o.onBehalfOf != "" {
		if q.onBehalfOf, err = parseObject("--on-behalf-of", o.onBehalfOf); err != nil {
			return question{}, err
		}
	}
	if q.consistency, err = o.cons.consistency(); err != nil {
		return question{}, err
	}
	return q, nil
}

type checkOptions struct {
	questionOptions
	explain         bool
	failOnDenied    bool
	capabilityToken string
	approvalID      string
}

func newCheckCommand() *cobra.Command {
	o := &checkOptions{}
	cmd := &cobra.Command{
		Use:   "check RESOURCE#PERMISSION SUBJECT",
		Short: "Ask the server whether a subject has a permission on a resource",
		Long: `Check asks the server whether SUBJECT (type:id or type:id#relation) has PERMISSION on
RESOURCE (type:id) and prints the decision (allowed, denied, or conditional with the
caveat parameters missing) and the revision it was computed at.

With --explain, a check whose subject is an agent also prints its delegation chain
(agent:b -> agent:a -> user:alice), each member's own grant and acts_for link, the
reason code of a denial, the failing member, and whether an approval could resolve it.

With --capability-token, SUBJECT must be the token's current holder and the token stands
in for its own grant and acts_for link (see mandate token); --explain then also prints
the token's id, its holders, its principal, the deciding block and the reason of a
denial. (The flag is not --token, which is the API key.)

The exit status is 0 for any answer, allowed or not, and 1 for errors. With
--fail-on-denied it is 2 for denied and 3 for conditional, for use in scripts.`,
		Example: `  mandate check doc:readme#view user:alice
  mandate check doc:readme#view agent:b --explain --fully-consistent
  mandate check doc:budget#view user:alice --context '{"amount": 10}'
  mandate check doc:readme#view agent:b --on-behalf-of user:alice --fail-on-denied
  mandate check calendar:bob#read agent:b --capability-token "$TOKEN" --explain`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runCheck(cmd, o, args)
		},
	}
	addClientFlags(cmd.Flags(), &o.conn)
	addConsistencyFlags(cmd.Flags(), &o.cons)
	f := cmd.Flags()
	f.StringVar(&o.context, "context", "", "caveat parameters as a JSON object")
	f.StringVar(&o.onBehalfOf, "on-behalf-of", "", "the principal (type:id) an agent subject acts for, when it acts for several")
	f.BoolVar(&o.explain, "explain", false, "print the delegation chain and the reason of a denial")
	f.BoolVar(&o.failOnDenied, "fail-on-denied", false, "exit 2 when denied and 3 when conditional")
	f.StringVar(&o.approvalID, "approval-id", "", "redeem this approval grant (a single-use grant allows only a check naming it)")
	f.StringVar(&o.capabilityToken, "capability-token", "", "check with this capability token (- reads it from stdin); SUBJECT must be its holder")
	return cmd
}

func runCheck(cmd *cobra.Command, o *checkOptions, args []string) error {
	req := &pb.CheckRequest{Explain: o.explain}
	var err error
	if req.Resource, req.Permission, err = parseResourcePermission("RESOURCE#PERMISSION argument", args[0]); err != nil {
		return err
	}
	q, err := o.parse(args[1])
	if err != nil {
		return err
	}
	req.Subject, req.Context, req.OnBehalfOf, req.Consistency = q.subject, q.context, q.onBehalfOf, q.consistency
	req.ApprovalId = o.approvalID
	if o.capabilityToken != "" {
		if req.CapabilityToken, err = readTokenArg(cmd, o.capabilityToken); err != nil {
			return fmt.Errorf("--capability-token: %w", err)
		}
	}
	c, ctx, cancel, err := connect(cmd, &o.conn)
	if err != nil {
		return err
	}
	defer cancel()
	defer c.close()
	resp, err := c.perm.Check(ctx, req)
	if err != nil {
		return c.callError("check", err)
	}
	out := cmd.OutOrStdout()
	printDecision(out, resp.GetDecision(), resp.GetMissingParameters())
	fmt.Fprintf(out, "revision: %s\n", resp.GetCheckedAt().GetToken())
	printApprovalContext(out, resp.GetApproval())
	if o.explain {
		if t := resp.GetToken(); t != nil {
			printTokenExplanation(out, t)
		} else {
			printDelegation(out, resp.GetDelegation())
		}
	}
	if o.failOnDenied {
		switch resp.GetDecision() {
		case pb.Decision_DECISION_DENIED, pb.Decision_DECISION_APPROVAL_REQUIRED:
			return exitCode(exitDenied)
		case pb.Decision_DECISION_CONDITIONAL:
			return exitCode(exitConditional)
		}
	}
	return nil
}

// printDecision prints "allowed", "denied" or "conditional (missing: a, b)".
func printDecision(w io.Writer, d pb.Decision, missing []string) {
	if d == pb.Decision_DECISION_CONDITIONAL {
		fmt.Fprintf(w, "conditional (missing: %s)\n", strings.Join(missing, ", "))
		return
	}
	fmt.Fprintln(w, decisionString(d))
}

// printTokenExplanation prints how a capability token decided a check.
func printTokenExplanation(w io.Writer, t *pb.TokenExplanation) {
	holders := make([]string, len(t.GetHolders()))
	for i, h := range t.GetHolders() {
		holders[i] = h.GetObjectType() + ":" + h.GetObjectId()
	}
	fmt.Fprintf(w, "token: %s (root %s)\n", t.GetTokenId(), t.GetRootId())
	fmt.Fprintf(w, "holders: %s\n", strings.Join(holders, " -> "))
	fmt.Fprintf(w, "principal: %s:%s\n", t.GetPrincipal().GetObjectType(), t.GetPrincipal().GetObjectId())
	if t.GetTask() != "" {
		fmt.Fprintf(w, "task: %s\n", t.GetTask())
	}
	fmt.Fprintf(w, "block: %d\n", t.GetBlock())
	if t.GetReason() != "" {
		fmt.Fprintf(w, "reason: %s\n", t.GetReason())
	}
	if t.GetDetail() != "" {
		fmt.Fprintf(w, "detail: %s\n", t.GetDetail())
	}
}

// printDelegation prints a delegation explanation, or says there is none
// (the subject is not an agent).
func printDelegation(w io.Writer, d *pb.DelegationExplanation) {
	if d == nil {
		fmt.Fprintln(w, "delegation: none (the subject is not an agent)")
		return
	}
	names := make([]string, len(d.GetChain()))
	for i, e := range d.GetChain() {
		names[i] = objectString(e.GetSubject())
	}
	fmt.Fprintf(w, "chain: %s\n", strings.Join(names, " -> "))
	for i, e := range d.GetChain() {
		link := decisionString(e.GetLink())
		if i == len(d.GetChain())-1 {
			link = "- (principal)"
		}
		line := fmt.Sprintf("  %s: grant=%s link=%s", names[i], decisionString(e.GetGrant()), link)
		if len(e.GetMissingParameters()) > 0 {
			line += " missing=" + strings.Join(e.GetMissingParameters(), ",")
		}
		fmt.Fprintln(w, line)
	}
	if d.GetReason() != "" {
		fmt.Fprintf(w, "reason: %s\n", d.GetReason())
	}
	if i := int(d.GetFailedAt()); i >= 0 && i < len(names) && d.GetReason() != "" {
		fmt.Fprintf(w, "failed at: %s (chain element %d)\n", names[i], i)
	}
	if d.GetResolvableByApproval() {
		fmt.Fprintln(w, "resolvable by approval: yes")
	}
}

type lookupOptions struct {
	questionOptions
	relation string
}

func newLookupResourcesCommand() *cobra.Command {
	o := &lookupOptions{}
	var capTok string
	cmd := &cobra.Command{
		Use:   "lookup-resources TYPE#PERMISSION SUBJECT",
		Short: "List the resources of a type on which a subject has a permission",
		Long: `Lookup-resources prints, one a line, the IDs of the resources of TYPE on which SUBJECT
has PERMISSION; a conditional result is followed by the caveat parameters it lacks. With
--capability-token, SUBJECT must be the token's holder: the resources listed are those the
token's rights cover that its principal holds now.`,
		Example: "  mandate lookup-resources doc#view user:alice\n  mandate lookup-resources calendar#read agent:b --capability-token \"$TOKEN\"",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			typ, perm, ok := strings.Cut(args[0], "#")
			if !ok || typ == "" || perm == "" || strings.Contains(typ, ":") {
				return fmt.Errorf("TYPE#PERMISSION argument %q: expected a type and a permission such as doc#view", args[0])
			}
			q, err := o.parse(args[1])
			if err != nil {
				return err
			}
			req := &pb.LookupResourcesRequest{ResourceObjectType: typ, Permission: perm,
				Subject: q.subject, Context: q.context, OnBehalfOf: q.onBehalfOf, Consistency: q.consistency}
			if capTok != "" {
				if req.CapabilityToken, err = readTokenArg(cmd, capTok); err != nil {
					return fmt.Errorf("--capability-token: %w", err)
				}
			}
			c, ctx, cancel, err := connect(cmd, &o.conn)
			if err != nil {
				return err
			}
			defer cancel()
			defer c.close()
			stream, err := c.perm.LookupResources(ctx, req)
			if err != nil {
				return c.callError("lookup-resources", err)
			}
			out := cmd.OutOrStdout()
			for {
				r, err := stream.Recv()
				if err == io.EOF {
					return nil
				}
				if err != nil {
					return c.callError("lookup-resources", err)
				}
				printLookupLine(out, typ+":"+r.GetResourceObjectId(), r.GetDecision(), r.GetMissingParameters())
			}
		},
	}
	addClientFlags(cmd.Flags(), &o.conn)
	addConsistencyFlags(cmd.Flags(), &o.cons)
	cmd.Flags().StringVar(&o.context, "context", "", "caveat parameters as a JSON object")
	cmd.Flags().StringVar(&o.onBehalfOf, "on-behalf-of", "", "the principal (type:id) an agent subject acts for, when it acts for several")
	cmd.Flags().StringVar(&capTok, "capability-token", "", "look up with this capability token (- reads it from stdin); SUBJECT must be its holder")
	return cmd
}

func newLookupSubjectsCommand() *cobra.Command {
	o := &lookupOptions{}
	cmd := &cobra.Command{
		Use:   "lookup-subjects RESOURCE#PERMISSION SUBJECT_TYPE",
		Short: "List the subjects of a type that have a permission on a resource",
		Long: `Lookup-subjects prints, one a line, the subjects of SUBJECT_TYPE that have PERMISSION on
RESOURCE; a conditional result is followed by the caveat parameters it lacks, and a
wildcard (type:*) by the subjects it excludes.`,
		Example: "  mandate lookup-subjects doc:readme#view user",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &pb.LookupSubjectsRequest{SubjectObjectType: args[1], OptionalSubjectRelation: o.relation}
			var err error
			if req.Resource, req.Permission, err = parseResourcePermission("RESOURCE#PERMISSION argument", args[0]); err != nil {
				return err
			}
			if args[1] == "" || strings.ContainsAny(args[1], ":#") {
				return fmt.Errorf("SUBJECT_TYPE argument %q: expected a type name such as user", args[1])
			}
			if req.Context, err = parseContext(o.context); err != nil {
				return err
			}
			if req.Consistency, err = o.cons.consistency(); err != nil {
				return err
			}
			c, ctx, cancel, err := connect(cmd, &o.conn)
			if err != nil {
				return err
			}
			defer cancel()
			defer c.close()
			stream, err := c.perm.LookupSubjects(ctx, req)
			if err != nil {
				return c.callError("lookup-subjects", err)
			}
			out := cmd.OutOrStdout()
			for {
				r, err := stream.Recv()
				if err == io.EOF {
					return nil
				}
				if err != nil {
					return c.callError("lookup-subjects", err)
				}
				name := args[1] + ":" + r.GetSubjectObjectId()
				if o.relation != "" {
					name += "#" + o.relation
				}
				var excluded []string
				for _, e := range r.GetExcludedSubjects() {
					x := args[1] + ":" + e.GetSubjectObjectId()
					if e.GetDecision() == pb.Decision_DECISION_CONDITIONAL {
						x += "(conditional)"
					}
					excluded = append(excluded, x)
				}
				if len(excluded) > 0 {
					name += " except " + strings.Join(excluded, ", ")
				}
				printLookupLine(out, name, r.GetDecision(), r.GetMissingParameters())
			}
		},
	}
	addClientFlags(cmd.Flags(), &o.conn)
	addConsistencyFlags(cmd.Flags(), &o.cons)
	cmd.Flags().StringVar(&o.context, "context", "", "caveat parameters as a JSON object")
	cmd.Flags().StringVar(&o.relation, "subject-relation", "", "the subjects' relation, for usersets such as group#member")
	return cmd
}

func printLookupLine(w io.Writer, name string, d pb.Decision, missing []string) {
	if d == pb.Decision_DECISION_CONDITIONAL {
		fmt.Fprintf(w, "%s conditional (missing: %s)\n", name, strings.Join(missing, ", "))
		return
	}
	fmt.Fprintln(w, name)
}
