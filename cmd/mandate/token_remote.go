package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server/capability"
)

// The token commands that need a server: minting (the server holds the
// keys and checks that the principal holds every right) and revoking (a
// durable record every replica follows).

func newTokenMintCommand() *cobra.Command {
	var conn clientOptions
	var holder, onBehalfOf, task, contextJSON string
	var allow []string
	var ttl time.Duration
	var maxUses uint32
	cmd := &cobra.Command{
		Use:   "mint --holder AGENT --on-behalf-of PRINCIPAL --allow RIGHT... --ttl DURATION",
		Short: "Mint a capability token on the server and print it",
		Long: `Mint asks the server for a token letting HOLDER (an agent) act for PRINCIPAL with the
rights given by --allow (type:id#permission[,permission]; id * for every object of the type)
for --ttl. The server refuses a right the principal does not hold. The token is printed
alone on stdout, for scripts; the connection's preshared key is --token or MANDATE_TOKEN.`,
		Example: "  mandate token mint --holder agent:a --on-behalf-of user:bob --allow calendar:bob#read --ttl 60m --task T",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &pb.MintRequest{Task: task, MaxUses: maxUses}
			h, err := parseObjectFlag("--holder", holder)
			if err != nil {
				return err
			}
			p, err := parseObjectFlag("--on-behalf-of", onBehalfOf)
			if err != nil {
				return err
			}
			req.Holder = &pb.ObjectReference{ObjectType: h.Type, ObjectId: h.ID}
			req.OnBehalfOf = &pb.ObjectReference{ObjectType: p.Type, ObjectId: p.ID}
			if len(allow) == 0 {
				return errors.New("--allow: expected at least one right, such as calendar:bob#read")
			}
			for _, a := range allow {
				r, err := capability.ParseRight(a)
				if err != nil {
					return fmt.Errorf("--allow: %w", err)
				}
				req.Rights = append(req.Rights, &pb.TokenRight{ResourceType: r.Type, ResourceId: r.ID, Permissions: r.Permissions})
			}
			if ttl <= 0 {
				return fmt.Errorf("--ttl %v: expected a positive duration such as 60m", ttl)
			}
			req.Ttl = durationpb.New(ttl)
			if contextJSON != "" {
				s := &structpb.Struct{}
				if err := s.UnmarshalJSON([]byte(contextJSON)); err != nil {
					return fmt.Errorf("--context: expected a JSON object: %w", err)
				}
				req.Context = s
			}
			c, ctx, cancel, err := connect(cmd, &conn)
			if err != nil {
				return err
			}
			defer cancel()
			defer c.close()
			resp, err := pb.NewTokenServiceClient(c.conn).Mint(ctx, req)
			if err != nil {
				return c.callError("token mint", err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), resp.GetToken())
			return nil
		},
	}
	addClientFlags(cmd.Flags(), &conn)
	f := cmd.Flags()
	f.StringVar(&holder, "holder", "", "the agent the token is for (type:id)")
	f.StringVar(&onBehalfOf, "on-behalf-of", "", "the principal the holder acts for (type:id)")
	f.StringArrayVar(&allow, "allow", nil, "a right, type:id#permission[,permission] (repeatable)")
	f.DurationVar(&ttl, "ttl", 0, "the token's lifetime, such as 60m (at most 720h)")
	f.StringVar(&task, "task", "", "restrict the token to this task")
	f.StringVar(&contextJSON, "context", "", "caveat context for the principal's checks, as a JSON object")
	f.Uint32Var(&maxUses, "max-uses", 0, "limit the checks the token allows (0: no limit)")
	return cmd
}

func newTokenRevokeCommand() *cobra.Command {
	var conn clientOptions
	var id, holder, principal, task, reason string
	cmd := &cobra.Command{
		Use:   "revoke [TOKEN] [--id ID | --holder AGENT | --principal SUBJECT | --task TASK]",
		Short: "Revoke a token (and every token derived from it), or all of a holder's, principal's or task's",
		Long: `Revoke stores a revocation on the server and prints the revision it was written at: a
check at least as fresh as that revision is denied on every replica. Give exactly one of TOKEN
(revokes it and every token attenuated from it), --id, --holder, --principal or --task.`,
		Example: "  mandate token revoke \"$TOKEN\"\n  mandate token revoke --holder agent:a --reason leaked",
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &pb.RevokeRequest{Reason: reason}
			n := 0
			if len(args) == 1 {
				text, err := readTokenArg(cmd, args[0])
				if err != nil {
					return err
				}
				req.Target, n = &pb.RevokeRequest_Token{Token: text}, n+1
			}
			if id != "" {
				req.Target, n = &pb.RevokeRequest_TokenId{TokenId: id}, n+1
			}
			if holder != "" {
				o, err := parseObjectFlag("--holder", holder)
				if err != nil {
					return err
				}
				req.Target, n = &pb.RevokeRequest_Holder{Holder: &pb.ObjectReference{ObjectType: o.Type, ObjectId: o.ID}}, n+1
			}
			if principal != "" {
				o, err := parseObjectFlag("--principal", principal)
				if err != nil {
					return err
				}
				req.Target, n = &pb.RevokeRequest_Principal{Principal: &pb.ObjectReference{ObjectType: o.Type, ObjectId: o.ID}}, n+1
			}
			if task != "" {
				req.Target, n = &pb.RevokeRequest_Task{Task: task}, n+1
			}
			if n != 1 {
				return fmt.Errorf("token revoke: give exactly one of TOKEN, --id, --holder, --principal or --task (got %d)", n)
			}
			c, ctx, cancel, err := connect(cmd, &conn)
			if err != nil {
				return err
			}
			defer cancel()
			defer c.close()
			resp, err := pb.NewTokenServiceClient(c.conn).Revoke(ctx, req)
			if err != nil {
				return c.callError("token revoke", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "revoked at revision %s\n", resp.GetRevokedAt().GetToken())
			return nil
		},
	}
	addClientFlags(cmd.Flags(), &conn)
	f := cmd.Flags()
	f.StringVar(&id, "id", "", "revoke the token with this id (and its descendants)")
	f.StringVar(&holder, "holder", "", "revoke every token any block of which names this holder")
	f.StringVar(&principal, "principal", "", "revoke every token acting for this principal")
	f.StringVar(&task, "task", "", "revoke every token restricted to this task")
	f.StringVar(&reason, "reason", "", "why, for the audit")
	return cmd
}

func newTokenListCommand() *cobra.Command {
	var conn clientOptions
	var holder, principal, task string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list [--principal SUBJECT] [--holder AGENT] [--task TASK]",
		Short: "List the unexpired tokens the server minted (their metadata, never the tokens)",
		Long: `List prints the server's registry of minted tokens that have not expired, soonest expiry
first: one line per token with its id, holder, principal, expiry, task and rights (--json: a
JSON array). The filters combine. A token attenuated offline is listed only once a check on a
server has allowed it; until then no server has seen it.`,
		Example: "  mandate token list --principal user:bob\n  mandate token list --holder agent:a --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &pb.ListTokensRequest{Task: task}
			for _, f := range []struct {
				flag, value string
				dst         **pb.ObjectReference
			}{{"--holder", holder, &req.Holder}, {"--principal", principal, &req.Principal}} {
				if f.value == "" {
					continue
				}
				o, err := parseObjectFlag(f.flag, f.value)
				if err != nil {
					return err
				}
				*f.dst = &pb.ObjectReference{ObjectType: o.Type, ObjectId: o.ID}
			}
			c, ctx, cancel, err := connect(cmd, &conn)
			if err != nil {
				return err
			}
			defer cancel()
			defer c.close()
			resp, err := pb.NewTokenServiceClient(c.conn).ListTokens(ctx, req)
			if err != nil {
				return c.callError("token list", err)
			}
			return printTokenList(cmd.OutOrStdout(), resp.GetTokens(), asJSON)
		},
	}
	addClientFlags(cmd.Flags(), &conn)
	f := cmd.Flags()
	f.StringVar(&holder, "holder", "", "only tokens held by this agent (type:id)")
	f.StringVar(&principal, "principal", "", "only tokens acting for this principal (type:id)")
	f.StringVar(&task, "task", "", "only tokens restricted to this task")
	f.BoolVar(&asJSON, "json", false, "print a JSON array")
	return cmd
}

// listedToken is one line of `mandate token list --json`.
type listedToken struct {
	ID        string    `json:"id"`
	Parent    string    `json:"parent,omitempty"`
	Holder    string    `json:"holder"`
	Principal string    `json:"principal"`
	Expires   time.Time `json:"expires"`
	Task      string    `json:"task,omitempty"`
	Rights    []string  `json:"rights"`
	MaxUses   uint32    `json:"max_uses,omitempty"`
}

func printTokenList(w io.Writer, tokens []*pb.MintedToken, asJSON bool) error {
	out := make([]listedToken, len(tokens))
	for i, t := range tokens {
		l := listedToken{ID: t.GetTokenId(), Parent: t.GetParentId(), Task: t.GetTask(), MaxUses: t.GetMaxUses(),
			Holder:    t.GetHolder().GetObjectType() + ":" + t.GetHolder().GetObjectId(),
			Principal: t.GetOnBehalfOf().GetObjectType() + ":" + t.GetOnBehalfOf().GetObjectId(),
			Expires:   t.GetExpiresAt().AsTime().UTC()}
		for _, r := range t.GetRights() {
			l.Rights = append(l.Rights, capability.Right{Type: r.GetResourceType(), ID: r.GetResourceId(), Permissions: r.GetPermissions()}.String())
		}
		out[i] = l
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tHOLDER\tPRINCIPAL\tEXPIRES\tTASK\tRIGHTS")
	for _, l := range out {
		task := l.Task
		if task == "" {
			task = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", l.ID, l.Holder, l.Principal, l.Expires.Format(time.RFC3339), task, strings.Join(l.Rights, " "))
	}
	return tw.Flush()
}
