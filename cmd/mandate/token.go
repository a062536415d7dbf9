package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mandate-authz/mandate/server/capability"
	"github.com/mandate-authz/mandate/store/rel"
)

func newTokenCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Work with capability tokens",
		Long: `Capability tokens are signed, time-bound, task-scoped delegation edges an agent
carries instead of the store holding them. Attenuating and inspecting a token happen
offline: they need no server and no key. Minting and revoking ask the server.`,
	}
	cmd.AddCommand(newTokenAttenuateCommand(), newTokenInspectCommand(), newTokenMintCommand(), newTokenRevokeCommand(), newTokenListCommand())
	return cmd
}

// readTokenArg returns the token argument, read from stdin when it is "-".
func readTokenArg(cmd *cobra.Command, arg string) (string, error) {
	if arg != "-" {
		return arg, nil
	}
	b, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), capability.MaxTokenLength+2))
	if err != nil {
		return "", fmt.Errorf("reading the token from stdin: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

func newTokenAttenuateCommand() *cobra.Command {
	var holder, task string
	var allow []string
	var ttl time.Duration
	var maxUses int
	cmd := &cobra.Command{
		Use:   "attenuate TOKEN",
		Short: "Narrow a token offline and print the narrower token",
		Long: `Attenuate appends a block to TOKEN that narrows it: a new holder (a sub-agent), fewer
rights (--allow type:id#permission, id * for every object of the type; each must lie within
the token's current rights), an earlier expiry (--ttl from now; a ttl beyond the token's own
expiry keeps that expiry), a task or a use limit. It never widens, needs no key, and never
contacts a server. TOKEN "-" reads the token from stdin.`,
		Example: "  mandate token attenuate \"$TOKEN\" --holder agent:b --allow calendar:bob#read --ttl 10m",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			text, err := readTokenArg(cmd, args[0])
			if err != nil {
				return err
			}
			tok, err := capability.Inspect(text)
			if err != nil {
				return fmt.Errorf("token attenuate: %w", err)
			}
			var n capability.Narrowing
			if holder != "" {
				o, err := parseObjectFlag("--holder", holder)
				if err != nil {
					return err
				}
				n.Holder = &o
			}
			for _, a := range allow {
				r, err := capability.ParseRight(a)
				if err != nil {
					return fmt.Errorf("--allow: %w", err)
				}
				n.Rights = append(n.Rights, r)
			}
			if ttl < 0 || (cmd.Flags().Changed("ttl") && ttl == 0) {
				return fmt.Errorf("--ttl %v: expected a positive duration such as 10m", ttl)
			}
			if maxUses < 0 {
				return fmt.Errorf("--max-uses %d: expected 0 (no limit) or more", maxUses)
			}
			n.TTL, n.Task, n.MaxUses = ttl, task, maxUses
			next, err := capability.Attenuate(tok, n, time.Now())
			if err != nil {
				return fmt.Errorf("token %w", err) // "token attenuate: ..."
			}
			out, err := next.Encode()
			if err != nil {
				return fmt.Errorf("token attenuate: %w", err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), out)
			return nil
		},
	}
	cmd.Flags().StringVar(&holder, "holder", "", "new holder, an agent (type:id)")
	cmd.Flags().StringArrayVar(&allow, "allow", nil, "a right to keep, type:id#permission[,permission] (repeatable)")
	cmd.Flags().DurationVar(&ttl, "ttl", 0, "expire this long from now (never later than the token)")
	cmd.Flags().StringVar(&task, "task", "", "restrict the token to this task")
	cmd.Flags().IntVar(&maxUses, "max-uses", 0, "limit the checks this block allows (0: no limit)")
	return cmd
}

func parseObjectFlag(flag, s string) (rel.Object, error) {
	typ, id, ok := strings.Cut(s, ":")
	o := rel.Object{Type: typ, ID: id}
	if !ok {
		return o, fmt.Errorf("%s %q: expected type:id", flag, s)
	}
	if err := rel.ValidateObject(o); err != nil {
		return o, fmt.Errorf("%s %q: %w", flag, s, err)
	}
	return o, nil
}

func newTokenInspectCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "inspect TOKEN",
		Short: "Print a token's blocks as JSON",
		Long: `Inspect prints TOKEN's blocks, authority block first, as JSON: each block's id and its
parent's, the key id, principal, holder, rights, expiry, task, context and use limit. It checks
the token's structure but not its signatures (that needs the server's keys), and contacts no
server. TOKEN "-" reads the token from stdin.`,
		Example: "  mandate token inspect \"$TOKEN\"",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			text, err := readTokenArg(cmd, args[0])
			if err != nil {
				return err
			}
			tok, err := capability.Inspect(text)
			if err != nil {
				return fmt.Errorf("token inspect: %w", err)
			}
			out := struct {
				ID        string             `json:"id"`
				Holder    string             `json:"holder"`
				Principal string             `json:"on_behalf_of"`
				Expires   time.Time          `json:"expires"`
				Verified  bool               `json:"verified"`
				Blocks    []capability.Block `json:"blocks"`
			}{tok.ID(), tok.Holder(), tok.Principal(), tok.Expires(), false, tok.Blocks}
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			if err := enc.Encode(out); err != nil {
				return errors.Join(errors.New("token inspect: writing JSON"), err)
			}
			return nil
		},
	}
}
