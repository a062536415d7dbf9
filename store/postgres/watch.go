package postgres

import (
	"context"
	"fmt"
	"iter"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// A poll reads at most this many revisions, and stops after the revision
// that reaches watchMaxRows changed rows, so a watcher far behind catches
// up in bounded steps. A single larger revision is still read whole.
const (
	watchMaxRevisions = 1000
	watchMaxRows      = 10_000
)

// pollTimeout bounds one poll, so that a database that stops answering
// (a network partition rather than a refused connection) ends a Watch with
// an error instead of hanging it.
const pollTimeout = 30 * time.Second

// Watch yields every change after `after` in revision order, then waits for
// new ones until ctx is done, when it ends without an error. Each poll
// reads a bounded window of changes in one snapshot and releases its
// connection before yielding them; watchers wake on NOTIFY and this
// process's commits, and poll every PollInterval regardless. A failed poll
// (the database going away, history collected) ends the watch with the
// error.
func (s *Store) Watch(ctx context.Context, after store.Revision) iter.Seq2[store.Change, error] {
	if s.d.notify {
		s.startListener()
	}
	return store.ChangeFeed{Changes: s.changes, Wake: s.wake.wait, PollInterval: s.opts.PollInterval}.Watch(ctx, after)
}

// changes is poll for the shared watch loop: a closed store says so, even
// when closing is what made the poll fail.
func (s *Store) changes(ctx context.Context, after store.Revision) ([]store.Change, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	changes, err := s.poll(ctx, after)
	if err != nil && s.closed.Load() {
		return nil, ErrClosed
	}
	return changes, err
}

// poll reads the changes after next, up to the window's bounds, in one
// repeatable-read snapshot: the retention check, the revision list and the
// rows agree with each other even while GC runs. It takes two round trips:
// BEGIN, the state row and the window's revisions, whose sizes bound the
// window; then the window's schemas, records and relationships, and
// COMMIT.
func (s *Store) poll(ctx context.Context, next store.Revision) ([]store.Change, error) {
	ctx, cancel := context.WithTimeout(ctx, pollTimeout)
	defer cancel()
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Release()
	w := &window{next: next}
	b := &pgx.Batch{}
	b.BeginTx(pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	b.Queue("SELECT head, oldest FROM mandate_state").QueryRow(w.readable)
	b.Queue("SELECT revision, changes FROM mandate_revisions WHERE revision > $1 AND revision <= (SELECT head FROM mandate_state) ORDER BY revision LIMIT $2",
		int64(next), watchMaxRevisions).Query(w.revisions)
	br := conn.SendBatch(ctx, b)
	err = br.Close()
	tx := br.Tx()
	defer func() {
		// A statement that failed left the transaction open: PostgreSQL
		// skipped what followed it.
		if conn.Conn().PgConn().TxStatus() != 'I' {
			rollback(ctx, tx)
		}
	}()
	if err != nil {
		return nil, err
	}
	b = &pgx.Batch{}
	if len(w.changes) > 0 {
		last := int64(w.changes[len(w.changes)-1].Revision)
		b.Queue("SELECT revision, definition FROM mandate_schemas WHERE revision > $1 AND revision <= $2", int64(next), last).Query(w.schemas)
		b.Queue(recordChangesSQL, int64(next), last).Query(w.records)
		if w.total > 0 {
			// A version created in the window is a Touch at its creation; a
			// version ended in the window is a Delete at its end, unless the
			// same revision wrote a new version of the key (a Touch
			// replacing it).
			b.Queue(`SELECT r.created_rev, false, `+prefixed("r")+` FROM mandate_relationships r WHERE r.created_rev > $1 AND r.created_rev <= $2
				UNION ALL SELECT r.created_rev, false, `+prefixed("r")+` FROM mandate_relationship_history r WHERE r.created_rev > $1 AND r.created_rev <= $2
				UNION ALL SELECT r.deleted_rev, true, `+prefixed("r")+` FROM mandate_relationship_history r WHERE r.deleted_rev > $1 AND r.deleted_rev <= $2`,
				int64(next), last).Query(w.relationships)
		}
	}
	b.Queue("COMMIT")
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, err
	}
	return w.result()
}

// window gathers one poll's results, statement by statement.
type window struct {
	next    store.Revision
	empty   bool // nothing follows next
	changes []store.Change
	total   int // rows changed in the window
	deletes map[int64][]store.Update
}

// readable checks that next can be read in the poll's snapshot.
func (w *window) readable(row pgx.Row) error {
	var h, oldest int64
	if err := row.Scan(&h, &oldest); err != nil {
		return err
	}
	switch {
	case uint64(w.next) > uint64(h):
		return fmt.Errorf("%w: revision %d, head is %d", store.ErrFutureRevision, w.next, h)
	case uint64(w.next) < uint64(oldest):
		return fmt.Errorf("%w: revision %d, oldest retained is %d", store.ErrRevisionGone, w.next, oldest)
	}
	w.empty = store.Revision(h) == w.next
	return nil
}

// revisions lists the window's revisions, which must follow next without
// a gap.
func (w *window) revisions(rows pgx.Rows) error {
	for rows.Next() {
		var rev int64
		var n int
		if err := rows.Scan(&rev, &n); err != nil {
			return fmt.Errorf("listing revisions: %w", err)
		}
		if want := w.next + store.Revision(len(w.changes)) + 1; store.Revision(rev) != want {
			return fmt.Errorf("the record of revision %d is missing", want)
		}
		w.changes = append(w.changes, store.Change{Revision: store.Revision(rev)})
		w.total += n
		if w.total >= watchMaxRows {
			break
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("listing revisions: %w", err)
	}
	if len(w.changes) == 0 && !w.empty {
		return fmt.Errorf("the record of revision %d is missing", w.next+1)
	}
	return nil
}

// at is the change of revision rev of the window.
func (w *window) at(rev int64) (*store.Change, error) {
	i := rev - int64(w.next) - 1
	if i < 0 || i >= int64(len(w.changes)) {
		return nil, fmt.Errorf("revision %d is outside the window %d-%d", rev, w.next+1, w.next+store.Revision(len(w.changes)))
	}
	return &w.changes[i], nil
}

func (w *window) schemas(rows pgx.Rows) error {
	for rows.Next() {
		var rev int64
		var text string
		if err := rows.Scan(&rev, &text); err != nil {
			return fmt.Errorf("reading schema changes: %w", err)
		}
		ch, err := w.at(rev)
		if err != nil {
			return fmt.Errorf("reading schema changes: %w", err)
		}
		ch.Schema = &text
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("reading schema changes: %w", err)
	}
	return nil
}

func (w *window) records(rows pgx.Rows) error {
	if err := scanRecordChanges(rows, w.at); err != nil {
		return fmt.Errorf("reading record changes: %w", err)
	}
	return nil
}

func (w *window) relationships(rows pgx.Rows) error {
	dec := newDecoder()
	for rows.Next() {
		var rev int64
		var deleted bool
		if err := rows.Scan(&rev, &deleted, nil, nil, nil, nil, nil, nil, nil, nil, nil); err != nil {
			return fmt.Errorf("reading relationship changes: %w", err)
		}
		r, err := dec.decode(rows, 2)
		if err != nil {
			return fmt.Errorf("reading relationship changes: %w", err)
		}
		ch, err := w.at(rev)
		if err != nil {
			return fmt.Errorf("reading relationship changes: %w", err)
		}
		if deleted {
			if w.deletes == nil {
				w.deletes = make(map[int64][]store.Update)
			}
			w.deletes[rev] = append(w.deletes[rev], store.Update{Op: store.Delete, Rel: r})
		} else {
			ch.Updates = append(ch.Updates, store.Update{Op: store.Touch, Rel: r})
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("reading relationship changes: %w", err)
	}
	return nil
}

// result is the window's changes, each revision's deletes after its
// touches, leaving out the deletes of keys the same revision touched.
func (w *window) result() ([]store.Change, error) {
	if w.empty {
		return nil, nil
	}
	for rev, dels := range w.deletes {
		ch, err := w.at(rev)
		if err != nil {
			return nil, err
		}
		touched := make(map[rel.Key]bool, len(ch.Updates))
		for _, u := range ch.Updates {
			touched[u.Rel.Key()] = true
		}
		for _, u := range dels {
			if !touched[u.Rel.Key()] {
				ch.Updates = append(ch.Updates, u)
			}
		}
	}
	return w.changes, nil
}

// startListener starts, once, the goroutine that turns NOTIFY into
// wake-ups for this process's watchers.
func (s *Store) startListener() {
	s.listenOnce.Do(func() {
		s.bgMu.Lock()
		defer s.bgMu.Unlock()
		if s.closed.Load() {
			return
		}
		s.bgWG.Add(1)
		go s.listen()
	})
}

// listen keeps a dedicated connection LISTENing, reconnecting with backoff.
// Watchers poll every PollInterval meanwhile, and are woken after each
// reconnection since notifications may have been missed.
func (s *Store) listen() {
	defer s.bgWG.Done()
	backoff := 100 * time.Millisecond
	for {
		connected, err := s.listenConn()
		if s.bg.Err() != nil {
			return
		}
		if connected {
			backoff = 100 * time.Millisecond
		}
		s.log.Warn("postgres change notifications interrupted; reconnecting (watchers poll meanwhile)", "error", err, "retry_in", backoff)
		s.wake.broadcast()
		select {
		case <-s.bg.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (s *Store) listenConn() (connected bool, err error) {
	conn, err := pgx.ConnectConfig(s.bg, s.pool.Config().ConnConfig)
	if err != nil {
		return false, err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = conn.Close(ctx)
	}()
	if _, err := conn.Exec(s.bg, "LISTEN "+pgx.Identifier{s.channel}.Sanitize()); err != nil {
		return false, err
	}
	// Commits between the last poll and LISTEN taking effect went
	// unannounced.
	s.wake.broadcast()
	for {
		n, err := conn.WaitForNotification(s.bg)
		if err != nil {
			return true, err
		}
		// A commit of this process woke its watchers when it was made,
		// and the poll that followed saw it: every revision up to this
		// process's newest was committed before that one.
		if rev, perr := strconv.ParseInt(n.Payload, 10, 64); perr == nil && rev <= s.localHead.Load() {
			continue
		}
		s.wake.broadcast()
	}
}
