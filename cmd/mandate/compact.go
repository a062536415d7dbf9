package main

import (
	"fmt"
	"io"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/mandate-authz/mandate/store/embedded"
)

func newCompactCommand() *cobra.Command {
	var dataDir string
	cmd := &cobra.Command{
		Use:   "compact",
		Short: "Shrink the embedded datastore's file to what it holds (server stopped)",
		Long: `Compact rewrites the embedded datastore in --data-dir into a new file holding only the
pages in use, and puts it in place of the old one. The file reuses freed space but never
gives it back, so after deleting much of a store (or after its history was collected),
compacting returns the space to the file system.

Stop the server first: compact takes the directory's lock and fails if a server holds
it. A crash while compacting leaves the old file intact.`,
		Example: "  mandate compact --data-dir ./mandate-data",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runCompact(cmd.OutOrStdout(), dataDir)
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "./mandate-data", "directory of the embedded datastore")
	return cmd
}

func runCompact(out io.Writer, dataDir string) error {
	res, err := embedded.Compact(dataDir, 0)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "compacted %s: %s -> %s\n", dataDir, humanize.IBytes(uint64(res.Before)), humanize.IBytes(uint64(res.After)))
	return nil
}
