package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
)

// mandate task end: revoke everything a task was given.

func newTaskCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "task", Short: "Manage agents' tasks on a server"}
	var conn clientOptions
	end := &cobra.Command{
		Use:   "end TASK",
		Short: "End a task: revoke its approval grants, pending requests and capability tokens",
		Long: `End revokes, on every replica, every approval grant and pending approval request of TASK
and every capability token restricted to it (a durable revocation by task), and prints how
many grants and requests it ended.`,
		Example: "  mandate task end T",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := callApprovals(cmd, &conn, "task end", func(ctx context.Context, api pb.ApprovalServiceClient) (*pb.EndTaskResponse, error) {
				return api.EndTask(ctx, &pb.EndTaskRequest{Task: args[0]})
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "task %s ended: %d approval grants and requests revoked, and its capability tokens\n", args[0], resp.GetEnded())
			return nil
		},
	}
	addClientFlags(end.Flags(), &conn)
	cmd.AddCommand(end)
	return cmd
}
