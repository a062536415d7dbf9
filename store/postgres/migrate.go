package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// migrationFS holds one directory of numbered migrations per engine,
// NNNN_name.sql, with the same versions in each.
//
//go:embed migrations
var migrationFS embed.FS

// Migration names one schema version of the database.
type Migration struct {
	Version int
	Name    string
}

func (m Migration) String() string { return fmt.Sprintf("%04d_%s", m.Version, m.Name) }

type migrationFile struct {
	Migration
	sql string
}

// ErrNotMigrated is returned by Open when the database's tables are missing
// or older than this build needs.
var ErrNotMigrated = errors.New("the database has not been migrated to this version of mandate")

// ErrNewerSchema is returned by Open when the database was migrated by a
// newer build.
var ErrNewerSchema = errors.New("the database was migrated by a newer version of mandate")

const migrationsTable = `CREATE TABLE IF NOT EXISTS mandate_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)`

func loadMigrations(d dialect) ([]migrationFile, error) {
	entries, err := fs.ReadDir(migrationFS, d.migrations)
	if err != nil {
		return nil, fmt.Errorf("reading embedded migrations: %w", err)
	}
	var out []migrationFile
	for _, e := range entries {
		base, ok := strings.CutSuffix(e.Name(), ".sql")
		num, name, ok2 := strings.Cut(base, "_")
		version, err := strconv.Atoi(num)
		if !ok || !ok2 || err != nil || version <= 0 {
			return nil, fmt.Errorf("embedded migration %q: expected NNNN_name.sql", e.Name())
		}
		text, err := fs.ReadFile(migrationFS, path.Join(d.migrations, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("reading embedded migration %s: %w", e.Name(), err)
		}
		out = append(out, migrationFile{Migration{version, name}, string(text)})
	}
	slices.SortFunc(out, func(a, b migrationFile) int { return a.Version - b.Version })
	for i, m := range out {
		if m.Version != i+1 {
			return nil, fmt.Errorf("embedded migrations: version %d missing", i+1)
		}
	}
	return out, nil
}

// Migrate brings the database reached through pool up to this build's
// schema version and returns the migrations it applied (none when it was
// already current). Each migration runs once, in its own transaction,
// recorded in mandate_migrations. It is safe to run from several processes
// at once: on PostgreSQL they queue on an advisory lock, and on any engine
// a migration's row in mandate_migrations is claimed in the transaction that
// applies it, so a second migrator skips it.
func Migrate(ctx context.Context, pool *pgxpool.Pool) ([]Migration, error) {
	d, err := detectDialect(ctx, pool)
	if err != nil {
		return nil, err
	}
	return migrate(ctx, pool, d)
}

func migrate(ctx context.Context, pool *pgxpool.Pool, d dialect) (applied []Migration, err error) {
	files, err := loadMigrations(d)
	if err != nil {
		return nil, err
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrate: connecting: %w", err)
	}
	defer conn.Release()
	if d.advisoryLock {
		// The lock is per schema, so databases holding several Mandate
		// schemas (tests) do not queue behind each other needlessly.
		const key = `hashtext('mandate-migrate:' || current_schema())`
		if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock("+key+")"); err != nil {
			return nil, fmt.Errorf("migrate: waiting for other migrations to finish: %w", err)
		}
		defer func() {
			// Unlock even when ctx is done; if that fails, close the
			// connection so the lock dies with the session instead of
			// going back to the pool.
			if _, uerr := conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock("+key+")"); uerr != nil {
				_ = conn.Conn().Close(context.WithoutCancel(ctx))
			}
		}()
	}
	if _, err := conn.Exec(ctx, migrationsTable); err != nil {
		return nil, fmt.Errorf("migrate: creating mandate_migrations: %w", err)
	}
	current, err := appliedVersion(ctx, conn)
	if err != nil {
		return nil, err
	}
	if latest := files[len(files)-1].Version; current > latest {
		return nil, fmt.Errorf("migrate: %w: it is at schema version %d, this build knows up to %d; upgrade mandate", ErrNewerSchema, current, latest)
	}
	for _, m := range files {
		if m.Version <= current {
			continue
		}
		claimed := false
		err := d.inTx(ctx, conn, pgx.TxOptions{}, func(tx pgx.Tx) error {
			claimed = false
			var v int
			err := tx.QueryRow(ctx, `INSERT INTO mandate_migrations (version, name) VALUES ($1, $2)
				ON CONFLICT (version) DO NOTHING RETURNING version`, m.Version, m.Name).Scan(&v)
			if errors.Is(err, pgx.ErrNoRows) {
				return nil // another migrator applied it
			}
			if err != nil {
				return err
			}
			claimed = true
			// No arguments: pgx sends it with the simple protocol, which
			// runs every statement of the file.
			_, err = tx.Exec(ctx, m.sql)
			return err
		})
		if err != nil {
			return applied, fmt.Errorf("migrate: applying %s: %w", m.Migration, err)
		}
		if claimed {
			applied = append(applied, m.Migration)
		}
	}
	return applied, nil
}

type queryRower interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}

// appliedVersion returns the highest migration applied, 0 when none has
// been (including when mandate_migrations does not exist).
func appliedVersion(ctx context.Context, q queryRower) (int, error) {
	var v *int
	err := q.QueryRow(ctx, "SELECT max(version) FROM mandate_migrations").Scan(&v)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" { // undefined_table
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading the database's schema version: %w", err)
	}
	if v == nil {
		return 0, nil
	}
	return *v, nil
}

// checkVersion refuses a database this build cannot use as it is.
func checkVersion(ctx context.Context, q queryRower, d dialect) error {
	files, err := loadMigrations(d)
	if err != nil {
		return err
	}
	latest := files[len(files)-1].Version
	current, err := appliedVersion(ctx, q)
	if err != nil {
		return err
	}
	switch {
	case current == 0:
		return fmt.Errorf("%w: no Mandate tables found; run `mandate migrate --datastore-engine %s --datastore-conn-uri ...` (or start serve with --datastore-migrate)", ErrNotMigrated, d.engine)
	case current < latest:
		return fmt.Errorf("%w: it is at schema version %d, this build needs %d; run `mandate migrate --datastore-engine %s --datastore-conn-uri ...` (or start serve with --datastore-migrate)", ErrNotMigrated, current, latest, d.engine)
	case current > latest:
		return fmt.Errorf("%w: it is at schema version %d, this build knows up to %d; upgrade mandate", ErrNewerSchema, current, latest)
	}
	return nil
}

// LatestVersion is the schema version this build migrates to.
func LatestVersion() int {
	files, err := loadMigrations(postgresDialect)
	if err != nil || len(files) == 0 {
		return 0
	}
	return files[len(files)-1].Version
}

// DetectEngine says whether the server behind pool is PostgreSQL
// (EnginePostgres) or CockroachDB (EngineCockroachDB).
func DetectEngine(ctx context.Context, pool *pgxpool.Pool) (string, error) {
	d, err := detectDialect(ctx, pool)
	return d.engine, err
}
