package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mandate-authz/mandate/server/apikey"
	"github.com/mandate-authz/mandate/store/rel"
)

func newKeyCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "key",
		Short: "Make scoped API keys for a keys file",
	}
	var scopes []string
	var person string
	generate := &cobra.Command{
		Use:   "generate NAME",
		Short: "Print a new key once, and the keys-file line that admits it",
		Long: `Generate makes a random key named NAME with the given scopes and prints it once,
followed by the entry to add under "keys:" in the keys file. The file stores only the
key's SHA-256 hash: keep the key itself where the calling service reads it; it cannot
be recovered from the file.

--person binds the key to a person (type:id): its holder approves, denies and revokes
approval requests as that person (see "mandate approvals").

Scopes: ` + scopeList() + `.`,
		Example: "  mandate key generate billing --scopes check\n  mandate key generate ci --scopes schema,write\n" +
			"  mandate key generate alice --scopes approvals --person user:alice",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if name == "" || len(name) > 64 || strings.IndexFunc(name, func(r rune) bool { return r < 0x21 || r > 0x7e || r == ',' || r == '}' || r == '{' }) >= 0 {
				return fmt.Errorf("NAME %q: expected 1 to 64 printable ASCII characters without spaces, commas or braces", name)
			}
			if len(scopes) == 0 {
				return fmt.Errorf("--scopes: expected at least one of %s", scopeList())
			}
			for _, s := range scopes {
				if _, err := apikey.ParseScope(s); err != nil {
					return fmt.Errorf("--scopes: %w", err)
				}
			}
			if person != "" {
				// Checked as the API checks objects, so the entry loads and
				// its value needs no YAML escaping.
				sub, err := rel.ParseSubject(person)
				if err != nil || sub.Relation != "" || sub.IsWildcard() {
					return fmt.Errorf("--person %q: expected a person as type:id, such as user:alice", person)
				}
				person = sub.Type + ":" + sub.ID
			}
			key, hash, err := apikey.Generate()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "key: %s\n", key)
			fmt.Fprintf(out, "# add to the keys file, under keys: (the key above is shown only now)\n")
			entry := fmt.Sprintf("name: %s, hash: %s, scopes: [%s]", name, hash, strings.Join(scopes, ", "))
			if person != "" {
				entry += fmt.Sprintf(", person: %q", person)
			}
			fmt.Fprintf(out, "  - {%s}\n", entry)
			return nil
		},
	}
	generate.Flags().StringSliceVar(&scopes, "scopes", nil, "comma-separated scopes of the key: "+scopeList())
	generate.Flags().StringVar(&person, "person", "", "the person (type:id) the key speaks for when it decides approval requests")
	cmd.AddCommand(generate)
	return cmd
}

func scopeList() string {
	names := make([]string, len(apikey.Scopes))
	for i, s := range apikey.Scopes {
		names[i] = string(s)
	}
	return strings.Join(names, ", ")
}
