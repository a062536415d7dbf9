package postgres

import (
	"context"
	"fmt"
	"iter"
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
// rows agree with each other even while GC runs.
func (s *Store) poll(ctx context.Context, next store.Revision) ([]store.Change, error) {
	ctx, cancel := context.WithTimeout(ctx, pollTimeout)
	defer cancel()
	tx, err := s.readTx(ctx)
	if err != nil {
		return nil, err
	}
	defer rollback(ctx, tx)
	head, err := checkReadable(ctx, tx, next)
	if err != nil || head == next {
		return nil, err
	}
	rows, err := tx.Query(ctx, "SELECT revision, changes FROM mandate_revisions WHERE revision > $1 AND revision <= $2 ORDER BY revision LIMIT $3",
		int64(next), int64(head), watchMaxRevisions)
	if err != nil {
		return nil, fmt.Errorf("listing revisions: %w", err)
	}
	var changes []store.Change
	total := 0
	for rows.Next() {
		var rev int64
		var n int
		if err := rows.Scan(&rev, &n); err != nil {
			rows.Close()
			return nil, fmt.Errorf("listing revisions: %w", err)
		}
		if want := next + store.Revision(len(changes)) + 1; store.Revision(rev) != want {
			rows.Close()
			return nil, fmt.Errorf("the record of revision %d is missing", want)
		}
		changes = append(changes, store.Change{Revision: store.Revision(rev)})
		total += n
		if total >= watchMaxRows {
			break
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing revisions: %w", err)
	}
	if len(changes) == 0 {
		return nil, fmt.Errorf("the record of revision %d is missing", next+1)
	}
	last := int64(changes[len(changes)-1].Revision)
	at := func(rev int64) *store.Change { return &changes[rev-int64(next)-1] }

	rows, err = tx.Query(ctx, "SELECT revision, definition FROM mandate_schemas WHERE revision > $1 AND revision <= $2", int64(next), last)
	if err != nil {
		return nil, fmt.Errorf("reading schema changes: %w", err)
	}
	for rows.Next() {
		var rev int64
		var text string
		if err := rows.Scan(&rev, &text); err != nil {
			rows.Close()
			return nil, fmt.Errorf("reading schema changes: %w", err)
		}
		at(rev).Schema = &text
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading schema changes: %w", err)
	}
	if total == 0 {
		return changes, nil
	}

	// A version created in the window is a Touch at its creation; a
	// version ended in the window is a Delete at its end, unless the same
	// revision wrote a new version of the key (a Touch replacing it).
	q := `SELECT r.created_rev, false, ` + prefixed("r") + ` FROM mandate_relationships r WHERE r.created_rev > $1 AND r.created_rev <= $2
		UNION ALL SELECT r.created_rev, false, ` + prefixed("r") + ` FROM mandate_relationship_history r WHERE r.created_rev > $1 AND r.created_rev <= $2
		UNION ALL SELECT r.deleted_rev, true, ` + prefixed("r") + ` FROM mandate_relationship_history r WHERE r.deleted_rev > $1 AND r.deleted_rev <= $2`
	rows, err = tx.Query(ctx, q, int64(next), last)
	if err != nil {
		return nil, fmt.Errorf("reading relationship changes: %w", err)
	}
	dec := newDecoder()
	deletes := make(map[int64][]store.Update)
	for rows.Next() {
		var rev int64
		var deleted bool
		if err := rows.Scan(&rev, &deleted, nil, nil, nil, nil, nil, nil, nil, nil, nil); err != nil {
			rows.Close()
			return nil, fmt.Errorf("reading relationship changes: %w", err)
		}
		r, err := dec.decode(rows, 2)
		if err != nil {
			rows.Close()
			return nil, fmt.Errorf("reading relationship changes: %w", err)
		}
		if deleted {
			deletes[rev] = append(deletes[rev], store.Update{Op: store.Delete, Rel: r})
		} else {
			ch := at(rev)
			ch.Updates = append(ch.Updates, store.Update{Op: store.Touch, Rel: r})
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading relationship changes: %w", err)
	}
	for rev, dels := range deletes {
		ch := at(rev)
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
	return changes, nil
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
		if _, err := conn.WaitForNotification(s.bg); err != nil {
			return true, err
		}
		s.wake.broadcast()
	}
}
