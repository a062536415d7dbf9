// Command mandate is Mandate's single binary: the server and the command-line
// tools (validate, ...), one subcommand each.
//
// Each subcommand lives in its own file as a constructor returning a
// *cobra.Command, registered with one line in newRootCommand. A subcommand
// reports its own problems through its RunE error; run prints that error
// once. A subcommand that has already printed what went wrong (validate's
// failures) returns an exitCode to set the exit status silently.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"

	"github.com/spf13/cobra"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// newRootCommand builds the command tree. Register each subcommand here,
// one line each.
func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "mandate",
		Short: "Mandate: authorization for AI agents that act on behalf of people",
		Long: "Mandate is a Zanzibar-style authorization engine with SpiceDB's schema language " +
			"and semantics, plus delegation chains for AI agents.",
		// Errors are printed once, by run; usage only on request.
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.AddCommand(newValidateCommand())
	root.AddCommand(newServeCommand())
	root.AddCommand(newCheckCommand())
	root.AddCommand(newLookupResourcesCommand())
	root.AddCommand(newLookupSubjectsCommand())
	root.AddCommand(newSchemaCommand())
	root.AddCommand(newRelCommand())
	root.AddCommand(newAuditCommand())
	root.AddCommand(newImportCommand())
	root.AddCommand(newExportCommand())
	root.AddCommand(newWatchCommand())
	root.AddCommand(newMigrateCommand())
	root.AddCommand(newCompactCommand())
	root.AddCommand(newTokenCommand())
	root.AddCommand(newKeyCommand())
	root.AddCommand(newApprovalsCommand())
	root.AddCommand(newTaskCommand())
	root.AddCommand(newMCPGatewayCommand())
	return root
}

// exitCode is an error carrying an exit status for a failure the command has
// already reported.
type exitCode int

func (c exitCode) Error() string { return fmt.Sprintf("exit status %d", int(c)) }

// run executes the command line and returns the process exit status.
func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	root := newRootCommand()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var code exitCode
	if errors.As(err, &code) {
		return int(code)
	}
	fmt.Fprintf(stderr, "mandate: %v\n", err)
	return 1
}
