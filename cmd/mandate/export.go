package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
)

type exportOptions struct {
	conn       clientOptions
	cons       consistencyOptions
	filter     string
	batchSize  uint32
	noProgress bool
}

func newExportCommand() *cobra.Command {
	o := &exportOptions{}
	cmd := &cobra.Command{
		Use:   "export [FILE|-]",
		Short: "Write every relationship (or those matching a filter) to a file or standard output",
		Long: `Export streams the server's relationships at one revision through ExportRelationships
and writes them one a line in validation-file text form, in key order, to FILE or
standard output (also when FILE is -). The output is what mandate import reads, so

  mandate export backup.txt && mandate import --endpoint other:50051 backup.txt

copies a store's relationships. FILE is written only when the export completes.

--filter restricts the export: comma-separated key=value pairs with the keys
resource_type, resource_id, relation, subject_type, subject_id and subject_relation
(or just a resource type). The revision exported is the store's latest unless a
consistency flag says otherwise.

On a terminal a progress indicator with the rate goes to standard error. The summary
and revision token go to standard output when writing FILE, else to standard error.
--timeout does not bound an export.`,
		Example: "  mandate export rels.txt\n  mandate export --filter resource_type=doc,relation=viewer\n  mandate export --exact-token TOKEN > at-token.txt",
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			file := "" // standard output
			if len(args) == 1 && args[0] != "-" {
				file = args[0]
			}
			return runExport(cmd, o, file)
		},
	}
	addClientFlags(cmd.Flags(), &o.conn)
	addConsistencyFlags(cmd.Flags(), &o.cons)
	cmd.Flags().StringVar(&o.filter, "filter", "", "only relationships matching this filter (key=value,...; see above)")
	cmd.Flags().Uint32Var(&o.batchSize, "batch-size", 0, "relationships per response (0: the server's maximum)")
	cmd.Flags().BoolVar(&o.noProgress, "no-progress", false, "never draw the progress indicator, even on a terminal")
	return cmd
}

func runExport(cmd *cobra.Command, o *exportOptions, file string) (err error) {
	req := &pb.ExportRelationshipsRequest{OptionalBatchSize: o.batchSize}
	if o.filter != "" {
		spec, err := parseFilter("--filter", o.filter)
		if err != nil {
			return err
		}
		req.OptionalFilter = spec.proto()
	}
	if req.Consistency, err = o.cons.consistency(); err != nil {
		return err
	}

	out, summaryTo := cmd.OutOrStdout(), cmd.ErrOrStderr()
	var tmp *os.File
	if file != "" {
		// A temporary file beside FILE, renamed over it at the end, so that
		// a failed export never leaves a truncated FILE behind.
		if tmp, err = os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".export-*"); err != nil {
			return fmt.Errorf("FILE argument: %w", err)
		}
		defer func() {
			if err != nil {
				tmp.Close()
				os.Remove(tmp.Name())
			}
		}()
		out, summaryTo = tmp, cmd.OutOrStdout()
	}

	c, _, cancel, err := connect(cmd, &o.conn)
	if err != nil {
		return err
	}
	defer cancel()
	defer c.close()
	// An export lasts as long as its data: no --timeout.
	stream, err := c.rels.ExportRelationships(cmd.Context(), req)
	if err != nil {
		return c.callError("export", err)
	}
	// Not when the relationships themselves go to the same terminal: the
	// indicator would garble them.
	show := !o.noProgress && isTerminal(cmd.ErrOrStderr()) && (file != "" || !isTerminal(cmd.OutOrStdout()))
	prog := newProgress(cmd.ErrOrStderr(), show, -1, "exporting")
	defer prog.done(false)
	w := bufio.NewWriterSize(out, 1<<16)
	token := ""
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return c.callError("export", err)
		}
		for _, r := range resp.GetRelationships() {
			w.WriteString(relationshipText(r))
			w.WriteByte('\n')
		}
		token = resp.GetExportedAt().GetToken()
		prog.add(len(resp.GetRelationships()))
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("writing the export: %w", err)
	}
	if tmp != nil {
		if err := tmp.Close(); err != nil {
			return fmt.Errorf("writing %s: %w", file, err)
		}
		if err := os.Rename(tmp.Name(), file); err != nil {
			return fmt.Errorf("writing %s: %w", file, err)
		}
	}
	prog.done(true)
	fmt.Fprintln(summaryTo, prog.summary("exported"))
	if token != "" {
		fmt.Fprintf(summaryTo, "revision: %s\n", token)
	}
	return nil
}
