package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
)

type watchOptions struct {
	conn    clientOptions
	since   string
	filters []string
}

func newWatchCommand() *cobra.Command {
	o := &watchOptions{}
	cmd := &cobra.Command{
		Use:   "watch",
		Short: "Print relationship changes as they happen, until interrupted",
		Long: `Watch streams the server's relationship changes and prints one line per update:

  REVISION_TOKEN OPERATION RELATIONSHIP

where OPERATION is TOUCH (created or replaced) or DELETE, and the relationship is in
validation-file text form; a schema change prints REVISION_TOKEN SCHEMA. Changes come
in revision order. Without --since, watching starts after the current revision; with
--since TOKEN, after that revision, so nothing between a write and the watch is missed.

--filter keeps only matching updates; repeat it to keep updates matching any. Each is
a resource type (--filter doc) or comma-separated key=value pairs as export takes them
(--filter resource_type=doc,relation=viewer).

A large revision (a big import batch) arrives in several responses; its lines print
as they come, and the resume token moves only once the whole revision has.

Watch runs until interrupted (Ctrl-C, exit status 0). When the server ends the
stream, the error says the last complete revision's token, to resume from with --since.`,
		Example: "  mandate watch\n  mandate watch --since TOKEN --filter doc --filter group",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runWatch(cmd, o)
		},
	}
	addClientFlags(cmd.Flags(), &o.conn)
	cmd.Flags().StringVar(&o.since, "since", "", "stream the changes after this revision token (default: after the current revision)")
	cmd.Flags().StringArrayVar(&o.filters, "filter", nil, "only updates matching this filter: a resource type or key=value,... (repeatable: any may match)")
	return cmd
}

func runWatch(cmd *cobra.Command, o *watchOptions) error {
	req := &pb.WatchRequest{}
	if cmd.Flags().Changed("since") {
		if strings.TrimSpace(o.since) == "" {
			return errors.New("--since: empty; expected a revision token from a write or an earlier watch")
		}
		req.OptionalStartCursor = &pb.RevisionToken{Token: strings.TrimSpace(o.since)}
	}
	for i, text := range o.filters {
		spec, err := parseFilter(fmt.Sprintf("--filter #%d", i+1), text)
		if err != nil {
			return err
		}
		req.OptionalFilters = append(req.OptionalFilters, spec.proto())
	}
	c, _, cancel, err := connect(cmd, &o.conn)
	if err != nil {
		return err
	}
	defer cancel()
	defer c.close()
	// A watch lasts until interrupted: no --timeout.
	ctx := cmd.Context()
	stream, err := c.rels.Watch(ctx, req)
	if err != nil {
		return c.callError("watch", err)
	}
	out := cmd.OutOrStdout()
	last := o.since
	for {
		resp, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil && (status.Code(err) == codes.Canceled || errors.Is(err, ctx.Err())) {
				return nil // interrupted
			}
			if errors.Is(err, io.EOF) {
				err = status.Error(codes.Unavailable, "the server ended the stream")
			}
			err = c.callError("watch", err)
			if last != "" {
				err = fmt.Errorf("%w\nresume with: mandate watch --since %s", err, last)
			}
			return err
		}
		token := resp.GetChangesThrough().GetToken()
		var b strings.Builder
		if resp.GetSchemaUpdated() {
			fmt.Fprintf(&b, "%s SCHEMA\n", token)
		}
		for _, u := range resp.GetUpdates() {
			fmt.Fprintf(&b, "%s %s %s\n", token, opName(u.GetOperation()), relationshipText(u.GetRelationship()))
		}
		if _, err := io.WriteString(out, b.String()); err != nil {
			return fmt.Errorf("writing the watch output: %w", err)
		}
		// A large revision comes in several responses: resuming from it
		// is safe only after its last.
		if !resp.GetContinues() {
			last = token
		}
	}
}

// opName renders an update's operation as TOUCH, DELETE or CREATE.
func opName(op pb.RelationshipUpdate_Operation) string {
	return strings.TrimPrefix(op.String(), "OPERATION_")
}
