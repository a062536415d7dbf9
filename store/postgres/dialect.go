package postgres

import (
	"context"
	"fmt"
	"strings"

	crdbpgx "github.com/cockroachdb/cockroach-go/v2/crdb/crdbpgxv5"
	"github.com/jackc/pgx/v5"
)

// Engine names, as --datastore-engine spells them.
const (
	EnginePostgres    = "postgres"
	EngineCockroachDB = "cockroachdb"
)

// dialect holds what differs between PostgreSQL and CockroachDB; every
// other statement is shared.
type dialect struct {
	engine string
	// collate makes string comparisons bytewise. CockroachDB's strings
	// already compare bytewise and its COLLATE means something else.
	collate string
	// migrations is the directory of embedded migrations.
	migrations string
	// notify: PostgreSQL wakes watchers with LISTEN/NOTIFY; CockroachDB has
	// neither, so its watchers poll.
	notify bool
	// advisoryLock: PostgreSQL serializes migrators on an advisory lock;
	// CockroachDB relies on the migrations table's primary key alone.
	advisoryLock bool
	// copy: PostgreSQL imports new relationships with COPY; CockroachDB
	// takes the multi-row INSERT every engine supports.
	copy bool
	// noHashJoins, run in a write transaction, leaves the planner only
	// index lookups for joining a batch's keys to the stored ones.
	noHashJoins string
}

var (
	postgresDialect = dialect{engine: EnginePostgres, collate: ` COLLATE "C"`, migrations: "migrations/postgres", notify: true, advisoryLock: true, copy: true,
		noHashJoins: "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off"}
	cockroachDBDialect = dialect{engine: EngineCockroachDB, migrations: "migrations/cockroachdb"}
)

func (d dialect) crdb() bool { return d.engine == EngineCockroachDB }

// detectDialect asks the server what it is.
func detectDialect(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (dialect, error) {
	var version string
	if err := q.QueryRow(ctx, "SELECT version()").Scan(&version); err != nil {
		return dialect{}, fmt.Errorf("asking the database server its version: %w", err)
	}
	if strings.Contains(version, "CockroachDB") {
		return cockroachDBDialect, nil
	}
	return postgresDialect, nil
}

// inTx runs fn in a transaction and commits it. On CockroachDB the
// transaction is run through crdbpgx.ExecuteTx, which retries it on
// serialization conflicts, so fn must be safe to run more than once. On
// PostgreSQL writers serialize on the state row's lock instead, so no
// retry is needed.
func (d dialect) inTx(ctx context.Context, db beginner, opts pgx.TxOptions, fn func(pgx.Tx) error) error {
	if d.crdb() {
		// CockroachDB runs every transaction serializable; asking for
		// another level is at best ignored.
		opts.IsoLevel = ""
		return crdbpgx.ExecuteTx(ctx, db, opts, fn)
	}
	return pgx.BeginTxFunc(ctx, db, opts, fn)
}

// beginner is a pool or one of its connections.
type beginner interface {
	Begin(context.Context) (pgx.Tx, error)
	BeginTx(context.Context, pgx.TxOptions) (pgx.Tx, error)
}

// deleteLimited returns a statement deleting at most n rows of table
// matching cond, for garbage collection in bounded transactions.
func (d dialect) deleteLimited(table, cond string, n int) string {
	if d.crdb() {
		return fmt.Sprintf("DELETE FROM %s WHERE %s LIMIT %d", table, cond, n)
	}
	// PostgreSQL's DELETE has no LIMIT; a row's ctid stands in for a key.
	return fmt.Sprintf("DELETE FROM %s WHERE ctid = ANY(ARRAY(SELECT ctid FROM %s WHERE %s LIMIT %d))", table, table, cond, n)
}
