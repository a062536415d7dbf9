package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/mandate-authz/mandate/store"
)

// Group commit: every Write and DeleteMatching is handed to one committer
// goroutine, which runs all the writes waiting at that moment in one
// transaction under one lock of the state row, and commits them together.
// Each write keeps its own revision (consecutive, in the order the group
// ran them), its own preconditions, CREATE conflicts and limit, each
// checked against the state every earlier write of the group left, and its
// own error: a write whose check fails has queued nothing and is left out
// without touching the others. A statement the database refuses (rather
// than a lost connection) rolls the group back; the refused write is
// answered with its error and the rest run again without it, as if each
// had run alone, in order. Nobody is answered before the commit is known,
// so an acknowledged write is a committed one.
//
// On PostgreSQL a group is pipelined: BEGIN, the state row's lock, the
// writes' statements, the group's records and COMMIT travel in one round
// trip, with the revisions numbered from the head the previous group left
// (stateCache). The statement taking the lock is also a guard that fails
// the pipeline on the server when the state row says otherwise (another
// process, or a schema or records write, moved the head): PostgreSQL then
// skips every later statement of the pipeline, COMMIT included, and the
// group runs again after reading the head first. A server error always
// means that COMMIT did not run; a failure the client finds in a result
// (not a *pgconn.PgError) fails the whole group without a rerun, since
// the server may have committed it. A write whose checks need results
// (preconditions, CREATE conflicts, limits) flushes the pipeline as
// before, inside the same transaction. CockroachDB keeps one round trip
// per step, in a transaction crdbpgx can retry.

// maxGroup bounds how many waiting writes share one transaction, and
// maxGroupMutations how many mutations (and preconditions) they carry
// together; a larger write still forms a group of its own.
const (
	maxGroup          = 128
	maxGroupMutations = 20_000
)

// writeOp is one write waiting for the committer.
type writeOp struct {
	ctx context.Context
	// size is the op's mutations and preconditions, to bound a group.
	size int
	// run queues the op's statements in g, which will be revision rev
	// should run return nil. It flushes g when it needs a result to
	// decide. An error run returns that did not come out of g (a failed
	// precondition, a conflict) is the op's own failure, and run has then
	// queued nothing. run may be called again for the same op (the group
	// being retried), so it must derive what it records from g.
	run func(ctx context.Context, g *group, rev store.Revision) error
	// rev is the committed revision, set before done is sent.
	rev  store.Revision
	done chan error
}

// enqueue hands op to the committer and waits for its outcome or for ctx
// to end. A caller that stops waiting gets ctx's error, as when a single
// write's context ends during its COMMIT: the write may still commit, but
// it was never acknowledged.
func (s *Store) enqueue(ctx context.Context, op *writeOp) (store.Revision, error) {
	op.ctx = ctx
	op.done = make(chan error, 1)
	select {
	case s.writes <- op:
	case <-s.bg.Done():
		return 0, ErrClosed
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	select {
	case err := <-op.done:
		if err != nil {
			return 0, err
		}
		return op.rev, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// commitLoop is the one committer: it takes every write waiting into one
// group, so that concurrent writers share a transaction and a commit
// instead of queueing for the state row's lock one by one.
func (s *Store) commitLoop() {
	defer s.bgWG.Done()
	var carry *writeOp
	var known stateCache
	for {
		ops := make([]*writeOp, 0, 16)
		if carry != nil {
			ops, carry = append(ops, carry), nil
		} else {
			select {
			case op := <-s.writes:
				ops = append(ops, op)
			case <-s.bg.Done():
				return
			}
		}
		size := ops[0].size
	gather:
		for len(ops) < maxGroup && size < maxGroupMutations {
			select {
			case op := <-s.writes:
				if size+op.size > maxGroupMutations {
					carry = op
					break gather
				}
				ops = append(ops, op)
				size += op.size
			default:
				break gather
			}
		}
		if s.onGroup != nil {
			s.onGroup(len(ops))
		}
		s.commitGroup(ops, &known)
	}
}

// stateCache is what the committer believes the state row holds: the head
// and schema revision its last group committed, when valid. Only the
// committer goroutine touches it.
type stateCache struct {
	head, schemaRev store.Revision
	valid           bool
}

// errStateMoved is the guard's failure: the state row no longer holds what
// the committer's stateCache says, so the group runs again after reading
// it.
var errStateMoved = errors.New("the state row moved since the last group")

// commitGroup runs ops in one transaction and answers each of them.
func (s *Store) commitGroup(ops []*writeOp, known *stateCache) {
	live := ops[:0:0]
	for _, op := range ops {
		// A caller that gave up before its write started gets no write.
		if err := op.ctx.Err(); err != nil {
			op.done <- err
			continue
		}
		live = append(live, op)
	}
	// The group's statements run until the store closes or every caller
	// in it has given up (a database that stops answering then fails the
	// writes instead of hanging them), as a lone write's ran until its
	// caller's context ended.
	ctx, cancel := context.WithCancel(s.bg)
	defer cancel()
	var gone atomic.Int64
	callers := int64(len(live))
	for _, op := range live {
		stop := context.AfterFunc(op.ctx, func() {
			if gone.Add(1) == callers {
				cancel()
			}
		})
		defer stop()
	}
	uncombined := false
	for len(live) > 0 {
		failures := make([]error, len(live))
		g := &group{batch: &pgx.Batch{}, failed: -1, now: s.now(), uncombined: uncombined, noHashJoins: s.d.noHashJoins}
		var err error
		if s.d.crdb() {
			err = s.d.inTx(ctx, s.pool, writeTxOptions, func(tx pgx.Tx) error {
				*g = group{tx: tx, batch: &pgx.Batch{}, failed: -1, now: g.now, uncombined: uncombined, noHashJoins: s.d.noHashJoins}
				return s.runGroup(ctx, g, live, failures, nil)
			})
		} else {
			err = s.runPipelined(ctx, g, live, failures, known)
		}
		if errors.Is(err, errStateMoved) {
			continue
		}
		if errors.Is(err, errCombinedRefused) && !uncombined {
			uncombined = true
			continue
		}
		var refused *refusedError
		if errors.As(err, &refused) {
			live[refused.op].done <- refused.err
			live = append(live[:refused.op], live[refused.op+1:]...)
			continue
		}
		if err != nil {
			if s.closed.Load() {
				err = ErrClosed
			}
			for _, op := range live {
				op.done <- err
			}
			return
		}
		if !s.d.crdb() {
			*known = stateCache{head: g.head, schemaRev: g.schemaRev, valid: true}
		}
		wrote := false
		for i, op := range live {
			if failures[i] == nil {
				wrote = true
			}
			op.done <- failures[i]
		}
		if wrote {
			s.committed(g.head)
		}
		return
	}
}

// refusedError is a statement of op the database refused: the group rolls
// back and runs again without op.
type refusedError struct {
	op  int
	err error
}

func (e *refusedError) Error() string { return fmt.Sprintf("write %d of the group: %v", e.op, e.err) }

// runPipelined runs the group g of ops on PostgreSQL, in a transaction
// begun in its first round trip and committed in its last, and leaves the
// connection clean: rolled back after any failure, or closed.
func (s *Store) runPipelined(ctx context.Context, g *group, ops []*writeOp, failures []error, known *stateCache) (err error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		known.valid = false
		return fmt.Errorf("taking a connection: %w", err)
	}
	defer func() {
		if err != nil {
			known.valid = false
			// The transaction is still open when the pipeline failed
			// before its COMMIT; a failed rollback closes the connection,
			// and the pool drops a connection left in a transaction.
			if g.tx != nil && conn.Conn().PgConn().TxStatus() != 'I' {
				rollback(ctx, g.tx)
			}
		}
		conn.Release()
	}()
	g.conn = conn
	g.batch.BeginTx(writeTxOptions)
	return s.runGroup(ctx, g, ops, failures, known)
}

// lockGuarded takes the state row's lock and fails, on the server, when
// the row holds another head or schema revision than $1 and $2: a division
// by zero, the one way a plain statement can abort a pipeline, so that
// nothing queued behind it runs. Under read committed a row locked by
// another writer is waited for and its committed version is the one
// locked and evaluated (PostgreSQL re-evaluates the row after the wait),
// and since both numbers only grow, a version that differs from the cache
// means that the head moved.
const lockGuarded = "SELECT 1 / (head = $1 AND schema_revision = $2)::int FROM mandate_state FOR UPDATE"

// lockGroup takes the state row's lock for g and returns the head the
// group's revisions follow. Pipelined with a valid cache, the lock and the
// guard are only queued, ahead of the writes; otherwise the head is read
// (on PostgreSQL in the round trip that begins the transaction).
func (s *Store) lockGroup(ctx context.Context, g *group, known *stateCache) (store.Revision, error) {
	g.cur = -1
	const lock = "SELECT head, schema_revision FROM mandate_state FOR UPDATE"
	if g.conn != nil && known.valid {
		g.queueRow(lockGuarded, []any{int64(known.head), int64(known.schemaRev)}, func(row pgx.Row) error {
			var one int
			err := row.Scan(&one)
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && pgErr.Code == "22012" { // division_by_zero
				return errStateMoved
			}
			return err
		})
		g.schemaRev = known.schemaRev
		return known.head, nil
	}
	var head, schemaRev int64
	if g.conn != nil {
		g.queueRow(lock, nil, func(row pgx.Row) error { return row.Scan(&head, &schemaRev) })
		if err := g.flush(ctx); err != nil {
			return 0, fmt.Errorf("taking the next revision: %w", err)
		}
	} else if err := g.tx.QueryRow(ctx, lock).Scan(&head, &schemaRev); err != nil {
		return 0, fmt.Errorf("taking the next revision: %w", err)
	}
	g.schemaRev = store.Revision(schemaRev)
	return store.Revision(head), nil
}

// runGroup runs ops in g's transaction at consecutive revisions after the
// head, recording each op's own failure in failures, and then moves the
// head past the last op that succeeded, leaving it in g.head. Pipelined,
// it also commits.
func (s *Store) runGroup(ctx context.Context, g *group, ops []*writeOp, failures []error, known *stateCache) error {
	rev, err := s.lockGroup(ctx, g, known)
	if err != nil {
		return err
	}
	revs := make([]int64, 0, len(ops))
	for i, op := range ops {
		g.cur = i
		failures[i] = nil
		if err := op.run(ctx, g, rev+1); err != nil {
			if fe := (*flushError)(nil); errors.As(err, &fe) {
				return fe.resolve()
			}
			failures[i] = err
			continue
		}
		rev++
		op.rev = rev
		revs = append(revs, int64(rev))
	}
	if len(revs) > 0 {
		// The group's revision records, the new head and the notification
		// go with the last writes' statements: no round trip of their own.
		// A revision's size is counted from the rows that carry it, which
		// are exactly the rows its write inserted (current now, or
		// replaced later in the group) and those it ended: the group's
		// revisions are consecutive, so one range scan of each revision
		// index finds them all.
		g.cur = -1
		const records = `INSERT INTO mandate_revisions (revision, committed_at, changes)
			SELECT r, clock_timestamp(), count(c.rev)
			FROM unnest($1::bigint[]) AS r
			LEFT JOIN (
				SELECT created_rev AS rev FROM mandate_relationships WHERE created_rev >= $2 AND created_rev <= $3
				UNION ALL SELECT created_rev FROM mandate_relationship_history WHERE created_rev >= $2 AND created_rev <= $3
				UNION ALL SELECT deleted_rev FROM mandate_relationship_history WHERE deleted_rev >= $2 AND deleted_rev <= $3
			) c ON c.rev = r
			GROUP BY r`
		args := []any{revs, revs[0], int64(rev)}
		if s.d.notify {
			// On PostgreSQL one statement: its data-modifying CTEs run
			// whether or not the notification reads them.
			g.queueRow(`WITH records AS (`+records+`), moved AS (UPDATE mandate_state SET head = $3)
				SELECT pg_notify($4, $5)`, append(args, s.channel, strconv.FormatInt(int64(rev), 10)),
				func(row pgx.Row) error { return row.Scan(nil) })
		} else {
			g.queueExec(records, args, func(pgconn.CommandTag) {})
			g.queueExec("UPDATE mandate_state SET head = $1", []any{int64(rev)}, func(pgconn.CommandTag) {})
		}
	}
	g.head = rev
	if g.conn != nil {
		g.cur = -1
		g.queueExecNow(-1, "committing", "COMMIT", nil, func(pgconn.CommandTag) {})
	}
	if err := g.flush(ctx); err != nil {
		return err.(*flushError).resolve()
	}
	return nil
}

// group is the transaction a group of writes shares. Writes queue their
// statements; they are sent together when a write needs a result to
// decide (flush) or when the group ends, so that writes without
// preconditions cost no round trip of their own.
type group struct {
	// conn, when set, is the connection a pipelined group runs on: its
	// first flush begins the transaction and sets tx.
	conn      *pgxpool.Conn
	tx        pgx.Tx
	batch     *pgx.Batch
	head      store.Revision // the head the group leaves
	failed    int            // the op whose statement failed in the last flush, or -1 (combinedOps: several)
	now       time.Time
	schemaRev store.Revision
	cur       int // the op running, -1 for the group's own statements
	// seg gathers the writes of consecutive ops, sent as one pair of
	// statements when anything else is queued or flushed; uncombined
	// sends each op's alone, after a combined statement was refused.
	seg        applySegment
	uncombined bool
	// noHashJoins is the dialect's planner settings for large batches,
	// sent once (lookupsForced) when a batch first needs them.
	noHashJoins   string
	lookupsForced bool
}

// queueRow queues a statement returning one row, scanned by fn when the
// batch is flushed.
func (g *group) queueRow(sql string, args []any, fn func(pgx.Row) error) {
	g.sendSegment()
	op := g.cur
	g.batch.Queue(sql, args...).Fn = func(br pgx.BatchResults) error {
		if err := fn(br.QueryRow()); err != nil {
			g.failed = op
			return err
		}
		return nil
	}
}

// queueExec queues a statement whose command tag fn reads.
func (g *group) queueExec(sql string, args []any, fn func(pgconn.CommandTag)) {
	g.sendSegment()
	g.queueExecNow(g.cur, "", sql, args, fn)
}

// queueExecNow queues a statement of op behind what is queued; what, when
// not empty, names it in its error.
func (g *group) queueExecNow(op int, what, sql string, args []any, fn func(pgconn.CommandTag)) {
	g.batch.Queue(sql, args...).Fn = func(br pgx.BatchResults) error {
		tag, err := br.Exec()
		if err != nil {
			g.failed = op
			if what != "" {
				err = fmt.Errorf("%s: %w", what, err)
			}
			return err
		}
		fn(tag)
		return nil
	}
}

// flush sends the queued statements and runs their callbacks. Its error is
// always a *flushError.
func (g *group) flush(ctx context.Context) error {
	g.sendSegment()
	if g.batch.Len() == 0 {
		return nil
	}
	b := g.batch
	g.batch, g.failed = &pgx.Batch{}, -1
	var err error
	if g.tx == nil {
		// The batch that begins the transaction.
		br := g.conn.SendBatch(ctx, b)
		err = br.Close()
		g.tx = br.Tx()
	} else {
		err = g.tx.SendBatch(ctx, b).Close()
	}
	if err != nil {
		// No callback ran when the batch could not be sent at all.
		return &flushError{op: g.failed, err: err}
	}
	return nil
}

// direct runs fn straight on the transaction, after what is queued,
// attributing its error to the running op.
func (g *group) direct(ctx context.Context, fn func(pgx.Tx) error) error {
	if err := g.flush(ctx); err != nil {
		return err
	}
	if err := fn(g.tx); err != nil {
		return &flushError{op: g.cur, err: err}
	}
	return nil
}

// flushError is a failure of statements sent for the group, with the op
// that queued the failing one (-1 when unknown).
type flushError struct {
	op  int
	err error
}

func (e *flushError) Error() string { return e.err.Error() }
func (e *flushError) Unwrap() error { return e.err }

// resolve decides what a failed statement does to the group: a statement
// the database refused for what it says (a constraint, a value out of
// range) fails only the write that sent it; anything else (the connection,
// a serialization failure CockroachDB retries, a timeout) fails the whole
// group.
func (e *flushError) resolve() error {
	var pgErr *pgconn.PgError
	if (e.op < 0 && e.op != combinedOps) || !errors.As(e.err, &pgErr) || len(pgErr.Code) != 5 {
		return e.err
	}
	switch pgErr.Code[:2] {
	case "08", // connection exception
		"40", // transaction rollback: serialization failure, deadlock
		"53", // insufficient resources
		"57", // operator intervention: canceled, shut down
		"58", // system error
		"XX": // internal error
		return e.err
	}
	if e.op == combinedOps {
		return errCombinedRefused
	}
	return &refusedError{op: e.op, err: e.err}
}

// combinedOps stands for the ops of a combined statement.
const combinedOps = -2

// errCombinedRefused runs a group again with every op's writes sent
// alone, to find which op's the database refuses.
var errCombinedRefused = errors.New("a combined write was refused")
