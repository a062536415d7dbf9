package main

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
)

func newSchemaCommand() *cobra.Command {
	o := &clientOptions{}
	cmd := &cobra.Command{
		Use:   "schema",
		Short: "Write, read or validate the server's schema",
	}
	addClientFlags(cmd.PersistentFlags(), o)

	write := &cobra.Command{
		Use:     "write FILE|-",
		Short:   "Replace the schema with the one in FILE (- for standard input)",
		Long:    "Write replaces the server's schema. The server refuses a schema that would leave existing relationships invalid, and names them.",
		Example: "  mandate schema write schema.zed\n  cat schema.zed | mandate schema write -",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			text, err := readInput(cmd, "FILE argument", args[0])
			if err != nil {
				return err
			}
			c, ctx, cancel, err := connect(cmd, o)
			if err != nil {
				return err
			}
			defer cancel()
			defer c.close()
			resp, err := c.schema.WriteSchema(ctx, &pb.WriteSchemaRequest{Schema: text})
			if err != nil {
				return c.callError("schema write", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "schema written\nrevision: %s\n", resp.GetWrittenAt().GetToken())
			return nil
		},
	}

	cons := &consistencyOptions{}
	read := &cobra.Command{
		Use:   "read",
		Short: "Print the server's schema",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			consistency, err := cons.consistency()
			if err != nil {
				return err
			}
			c, ctx, cancel, err := connect(cmd, o)
			if err != nil {
				return err
			}
			defer cancel()
			defer c.close()
			resp, err := c.schema.ReadSchema(ctx, &pb.ReadSchemaRequest{Consistency: consistency})
			if err != nil {
				return c.callError("schema read", err)
			}
			text := resp.GetSchemaText()
			fmt.Fprint(cmd.OutOrStdout(), text)
			if len(text) > 0 && text[len(text)-1] != '\n' {
				fmt.Fprintln(cmd.OutOrStdout())
			}
			return nil
		},
	}
	addConsistencyFlags(read.Flags(), cons)

	validate := &cobra.Command{
		Use:   "validate FILE|-",
		Short: "Check a candidate schema against the server's without writing it",
		Long: `Validate compiles the schema in FILE on the server, compares it with the live schema and
lists the relationships it would leave invalid. Nothing is written. The exit status is
0 when the server would accept the schema and 1 otherwise.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			text, err := readInput(cmd, "FILE argument", args[0])
			if err != nil {
				return err
			}
			c, ctx, cancel, err := connect(cmd, o)
			if err != nil {
				return err
			}
			defer cancel()
			defer c.close()
			resp, err := c.schema.ValidateSchema(ctx, &pb.ValidateSchemaRequest{Schema: text})
			if err != nil {
				return c.callError("schema validate", err)
			}
			out := cmd.OutOrStdout()
			if e := resp.GetError(); e != nil {
				fmt.Fprintf(out, "%s:%d:%d: %s\n", args[0], e.GetLine(), e.GetColumn(), e.GetMessage())
			}
			for _, d := range resp.GetDiffs() {
				name := d.GetName()
				if d.GetRelation() != "" {
					name += "#" + d.GetRelation()
				}
				line := fmt.Sprintf("%s %s", d.GetKind(), name)
				if d.GetDetail() != "" {
					line += ": " + d.GetDetail()
				}
				fmt.Fprintln(out, line)
			}
			for _, r := range resp.GetOrphanedRelationships() {
				fmt.Fprintf(out, "would orphan: %s\n", r)
			}
			if resp.GetOrphansTruncated() {
				fmt.Fprintln(out, "would orphan more relationships (list truncated)")
			}
			if !resp.GetValid() {
				fmt.Fprintln(out, "invalid")
				return exitCode(1)
			}
			fmt.Fprintln(out, "valid")
			return nil
		},
	}
	cmd.AddCommand(write, read, validate)
	return cmd
}

// readInput reads the file named by the argument what, or standard input
// for "-".
func readInput(cmd *cobra.Command, what, name string) (string, error) {
	var (
		b   []byte
		err error
	)
	if name == "-" {
		b, err = io.ReadAll(cmd.InOrStdin())
	} else {
		b, err = os.ReadFile(name)
	}
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	return string(b), nil
}
