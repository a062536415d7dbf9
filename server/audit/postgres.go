package audit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DefaultTable is the PostgreSQL table of the audit trail.
const DefaultTable = "mandate_audit"

// PostgresOptions configure a PostgresSink.
type PostgresOptions struct {
	// Table is "table" or "schema.table" (default DefaultTable), created
	// if missing.
	Table string
	// ChainID names this server's chain in the table, which holds one chain
	// per writing server (default: the host name). Two servers must not
	// share one: the sink locks it.
	ChainID string
	// Logger receives retention's reports; nil discards them.
	Logger *slog.Logger
}

var identRe = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// tableIdent validates "table" or "schema.table" and quotes it.
func tableIdent(name string) (pgx.Identifier, error) {
	if name == "" {
		name = DefaultTable
	}
	parts := strings.Split(name, ".")
	if len(parts) > 2 {
		return nil, fmt.Errorf("audit table %q: expected table or schema.table", name)
	}
	for _, p := range parts {
		if !identRe.MatchString(p) {
			return nil, fmt.Errorf("audit table %q: %q is not a lower-case identifier ([a-z_][a-z0-9_]*)", name, p)
		}
	}
	return pgx.Identifier(parts), nil
}

// PostgresSink writes the trail to a PostgreSQL table: one row per record,
// holding the record's exact line (so its hash can be checked) and indexed
// columns for queries. The table holds one chain per writing server.
type PostgresSink struct {
	pool    *pgxpool.Pool
	ownPool bool
	table   pgx.Identifier
	name    string
	chain   string
	lock    *pgxpool.Conn // holds the chain's advisory lock
	lockKey string

	seq   uint64
	hash  string
	dirty bool // a write failed: re-read the head before the next one

	// Retention (postgres_retention.go): the policy, the chain's record
	// bytes once summed, and when age was last checked.
	log          *slog.Logger
	retention    Retention
	sized        bool
	bytes        int64
	lastAgeCheck time.Time
}

// OpenPostgresSinkDSN connects to dsn and opens a sink there; Close closes
// the connection pool too.
func OpenPostgresSinkDSN(ctx context.Context, dsn string, opts PostgresOptions) (*PostgresSink, error) {
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("connecting to PostgreSQL for the audit trail: %w", err)
	}
	s, err := OpenPostgresSink(ctx, pool, opts)
	if err != nil {
		pool.Close()
		return nil, err
	}
	s.ownPool = true
	return s, nil
}

// OpenPostgresSink opens a sink over pool (which the caller keeps and
// closes after the sink), creating the table if needed and locking the
// chain.
func OpenPostgresSink(ctx context.Context, pool *pgxpool.Pool, opts PostgresOptions) (*PostgresSink, error) {
	table, err := tableIdent(opts.Table)
	if err != nil {
		return nil, err
	}
	chain := opts.ChainID
	if chain == "" {
		if chain, err = os.Hostname(); err != nil || chain == "" {
			return nil, errors.New("audit chain id: the host name is unavailable; set one")
		}
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &PostgresSink{pool: pool, table: table, name: strings.Join(table, "."), chain: chain, log: log}
	if err := s.migrate(ctx); err != nil {
		return nil, err
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("audit table %s: %w", s.name, err)
	}
	var locked bool
	key := "mandate-audit:" + s.name + ":" + chain
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtextextended($1, 0))`, key).Scan(&locked); err != nil {
		conn.Release()
		return nil, fmt.Errorf("locking audit chain %q of %s: %w", chain, s.name, err)
	}
	if !locked {
		conn.Release()
		return nil, fmt.Errorf("audit chain %q of table %s is being written by another server: give each server its own chain id", chain, s.name)
	}
	s.lock, s.lockKey = conn, key
	if err := s.readHead(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *PostgresSink) migrate(ctx context.Context) error {
	t := s.table.Sanitize()
	base := s.table[len(s.table)-1]
	idx := func(suffix string) string { return pgx.Identifier{base + "_" + suffix}.Sanitize() }
	stmts := []string{}
	if len(s.table) == 2 {
		stmts = append(stmts, `CREATE SCHEMA IF NOT EXISTS `+pgx.Identifier{s.table[0]}.Sanitize())
	}
	stmts = append(stmts,
		`CREATE TABLE IF NOT EXISTS `+t+` (
			id         bigserial PRIMARY KEY,
			chain_id   text        NOT NULL,
			seq        bigint      NOT NULL,
			time       timestamptz NOT NULL,
			operation  text        NOT NULL,
			decision   text        NOT NULL,
			request_id text        NOT NULL,
			caller     text        NOT NULL,
			resource   text        NOT NULL,
			subject    text        NOT NULL,
			principal  text        NOT NULL,
			agents     text[]      NOT NULL,
			record     text        NOT NULL,
			hash       text        NOT NULL,
			UNIQUE (chain_id, seq)
		)`,
		`CREATE INDEX IF NOT EXISTS `+idx("time_idx")+` ON `+t+` (time)`,
		`CREATE INDEX IF NOT EXISTS `+idx("principal_idx")+` ON `+t+` (principal) WHERE principal <> ''`,
		`CREATE INDEX IF NOT EXISTS `+idx("subject_idx")+` ON `+t+` (subject)`,
		`CREATE INDEX IF NOT EXISTS `+idx("resource_idx")+` ON `+t+` (resource)`,
		`CREATE INDEX IF NOT EXISTS `+idx("agents_idx")+` ON `+t+` USING gin (agents)`,
	)
	for _, q := range stmts {
		if _, err := s.pool.Exec(ctx, q); err != nil {
			return fmt.Errorf("creating audit table %s: %w", s.name, err)
		}
	}
	return nil
}

func (s *PostgresSink) readHead(ctx context.Context) error {
	var seq int64
	var hash string
	err := s.pool.QueryRow(ctx, `SELECT seq, hash FROM `+s.table.Sanitize()+` WHERE chain_id = $1 ORDER BY seq DESC LIMIT 1`, s.chain).Scan(&seq, &hash)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		s.seq, s.hash = 0, ""
	case err != nil:
		return fmt.Errorf("reading the head of audit chain %q in %s: %w", s.chain, s.name, err)
	default:
		s.seq, s.hash = uint64(seq), hash
	}
	s.dirty = false
	s.sized = false // a failed write may have committed: re-sum for retention
	return nil
}

// ChainID returns the chain this sink writes; a Log writes it in every
// record.
func (s *PostgresSink) ChainID() string { return s.chain }

// Describe implements Sink.
func (s *PostgresSink) Describe() string { return "postgres table " + s.name + " chain " + s.chain }

// Head implements Sink.
func (s *PostgresSink) Head(context.Context) (uint64, string, error) { return s.seq, s.hash, nil }

// Write implements Sink: one transaction per batch. After a failure (which
// may have committed without telling), the head is re-read and records the
// table already holds are skipped.
func (s *PostgresSink) Write(ctx context.Context, recs []Record) error {
	if s.dirty {
		if err := s.readHead(ctx); err != nil {
			return err
		}
	}
	for len(recs) > 0 && recs[0].Event.Seq <= s.seq {
		recs = recs[1:]
	}
	if len(recs) == 0 {
		return nil
	}
	rows := make([][]any, len(recs))
	var bytes int64
	for i, r := range recs {
		bytes += int64(len(r.Line) - 1)
		ev := r.Event
		agents := ev.Agents()
		if agents == nil {
			agents = []string{}
		}
		rows[i] = []any{s.chain, int64(ev.Seq), ev.Time, string(ev.Operation), string(ev.Decision), ev.RequestID, ev.Caller,
			ev.Resource, ev.Subject, ev.Principal, agents, string(r.Line[:len(r.Line)-1]), ev.Hash}
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		_, err := tx.CopyFrom(ctx, s.table, []string{"chain_id", "seq", "time", "operation", "decision", "request_id", "caller",
			"resource", "subject", "principal", "agents", "record", "hash"}, pgx.CopyFromRows(rows))
		return err
	})
	if err != nil {
		s.dirty = true
		return fmt.Errorf("writing %d audit events to %s: %w", len(recs), s.name, err)
	}
	last := recs[len(recs)-1].Event
	s.seq, s.hash = last.Seq, last.Hash
	s.bytes += bytes
	return nil
}

// Close implements Sink: it releases the chain's lock (and the pool it
// opened).
func (s *PostgresSink) Close() error {
	if s.lock != nil {
		ctx := context.Background()
		s.lock.Exec(ctx, `SELECT pg_advisory_unlock(hashtextextended($1, 0))`, s.lockKey)
		s.lock.Release()
		s.lock = nil
	}
	if s.ownPool {
		s.pool.Close()
	}
	return nil
}

// Query implements Querier. Cursors are row IDs.
func (s *PostgresSink) Query(ctx context.Context, q Query) (Page, error) {
	return QueryTable(ctx, s.pool, s.name, q)
}

// DB is what reading a table needs: a *pgxpool.Pool, a *pgx.Conn or a
// pgx.Tx.
type DB interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// QueryTable answers a query over an audit table; the indexed columns
// select, and each record is matched again once decoded.
func QueryTable(ctx context.Context, pool DB, table string, q Query) (Page, error) {
	if err := q.Validate(); err != nil {
		return Page{}, err
	}
	ident, err := tableIdent(table)
	if err != nil {
		return Page{}, err
	}
	var where []string
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	if q.After != "" {
		id, err := strconv.ParseInt(q.After, 10, 64)
		if err != nil {
			return Page{}, fmt.Errorf("after: %q is not a cursor returned by a PostgreSQL trail query", q.After)
		}
		op := ">"
		if q.Descending {
			op = "<"
		}
		where = append(where, "id "+op+" "+arg(id))
	}
	if q.Principal != "" {
		where = append(where, "principal = "+arg(q.Principal))
	}
	if q.Subject != "" {
		where = append(where, "subject = "+arg(q.Subject))
	}
	if q.Caller != "" {
		where = append(where, "caller = "+arg(q.Caller))
	}
	if q.Agent != "" {
		p := arg(q.Agent)
		where = append(where, "(agents @> ARRAY["+p+"]::text[] OR resource = "+p+")")
	}
	if q.Resource != "" {
		if strings.Contains(q.Resource, ":") {
			where = append(where, "resource = "+arg(q.Resource))
		} else {
			where = append(where, "(resource = "+arg(q.Resource)+" OR resource LIKE "+arg(q.Resource+":%")+")")
		}
	}
	if len(q.Operations) > 0 {
		ops := make([]string, len(q.Operations))
		for i, o := range q.Operations {
			ops[i] = string(o)
		}
		where = append(where, "operation = ANY("+arg(ops)+")")
	}
	if len(q.Decisions) > 0 {
		ds := make([]string, len(q.Decisions))
		for i, d := range q.Decisions {
			ds[i] = string(d)
		}
		where = append(where, "decision = ANY("+arg(ds)+")")
	}
	if !q.Since.IsZero() {
		where = append(where, "time >= "+arg(q.Since))
	}
	if !q.Until.IsZero() {
		where = append(where, "time < "+arg(q.Until))
	}
	sql := "SELECT id, record FROM " + ident.Sanitize()
	if len(where) > 0 {
		sql += " WHERE " + strings.Join(where, " AND ")
	}
	order := "ASC"
	if q.Descending {
		order = "DESC"
	}
	sql += " ORDER BY id " + order + " LIMIT " + arg(q.Limit+1)
	rows, err := pool.Query(ctx, sql, args...)
	if err != nil {
		return Page{}, fmt.Errorf("querying audit table %s: %w", table, err)
	}
	defer rows.Close()
	var p Page
	var lastID int64
	more, pageBytes := false, 0
	for rows.Next() {
		var id int64
		var record string
		if err := rows.Scan(&id, &record); err != nil {
			return Page{}, fmt.Errorf("querying audit table %s: %w", table, err)
		}
		if len(p.Events) == q.Limit || (len(p.Events) > 0 && pageBytes+len(record) > MaxPageBytes) {
			more = true
			break
		}
		ev, err := Decode([]byte(record))
		if ev == nil {
			return Page{}, fmt.Errorf("audit table %s row %d: %w", table, id, err)
		}
		lastID = id
		if q.Match(ev) {
			applyCaps(ev)
			pageBytes += len(record)
			p.Events = append(p.Events, ev)
		}
	}
	if err := rows.Err(); err != nil {
		return Page{}, fmt.Errorf("querying audit table %s: %w", table, err)
	}
	if more {
		p.Next = strconv.FormatInt(lastID, 10)
	}
	return p, nil
}

// VerifyTable checks every chain of an audit table, as Verify does a
// directory, and that each row's indexed columns agree with its record (so
// that no row was hidden from queries by editing them).
func VerifyTable(ctx context.Context, pool DB, table string) (Report, error) {
	ident, err := tableIdent(table)
	if err != nil {
		return Report{}, err
	}
	name := strings.Join(ident, ".")
	rows, err := pool.Query(ctx, `SELECT chain_id, seq, operation, decision, request_id, caller, resource, subject, principal, agents, record, hash
		FROM `+ident.Sanitize()+` ORDER BY chain_id, seq`)
	if err != nil {
		return Report{}, fmt.Errorf("reading audit table %s: %w", name, err)
	}
	defer rows.Close()
	v := newChainVerifier(false)
	for rows.Next() {
		var chain, op, decision, requestID, caller, resource, subject, principal, record, hash string
		var seq int64
		var agents []string
		if err := rows.Scan(&chain, &seq, &op, &decision, &requestID, &caller, &resource, &subject, &principal, &agents, &record, &hash); err != nil {
			return Report{}, fmt.Errorf("reading audit table %s: %w", name, err)
		}
		at := Place{Table: name, Chain: chain, Seq: uint64(seq)}
		ev, derr := Decode([]byte(record))
		if derr == nil {
			want := []string{ev.ChainID, strconv.FormatUint(ev.Seq, 10), string(ev.Operation), string(ev.Decision), ev.RequestID, ev.Caller, ev.Resource, ev.Subject, ev.Principal, ev.Hash}
			got := []string{chain, strconv.FormatInt(seq, 10), op, decision, requestID, caller, resource, subject, principal, hash}
			wantAgents := ev.Agents()
			if !slices.Equal(want, got) || !slices.Equal(wantAgents, agents) && !(len(wantAgents) == 0 && len(agents) == 0) {
				v.fail(at, "the row's indexed columns disagree with its record (edited to hide the record from queries?)")
				break
			}
		}
		if !v.check(at, ev, derr) {
			break
		}
	}
	if err := rows.Err(); err != nil {
		return Report{}, fmt.Errorf("reading audit table %s: %w", name, err)
	}
	return v.finish(), nil
}
