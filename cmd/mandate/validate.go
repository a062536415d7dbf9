package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mandate-authz/mandate/engine/validation"
)

func newValidateCommand() *cobra.Command {
	var consistency bool
	cmd := &cobra.Command{
		Use:   "validate FILE...",
		Short: "Run SpiceDB validation files against the engine",
		Long: `Validate loads each file's schema and relationships into an in-memory engine and
runs its assertions (assertTrue, assertFalse, assertCaveated) and its validation block of
expected relations, as zed validate does. A file may hold several YAML documents separated
by ---, each validated on its own.

Each failure is printed as FILE:LINE: what failed: expected X, got Y, followed by a summary.
The exit status is 1 when anything failed or a file is malformed.`,
		Example: "  mandate validate schema.yaml\n  mandate validate --consistency testdata/*.yaml",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return fmt.Errorf("validate: no file given (usage: %s)", cmd.UseLine())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runValidate(cmd.Context(), cmd.OutOrStdout(), args, validation.Options{Consistency: consistency})
		},
	}
	cmd.Flags().BoolVar(&consistency, "consistency", false,
		"also check that Check, LookupResources and LookupSubjects agree over every resource, permission and subject in each file")
	return cmd
}

func runValidate(ctx context.Context, out io.Writer, paths []string, opts validation.Options) error {
	total := validation.Result{}
	malformed := 0
	for _, path := range paths {
		f, err := validation.ParseFile(ctx, path)
		if err != nil {
			// A ParseError already names the file and line.
			fmt.Fprintln(out, err)
			malformed++
			continue
		}
		r := validation.Run(ctx, f, opts)
		for _, fl := range r.Failures {
			fmt.Fprintln(out, fl)
		}
		total.Documents += r.Documents
		total.Assertions += r.Assertions
		total.Validations += r.Validations
		total.Comparisons += r.Comparisons
		total.Failures = append(total.Failures, r.Failures...)
	}

	counts := []string{
		plural(len(paths), "file"),
		plural(total.Documents, "document"),
		plural(total.Assertions, "assertion"),
		plural(total.Validations, "validation key"),
	}
	if opts.Consistency {
		counts = append(counts, plural(total.Comparisons, "consistency comparison"))
	}
	outcome := "ok"
	if len(total.Failures) > 0 || malformed > 0 {
		outcome = "FAIL"
	}
	fmt.Fprintf(out, "%s: %s; %s, %s\n", outcome, strings.Join(counts, ", "),
		plural(len(total.Failures), "failure"), plural(malformed, "malformed file"))
	if outcome != "ok" {
		return exitCode(1)
	}
	return nil
}

func plural(n int, noun string) string {
	if n == 1 {
		return fmt.Sprintf("1 %s", noun)
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
