package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// maxOrphansReported bounds the relationships named by a refused schema
// write, as in the memory store.
const maxOrphansReported = 100

// errSchemaChanged makes Write validate again: the schema changed between
// validating outside the transaction and locking inside it.
var errSchemaChanged = errors.New("schema changed during the write")

// writeTxOptions: read committed is enough on PostgreSQL because writers
// serialize on the state row and each statement after the lock sees every
// earlier commit.
var writeTxOptions = pgx.TxOptions{IsoLevel: pgx.ReadCommitted}

// lockState takes the next revision, holding the state row's lock (and so
// every other writer) until the transaction ends. It returns the new
// revision and the revision of the schema in force.
func lockState(ctx context.Context, tx pgx.Tx, writesSchema bool) (rev, schemaRev store.Revision, err error) {
	q := "UPDATE mandate_state SET head = head + 1 RETURNING head, schema_revision"
	if writesSchema {
		q = "UPDATE mandate_state SET head = head + 1, schema_revision = head + 1 RETURNING head, schema_revision"
	}
	var h, sr int64
	if err := tx.QueryRow(ctx, q).Scan(&h, &sr); err != nil {
		return 0, 0, fmt.Errorf("taking the next revision: %w", err)
	}
	return store.Revision(h), store.Revision(sr), nil
}

// recordRevision notes the write's commit time and size for GC and Watch,
// and on PostgreSQL notifies listeners once it commits.
func (s *Store) recordRevision(ctx context.Context, tx pgx.Tx, rev store.Revision, changes int) error {
	q := "INSERT INTO mandate_revisions (revision, committed_at, changes) VALUES ($1, clock_timestamp(), $2)"
	args := []any{int64(rev), changes}
	if s.d.notify {
		q = "WITH r AS (" + q + ") SELECT pg_notify($3, $1::text)"
		args = append(args, s.channel)
	}
	if _, err := tx.Exec(ctx, q, args...); err != nil {
		return fmt.Errorf("recording revision %d: %w", rev, err)
	}
	return nil
}

// committed wakes this process's watchers after it committed rev; other
// processes hear NOTIFY or poll. It notes rev first, so that the listener
// can leave out the notifications of this process's own commits: they
// would wake the watchers a second time, for a poll that finds nothing.
func (s *Store) committed(rev store.Revision) {
	for {
		cur := s.localHead.Load()
		if int64(rev) <= cur || s.localHead.CompareAndSwap(cur, int64(rev)) {
			break
		}
	}
	s.wake.broadcast()
}

// currentSchema returns the compiled schema of revision rev (0: none),
// compiling it once.
func (s *Store) currentSchema(ctx context.Context, rev store.Revision) (*schema.Schema, error) {
	if rev == 0 {
		return nil, nil
	}
	s.schemaMu.Lock()
	defer s.schemaMu.Unlock()
	if s.schema != nil && s.schema.rev == rev {
		return s.schema.compiled, nil
	}
	var text string
	if err := s.pool.QueryRow(ctx, "SELECT definition FROM mandate_schemas WHERE revision = $1", int64(rev)).Scan(&text); err != nil {
		return nil, fmt.Errorf("reading the schema written at %d: %w", rev, err)
	}
	compiled, err := schema.Compile(ctx, text)
	if err != nil {
		return nil, fmt.Errorf("compiling the stored schema written at %d: %w", rev, err)
	}
	if s.schema == nil || s.schema.rev < rev {
		s.schema = &cachedSchema{rev: rev, compiled: compiled}
	}
	return compiled, nil
}

// guessSchemaRevision is the revision of the newest schema this process
// knows, to validate against before locking; lockState says whether it
// was right.
func (s *Store) guessSchemaRevision(ctx context.Context) (store.Revision, error) {
	s.schemaMu.Lock()
	cached := s.schema
	s.schemaMu.Unlock()
	if cached != nil {
		return cached.rev, nil
	}
	var rev int64
	if err := s.pool.QueryRow(ctx, "SELECT schema_revision FROM mandate_state").Scan(&rev); err != nil {
		return 0, fmt.Errorf("reading the schema revision: %w", err)
	}
	return store.Revision(rev), nil
}

// Write validates the mutations against the current schema, then, in the
// committer's group transaction under the writers' lock, checks
// preconditions and CREATE conflicts and applies every mutation at one new
// revision. Any error leaves the store unchanged.
func (s *Store) Write(ctx context.Context, preconditions []store.Precondition, mutations []store.Mutation) (store.Revision, error) {
	if s.closed.Load() {
		return 0, ErrClosed
	}
	if len(mutations) > store.MaxMutationsPerWrite {
		return 0, fmt.Errorf("write: %w: %d mutations, at most %d", store.ErrTooManyMutations, len(mutations), store.MaxMutationsPerWrite)
	}
	schemaRev, err := s.guessSchemaRevision(ctx)
	if err != nil {
		return 0, fmt.Errorf("write: %w", err)
	}
	for attempt := 0; ; attempt++ {
		// Schemas are never removed, so a schema revision of 0 read just
		// now means there is none yet.
		if schemaRev == 0 {
			return 0, fmt.Errorf("write: %w", store.ErrNoSchema)
		}
		sch, err := s.currentSchema(ctx, schemaRev)
		if err != nil {
			return 0, fmt.Errorf("write: %w", err)
		}
		if err := store.ValidateMutations(sch, mutations); err != nil {
			return 0, fmt.Errorf("write: %w", err)
		}
		w, err := newWriteSet(mutations)
		if err != nil {
			return 0, fmt.Errorf("write: %w", err)
		}
		var actual store.Revision
		rev, err := s.enqueue(ctx, &writeOp{
			size: len(mutations) + len(preconditions),
			run: func(ctx context.Context, g *group, rev store.Revision) error {
				if g.schemaRev != schemaRev {
					actual = g.schemaRev
					return errSchemaChanged
				}
				return s.applyWrite(ctx, g, rev, preconditions, w)
			},
		})
		if errors.Is(err, errSchemaChanged) && attempt < 3 {
			// Validated against an older schema than the one in force
			// (another process wrote one): validate again.
			schemaRev = actual
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("write: %w", err)
		}
		return rev, nil
	}
}

// applyWrite runs one Write in its group: its checks first, flushed so
// that they see every earlier write of the group, then its statements,
// queued.
func (s *Store) applyWrite(ctx context.Context, g *group, rev store.Revision, preconditions []store.Precondition, w *writeSet) error {
	if w.touched.len() == 0 {
		return checkPreconditions(ctx, g, preconditions)
	}
	if s.d.copy && w.creates == w.touched.len() && w.creates >= copyMin && len(preconditions) == 0 {
		// The import path checks conflicts by the key index's uniqueness
		// rather than one lookup per key.
		var ok bool
		err := g.direct(ctx, func(tx pgx.Tx) (err error) {
			_, ok, err = copyCreates(ctx, tx, &w.put, rev)
			return err
		})
		if err != nil || ok {
			return err
		}
	}
	if w.touched.len() >= forceLookupsMin {
		g.forceLookups()
	}
	pre := queuePreconditions(g, preconditions)
	conflict := queueConflicts(g, w, s.d.collate)
	if pre != nil || conflict != nil {
		if err := g.flush(ctx); err != nil {
			return err
		}
	}
	if pre != nil {
		if err := pre(); err != nil {
			return err
		}
	}
	if conflict != nil {
		if err := conflict(); err != nil {
			return err
		}
	}
	s.queueApply(g, rev, w)
	return nil
}

// writeSet is a write's mutations, column-wise.
type writeSet struct {
	// touched are every mutated key, with whether its mutation is a
	// CREATE; put are the relationships CREATE and TOUCH write.
	touched  columns
	isCreate []bool
	put      columns
	// creates counts the CREATE mutations.
	creates int
	// muts are the mutations, to name one in errors.
	muts []store.Mutation
}

func newWriteSet(mutations []store.Mutation) (*writeSet, error) {
	w := &writeSet{muts: mutations}
	w.touched.grow(len(mutations))
	w.put.grow(len(mutations))
	w.isCreate = make([]bool, 0, len(mutations))
	for i, m := range mutations {
		w.touched.addKey(m.Rel.Key())
		w.isCreate = append(w.isCreate, m.Op == store.Create)
		if m.Op == store.Create {
			w.creates++
		}
		if m.Op != store.Delete {
			if err := w.put.add(m.Rel); err != nil {
				return nil, fmt.Errorf("%w: mutation %d: %w", store.ErrInvalidRelationship, i, err)
			}
		}
	}
	return w, nil
}

// keyText renders the key of the row of alias as rel.Key.String does.
func keyText(alias string) string {
	a := alias + "."
	return a + "resource_type || ':' || " + a + "resource_id || '#' || " + a + "relation || '@' || " +
		a + "subject_type || ':' || " + a + "subject_id || CASE WHEN " + a + "subject_relation = '' THEN '' ELSE '#' || " + a + "subject_relation END"
}

// queueConflicts queues the check that no CREATE of w finds a live
// relationship, returning what reports a conflict once flushed, or nil
// when w creates nothing.
func queueConflicts(g *group, w *writeSet, collate string) func() error {
	if w.creates == 0 {
		return nil
	}
	var c columns
	c.grow(w.creates)
	for i, create := range w.isCreate {
		if create {
			c.addKey(w.muts[i].Rel.Key())
		}
	}
	var p params
	rt, rid, rl, st, sid, srel := c.keyArgs(&p)
	nowArg := p.add(g.now)
	q := `SELECT min(` + keyText("r") + `) FROM mandate_relationships r JOIN unnest(` + rt + `::text[], ` + rid + `::text[], ` + rl + `::text[], ` + st + `::text[], ` + sid + `::text[], ` + srel + `::text[])
			AS m(resource_type, resource_id, relation, subject_type, subject_id, subject_relation)
		ON ` + keyJoin("r", "m", collate) + ` WHERE ` + liveSQL("r", nowArg)
	var conflict *string
	g.queueRow(q, p.list, func(row pgx.Row) error {
		if err := row.Scan(&conflict); err != nil {
			return fmt.Errorf("checking for existing relationships: %w", err)
		}
		return nil
	})
	return func() error {
		if conflict == nil {
			return nil
		}
		i := slices.IndexFunc(w.muts, func(m store.Mutation) bool { return m.Rel.Key().String() == *conflict })
		return fmt.Errorf("mutation %d: %w: %s", i, store.ErrAlreadyExists, *conflict)
	}
}

// keyJoin is the condition that rows of alias r and m have the same key,
// spelled so that the key index serves r's side.
func keyJoin(r, m, collate string) string {
	return `(` + r + `.resource_type || ':') = (` + m + `.resource_type || ':')` + collate + `
		  AND (` + r + `.resource_id || '#') = (` + m + `.resource_id || '#')` + collate + `
		  AND (` + r + `.relation || '@') = (` + m + `.relation || '@')` + collate + `
		  AND (` + r + `.subject_type || ':') = (` + m + `.subject_type || ':')` + collate + `
		  AND ` + r + `.subject_id = ` + m + `.subject_id` + collate + `
		  AND ` + r + `.subject_relation = ` + m + `.subject_relation` + collate
}

// queueApply adds w's changes at rev to the group's segment: the
// current versions of every mutated key move to history, and the new
// versions are inserted. Conflicts were checked before.
func (s *Store) queueApply(g *group, rev store.Revision, w *writeSet) {
	seg := &g.seg
	if seg.keys == nil {
		seg.keys = make(map[rel.Key]struct{})
		seg.collate = s.d.collate
	}
	for _, m := range w.muts {
		if _, dup := seg.keys[m.Rel.Key()]; dup {
			// A key changes once per statement: an earlier op's change of
			// it must be applied first.
			g.sendSegment()
			break
		}
	}
	seg.ops = append(seg.ops, g.cur)
	r := int64(rev)
	for _, m := range w.muts {
		seg.keys[m.Rel.Key()] = struct{}{}
	}
	seg.touched.append(&w.touched)
	for range w.touched.len() {
		seg.touchedRev = append(seg.touchedRev, r)
	}
	seg.put.append(&w.put)
	for range w.put.len() {
		seg.putRev = append(seg.putRev, r)
	}
	if g.uncombined {
		g.sendSegment()
	}
}

// applySegment is the changes of consecutive writes of a group, of
// distinct keys, each row with its write's revision.
type applySegment struct {
	ops        []int
	touched    columns
	touchedRev []int64
	put        columns
	putRev     []int64
	keys       map[rel.Key]struct{}
	collate    string
}

// forceLookups queues, once per group, the settings that leave the
// planner only index lookups for joining a batch's keys to the stored
// ones: for a large batch against a large table PostgreSQL prefers
// hashing the whole table to probing the key index once per key, and the
// probes are what keep a batch's cost independent of the table's size.
func (g *group) forceLookups() {
	g.sendSegment()
	g.forceLookupsNow()
}

func (g *group) forceLookupsNow() {
	if g.noHashJoins == "" || g.lookupsForced {
		return
	}
	g.lookupsForced = true
	for _, set := range strings.Split(g.noHashJoins, ";") {
		g.queueExecNow(-1, "", strings.TrimSpace(set), nil, func(pgconn.CommandTag) {})
	}
}

// append adds every row of o to c.
func (c *columns) append(o *columns) {
	c.resType = append(c.resType, o.resType...)
	c.resID = append(c.resID, o.resID...)
	c.relation = append(c.relation, o.relation...)
	c.subjType = append(c.subjType, o.subjType...)
	c.subjID = append(c.subjID, o.subjID...)
	c.subjRel = append(c.subjRel, o.subjRel...)
	c.caveat = append(c.caveat, o.caveat...)
	c.context = append(c.context, o.context...)
	c.expiration = append(c.expiration, o.expiration...)
}

// sendSegment queues the segment's statements and empties it.
func (g *group) sendSegment() {
	seg := &g.seg
	if len(seg.ops) == 0 {
		return
	}
	op := combinedOps
	if len(seg.ops) == 1 {
		op = seg.ops[0]
	}
	if seg.touched.len() >= forceLookupsMin {
		g.forceLookupsNow()
	}
	var p params
	rt, rid, rl, st, sid, srel := seg.touched.keyArgs(&p)
	revs := p.add(seg.touchedRev)
	// One statement for every key: the keys arrive as arrays, each is
	// looked up through the key index, and the versions found move to
	// history with their write's revision as their end.
	q := `WITH m AS (
		SELECT * FROM unnest(` + rt + `::text[], ` + rid + `::text[], ` + rl + `::text[], ` + st + `::text[], ` + sid + `::text[], ` + srel + `::text[], ` + revs + `::bigint[])
			AS m(resource_type, resource_id, relation, subject_type, subject_id, subject_relation, rev)
	), gone AS (
		DELETE FROM mandate_relationships r USING m
		WHERE ` + keyJoin("r", "m", seg.collate) + `
		RETURNING ` + prefixed("r") + `, r.created_rev, m.rev
	)
	INSERT INTO mandate_relationship_history (` + relCols + `, created_rev, deleted_rev)
	SELECT ` + relCols + `, created_rev, rev FROM gone`
	g.queueExecNow(op, "replacing current versions", q, p.list, func(pgconn.CommandTag) {})
	if seg.put.len() > 0 {
		q, args := insertCurrentSQL(&seg.put, seg.putRev)
		g.queueExecNow(op, "inserting new versions", q, args, func(pgconn.CommandTag) {})
	}
	*seg = applySegment{keys: seg.keys, collate: seg.collate}
	clear(seg.keys)
}

// forceLookupsMin is the batch size from which the general write path
// tells the planner to look keys up one by one.
const forceLookupsMin = 100

// copyMin is the smallest all-CREATE batch worth the COPY path's extra
// round trips.
const copyMin = 256

// copyCreates is the import path: a batch of CREATEs of keys that are not
// stored yet COPYs straight into the current table, the fastest way into
// PostgreSQL (bulk heap inserts, no lookup per key). The key index's
// uniqueness is the conflict check: when any key is already stored (live,
// or expired and so replaceable), the COPY is rolled back to a savepoint
// and ok is false, and the caller takes the general path, which decides
// between ErrAlreadyExists and replacing an expired relationship.
func copyCreates(ctx context.Context, tx pgx.Tx, c *columns, rev store.Revision) (n int, ok bool, err error) {
	sp, err := tx.Begin(ctx)
	if err != nil {
		return 0, false, fmt.Errorf("copying new relationships: %w", err)
	}
	created := int64(rev)
	// In key order, consecutive rows land on the same pages of the key
	// index instead of all over it.
	order := make([]int, c.len())
	keys := make([]string, c.len())
	for i := range order {
		order[i] = i
		keys[i] = c.resType[i] + ":" + c.resID[i] + "#" + c.relation[i] + "@" + c.subjType[i] + ":" + c.subjID[i]
		if c.subjRel[i] != "" {
			keys[i] += "#" + c.subjRel[i]
		}
	}
	slices.SortFunc(order, func(a, b int) int { return strings.Compare(keys[a], keys[b]) })
	src := pgx.CopyFromSlice(c.len(), func(j int) ([]any, error) {
		i := order[j]
		var ctxJSON, exp any
		if c.context[i].Valid {
			ctxJSON = c.context[i].String
		}
		if c.expiration[i].Valid {
			exp = c.expiration[i].Time
		}
		return []any{c.resType[i], c.resID[i], c.relation[i], c.subjType[i], c.subjID[i], c.subjRel[i], c.caveat[i], ctxJSON, exp, created}, nil
	})
	cols := []string{"resource_type", "resource_id", "relation", "subject_type", "subject_id", "subject_relation", "caveat_name", "caveat_context", "expiration", "created_rev"}
	copied, err := sp.CopyFrom(ctx, pgx.Identifier{"mandate_relationships"}, cols, src)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" { // unique_violation
		if rerr := sp.Rollback(ctx); rerr != nil {
			return 0, false, fmt.Errorf("copying new relationships: %w", rerr)
		}
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("copying new relationships: %w", err)
	}
	if err := sp.Commit(ctx); err != nil {
		return 0, false, fmt.Errorf("copying new relationships: %w", err)
	}
	return int(copied), true, nil
}

// insertCurrentSQL is the statement inserting relationships as the
// current versions, each from its revision in revs on.
func insertCurrentSQL(c *columns, revs []int64) (string, []any) {
	var p params
	rt, rid, rl, st, sid, srel := c.keyArgs(&p)
	q := `INSERT INTO mandate_relationships (` + relCols + `, created_rev)
		SELECT resource_type, resource_id, relation, subject_type, subject_id, subject_relation, caveat_name, caveat_context::jsonb, expiration, rev
		FROM unnest(` + rt + `::text[], ` + rid + `::text[], ` + rl + `::text[], ` + st + `::text[], ` + sid + `::text[], ` + srel + `::text[], ` +
		p.add(c.caveat) + `::text[], ` + p.add(c.context) + `::text[], ` + p.add(c.expiration) + `::timestamptz[], ` + p.add(revs) + `::bigint[])
			AS m(resource_type, resource_id, relation, subject_type, subject_id, subject_relation, caveat_name, caveat_context, expiration, rev)`
	return q, p.list
}

// queuePreconditions queues one query per precondition, against the
// current, unexpired relationships, returning what reports the first that
// fails once flushed, or nil when there are none.
func queuePreconditions(g *group, pre []store.Precondition) func() error {
	if len(pre) == 0 {
		return nil
	}
	exists := make([]bool, len(pre))
	for i, c := range pre {
		var p params
		nowArg := p.add(g.now)
		q := "SELECT EXISTS (SELECT 1 FROM mandate_relationships r WHERE " + filterSQL(c.Filter, "r", &p) + " AND " + liveSQL("r", nowArg) + ")"
		g.queueRow(q, p.list, func(row pgx.Row) error {
			if err := row.Scan(&exists[i]); err != nil {
				return fmt.Errorf("checking precondition %d: %w", i, err)
			}
			return nil
		})
	}
	return func() error {
		for i, c := range pre {
			if exists[i] != c.MustExist {
				want := "no relationship may match"
				if c.MustExist {
					want = "a relationship must match"
				}
				return fmt.Errorf("%w: precondition %d: %s %+v", store.ErrPreconditionFailed, i, want, c.Filter)
			}
		}
		return nil
	}
}

// checkPreconditions evaluates preconditions in g, after every write queued
// before.
func checkPreconditions(ctx context.Context, g *group, pre []store.Precondition) error {
	eval := queuePreconditions(g, pre)
	if eval == nil {
		return nil
	}
	if err := g.flush(ctx); err != nil {
		return err
	}
	return eval()
}

// DeleteMatching deletes the live relationships matching filter at one new
// revision, or none when more than limit (if non-zero) match. Expired
// matches are removed too but are neither counted nor limited.
func (s *Store) DeleteMatching(ctx context.Context, preconditions []store.Precondition, filter rel.Filter, limit int) (store.Revision, int, error) {
	if s.closed.Load() {
		return 0, 0, ErrClosed
	}
	if limit < 0 {
		return 0, 0, fmt.Errorf("delete matching: limit %d: expected 0 (no limit) or more", limit)
	}
	var deleted int
	rev, err := s.enqueue(ctx, &writeOp{
		size: 1 + len(preconditions),
		run: func(ctx context.Context, g *group, rev store.Revision) error {
			deleted = 0
			pre := queuePreconditions(g, preconditions)
			var n int
			if limit > 0 {
				var p params
				nowArg := p.add(g.now)
				cond := filterSQL(filter, "r", &p)
				q := "SELECT count(*) FROM (SELECT 1 FROM mandate_relationships r WHERE " + cond + " AND " + liveSQL("r", nowArg) + " LIMIT " + p.add(limit+1) + ") x"
				g.queueRow(q, p.list, func(row pgx.Row) error {
					if err := row.Scan(&n); err != nil {
						return fmt.Errorf("counting matches: %w", err)
					}
					return nil
				})
			}
			if pre != nil || limit > 0 {
				if err := g.flush(ctx); err != nil {
					return err
				}
			}
			if pre != nil {
				if err := pre(); err != nil {
					return err
				}
			}
			if n > limit && limit > 0 {
				return fmt.Errorf("%w: more than %d match", store.ErrLimitExceeded, limit)
			}
			var p params
			nowArg := p.add(g.now)
			cond := filterSQL(filter, "r", &p)
			q := `WITH gone AS (
				DELETE FROM mandate_relationships r WHERE ` + cond + `
				RETURNING ` + prefixed("r") + `, r.created_rev
			), moved AS (
				INSERT INTO mandate_relationship_history (` + relCols + `, created_rev, deleted_rev)
				SELECT ` + relCols + `, created_rev, ` + p.add(int64(rev)) + ` FROM gone
			)
			SELECT count(*), coalesce(sum(CASE WHEN ` + liveSQL("gone", nowArg) + ` THEN 1 ELSE 0 END), 0) FROM gone`
			g.queueRow(q, p.list, func(row pgx.Row) error {
				if err := row.Scan(nil, &deleted); err != nil {
					return fmt.Errorf("deleting: %w", err)
				}
				return nil
			})
			return nil
		},
	})
	if err != nil {
		return 0, 0, fmt.Errorf("delete matching: %w", err)
	}
	return rev, deleted, nil
}

// WriteSchema compiles text and makes it the schema from a new revision on,
// unless live relationships would be invalid under it.
func (s *Store) WriteSchema(ctx context.Context, text string) (store.Revision, error) {
	if s.closed.Load() {
		return 0, ErrClosed
	}
	// Compiling is the slow part; it needs no lock.
	sch, err := schema.Compile(ctx, text)
	if err != nil {
		return 0, fmt.Errorf("write schema: %w: %w", store.ErrInvalidSchema, err)
	}
	var rev store.Revision
	err = s.d.inTx(ctx, s.pool, writeTxOptions, func(tx pgx.Tx) error {
		var err error
		if rev, _, err = lockState(ctx, tx, true); err != nil {
			return err
		}
		if err := s.checkOrphans(ctx, tx, sch, s.now()); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "INSERT INTO mandate_schemas (revision, definition) VALUES ($1, $2)", int64(rev), text); err != nil {
			return fmt.Errorf("storing the schema: %w", err)
		}
		return s.recordRevision(ctx, tx, rev, 0)
	})
	if err != nil {
		return 0, fmt.Errorf("write schema: %w", err)
	}
	s.schemaMu.Lock()
	if s.schema == nil || s.schema.rev < rev {
		s.schema = &cachedSchema{rev: rev, compiled: sch}
	}
	s.schemaMu.Unlock()
	s.committed(rev)
	return rev, nil
}

// shape is what validating a relationship against a schema depends on,
// besides its IDs (whose syntax no schema changes).
type shape struct {
	resType, relation, subjType, subjRel string
	wildcard                             bool
	caveat                               string
	context                              []byte
	expires                              bool
}

// checkOrphans refuses a schema under which live relationships would be
// invalid. Validity depends only on a relationship's shape, so it
// validates one relationship per distinct shape, found by the database,
// rather than every relationship; only for invalid shapes does it fetch
// the relationships to name. Contexts are grouped by their text, which
// jsonb normalizes, so equal contexts group together on any engine.
func (s *Store) checkOrphans(ctx context.Context, tx pgx.Tx, sch *schema.Schema, now time.Time) error {
	var p params
	nowArg := p.add(now)
	rows, err := tx.Query(ctx, `SELECT resource_type, relation, subject_type, subject_relation, subject_id = '*',
			caveat_name, caveat_context::text, expiration IS NOT NULL, min(resource_id), min(subject_id)
		FROM mandate_relationships r WHERE `+liveSQL("r", nowArg)+`
		GROUP BY resource_type, relation, subject_type, subject_relation, subject_id = '*', caveat_name, caveat_context::text, expiration IS NOT NULL`, p.list...)
	if err != nil {
		return fmt.Errorf("checking for orphans: %w", err)
	}
	var bad []shape
	for rows.Next() {
		var sh shape
		var resID, subjID string
		if err := rows.Scan(&sh.resType, &sh.relation, &sh.subjType, &sh.subjRel, &sh.wildcard, &sh.caveat, &sh.context, &sh.expires, &resID, &subjID); err != nil {
			rows.Close()
			return fmt.Errorf("checking for orphans: %w", err)
		}
		r := rel.Relationship{
			Resource: rel.Object{Type: sh.resType, ID: resID},
			Relation: sh.relation,
			Subject:  rel.Subject{Type: sh.subjType, ID: subjID, Relation: sh.subjRel},
		}
		if sh.caveat != "" {
			r.Caveat = &rel.Caveat{Name: sh.caveat}
			if sh.context != nil {
				if err := json.Unmarshal(sh.context, &r.Caveat.Context); err != nil {
					rows.Close()
					return fmt.Errorf("checking for orphans: caveat context of %s: %w", r.Key(), err)
				}
			}
		}
		if sh.expires {
			r.Expiration = now.Add(time.Hour) // any instant: only its presence matters
		}
		if sch.ValidateRelationship(r) != nil {
			bad = append(bad, sh)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("checking for orphans: %w", err)
	}
	if len(bad) == 0 {
		return nil
	}
	orphans, err := listOrphans(ctx, tx, sch, bad, now)
	if err != nil {
		return err
	}
	more := ""
	if len(orphans) == maxOrphansReported {
		more = fmt.Sprintf(" (first %d shown)", maxOrphansReported)
	}
	return fmt.Errorf("%w: %d relationship(s) would be invalid%s: %s",
		store.ErrSchemaOrphans, len(orphans), more, strings.Join(orphans, "; "))
}

// listOrphans names up to maxOrphansReported relationships of the invalid
// shapes, in key order, each with why it is invalid.
func listOrphans(ctx context.Context, tx pgx.Tx, sch *schema.Schema, bad []shape, now time.Time) ([]string, error) {
	type orphan struct{ key, text string }
	var found []orphan
	dec := newDecoder()
	for i, sh := range bad {
		if i == maxOrphansReported {
			break
		}
		var p params
		nowArg := p.add(now)
		ctxCond := "r.caveat_context IS NULL"
		if sh.context != nil {
			ctxCond = "r.caveat_context::text = " + p.add(string(sh.context))
		}
		q := `SELECT ` + prefixed("r") + ` FROM mandate_relationships r
			WHERE r.resource_type = ` + p.add(sh.resType) + ` AND r.relation = ` + p.add(sh.relation) +
			` AND r.subject_type = ` + p.add(sh.subjType) + ` AND r.subject_relation = ` + p.add(sh.subjRel) +
			` AND (r.subject_id = '*') = ` + p.add(sh.wildcard) + ` AND r.caveat_name = ` + p.add(sh.caveat) +
			` AND ` + ctxCond + ` AND (r.expiration IS NOT NULL) = ` + p.add(sh.expires) +
			` AND ` + liveSQL("r", nowArg) + ` ORDER BY ` + keyExprs("r") + ` LIMIT ` + p.add(maxOrphansReported)
		rows, err := tx.Query(ctx, q, p.list...)
		if err != nil {
			return nil, fmt.Errorf("listing orphans: %w", err)
		}
		for rows.Next() {
			r, err := dec.decode(rows, 0)
			if err != nil {
				rows.Close()
				return nil, fmt.Errorf("listing orphans: %w", err)
			}
			if verr := sch.ValidateRelationship(r); verr != nil {
				found = append(found, orphan{r.Key().String(), fmt.Sprintf("%s: %v", r, verr)})
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("listing orphans: %w", err)
		}
	}
	slices.SortFunc(found, func(a, b orphan) int { return strings.Compare(a.key, b.key) })
	found = found[:min(len(found), maxOrphansReported)]
	out := make([]string, len(found))
	for i, o := range found {
		out[i] = o.text
	}
	return out, nil
}
