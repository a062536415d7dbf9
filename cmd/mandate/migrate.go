package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/postgres"
)

// sqlStoreFlags are serve's settings for the postgres and cockroachdb
// datastores.
type sqlStoreFlags struct {
	maxOpen     int
	minOpen     int
	maxLifetime time.Duration
	gcWindow    time.Duration
	gcInterval  time.Duration
	migrate     bool
}

func addSQLStoreFlags(f *pflag.FlagSet, o *sqlStoreFlags) {
	f.IntVar(&o.maxOpen, "datastore-conn-pool-max-open", 20, "most connections open to the postgres or cockroachdb datastore (at least 2)")
	f.IntVar(&o.minOpen, "datastore-conn-pool-min-open", 0, "connections kept open to the postgres or cockroachdb datastore even when idle")
	f.DurationVar(&o.maxLifetime, "datastore-conn-max-lifetime", 30*time.Minute, "how long a datastore connection is used before it is replaced")
	f.DurationVar(&o.gcWindow, "datastore-gc-window", postgres.DefaultGCWindow, "how long the postgres or cockroachdb datastore keeps superseded history readable")
	f.DurationVar(&o.gcInterval, "datastore-gc-interval", 3*time.Minute, "how often the postgres or cockroachdb datastore collects garbage (0 disables)")
	f.BoolVar(&o.migrate, "datastore-migrate", false, "apply missing postgres or cockroachdb migrations at startup (as `mandate migrate` does)")
}

// isSQLEngine reports whether an engine name is served by store/postgres.
func isSQLEngine(name string) bool {
	return name == postgres.EnginePostgres || name == postgres.EngineCockroachDB
}

// openSQLStore opens the postgres or cockroachdb datastore. Its name for
// revision tokens is the identity stored in the database, the same for
// every replica.
func openSQLStore(ctx context.Context, engineName, uri string, o sqlStoreFlags, log *slog.Logger) (store.Store, string, error) {
	if err := checkSQLStoreFlags(engineName, uri, o); err != nil {
		return nil, "", err
	}
	st, err := postgres.Open(ctx, uri, postgres.Options{
		Engine:          engineName,
		MaxConns:        int32(min(o.maxOpen, 1<<30)),
		MinConns:        int32(min(o.minOpen, 1<<30)),
		MaxConnLifetime: o.maxLifetime,
		Migrate:         o.migrate,
		GCWindow:        o.gcWindow,
		GCInterval:      o.gcInterval,
		Logger:          log,
	})
	if err != nil {
		return nil, "", fmt.Errorf("--datastore-engine %s: %w", engineName, err)
	}
	if log != nil {
		log.Info("opened "+engineName+" datastore", "store_id", st.ID())
	}
	return st, engineName + ":" + st.ID(), nil
}

// checkSQLStoreFlags validates the flags of a postgres or cockroachdb
// datastore without connecting.
func checkSQLStoreFlags(engineName, uri string, o sqlStoreFlags) error {
	if uri == "" {
		return fmt.Errorf("--datastore-conn-uri is required by the %s datastore (e.g. postgres://user:password@host:5432/mandate?sslmode=require)", engineName)
	}
	if o.maxOpen < 2 || o.minOpen < 0 || o.minOpen > o.maxOpen {
		return fmt.Errorf("--datastore-conn-pool-min-open %d, --datastore-conn-pool-max-open %d: expected 0 <= min <= max and max at least 2", o.minOpen, o.maxOpen)
	}
	if o.maxLifetime < 0 || o.gcWindow <= 0 || o.gcInterval < 0 {
		return fmt.Errorf("--datastore-conn-max-lifetime %v, --datastore-gc-window %v, --datastore-gc-interval %v: expected a positive window and no negative duration", o.maxLifetime, o.gcWindow, o.gcInterval)
	}
	return nil
}

func newMigrateCommand() *cobra.Command {
	var engineName, uri string
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Create or upgrade the tables of a postgres or cockroachdb datastore",
		Long: `Migrate applies every schema migration the datastore at --datastore-conn-uri lacks,
each once, in its own transaction, and prints what it applied. Running it again
applies nothing; running it from several machines at once is safe. mandate serve
refuses a datastore that is not migrated unless started with --datastore-migrate.

The flags can also be set through the environment (MANDATE_DATASTORE_CONN_URI), which
keeps a password off the command line.`,
		Example: "  mandate migrate --datastore-engine postgres --datastore-conn-uri postgres://mandate@db:5432/mandate",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnv(cmd.Flags(), os.LookupEnv); err != nil {
				return err
			}
			return runMigrate(cmd.Context(), cmd.OutOrStdout(), engineName, uri)
		},
	}
	cmd.Flags().StringVar(&engineName, "datastore-engine", postgres.EnginePostgres, "postgres or cockroachdb")
	cmd.Flags().StringVar(&uri, "datastore-conn-uri", "", "connection string of the datastore (required)")
	return cmd
}

func runMigrate(ctx context.Context, out io.Writer, engineName, uri string) error {
	if !isSQLEngine(engineName) {
		return fmt.Errorf("--datastore-engine %q: expected postgres or cockroachdb (the embedded and memory datastores need no migration)", engineName)
	}
	if uri == "" {
		return fmt.Errorf("--datastore-conn-uri is required (e.g. postgres://user:password@host:5432/mandate?sslmode=require)")
	}
	cfg, err := pgxpool.ParseConfig(uri)
	if err != nil {
		return fmt.Errorf("--datastore-conn-uri: %w", err)
	}
	cfg.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connecting to the datastore: %w", err)
	}
	defer pool.Close()
	actual, err := postgres.DetectEngine(ctx, pool)
	if err != nil {
		return fmt.Errorf("connecting to the datastore: %w", err)
	}
	if actual != engineName {
		return fmt.Errorf("--datastore-engine %s, but the server at --datastore-conn-uri is %s", engineName, actual)
	}
	applied, err := postgres.Migrate(ctx, pool)
	if err != nil {
		return err
	}
	// New checks the result the way serve will.
	st, err := postgres.New(ctx, pool, postgres.Options{Engine: engineName})
	if err != nil {
		return fmt.Errorf("after migrating: %w", err)
	}
	defer st.Close()
	for _, m := range applied {
		fmt.Fprintf(out, "applied %s\n", m)
	}
	if len(applied) == 0 {
		fmt.Fprintln(out, "already up to date")
	}
	fmt.Fprintf(out, "%s datastore %s is at schema version %d\n", engineName, st.ID(), postgres.LatestVersion())
	return nil
}
