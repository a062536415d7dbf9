package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/mandate-authz/mandate/store"
)

// gcBatch bounds the rows one garbage-collection statement deletes, so no
// transaction grows with the backlog.
const gcBatch = 10_000

// GCResult says what one collection did.
type GCResult struct {
	// Oldest is the oldest revision readable afterwards.
	Oldest store.Revision
	// History, Expired, Revisions and Schemas count the rows removed:
	// replaced or deleted relationship versions, expired relationships,
	// revision records and superseded schemas.
	History, Expired, Revisions, Schemas int64
}

// GC releases history from before `before`: the newest revision committed
// at or before then becomes the oldest readable one (never moving
// backwards, never past the head), so the state as of `before` stays
// readable while reads and watches from earlier revisions fail with
// store.ErrRevisionGone. It then deletes what no read from the oldest
// readable revision on can need: relationship versions that ended by then,
// revision records and schemas older than it, and relationships that had
// expired by `before` and were written by then. It is safe to run from
// several processes at once.
func (s *Store) GC(ctx context.Context, before time.Time) (GCResult, error) {
	if s.closed.Load() {
		return GCResult{}, ErrClosed
	}
	var horizon *int64
	if err := s.pool.QueryRow(ctx, "SELECT max(revision) FROM mandate_revisions WHERE committed_at <= $1", before).Scan(&horizon); err != nil {
		return GCResult{}, fmt.Errorf("gc: finding the revision at %s: %w", before.Format(time.RFC3339), err)
	}
	var rev store.Revision
	if horizon != nil {
		rev = store.Revision(*horizon)
	}
	res, err := s.collect(ctx, rev, before)
	if err != nil {
		return res, fmt.Errorf("gc: %w", err)
	}
	return res, nil
}

// ForgetBefore is GC by revision rather than time: rev (at most the head)
// becomes the oldest readable revision, and relationships expired by now
// are removed with the rest.
func (s *Store) ForgetBefore(ctx context.Context, rev store.Revision) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if _, err := s.collect(ctx, rev, s.now()); err != nil {
		return fmt.Errorf("forget before %d: %w", rev, err)
	}
	return nil
}

// collect makes rev (clamped between the current oldest and the head) the
// oldest readable revision and deletes what no read from it on needs,
// including relationships expired at expiredBy.
func (s *Store) collect(ctx context.Context, rev store.Revision, expiredBy time.Time) (GCResult, error) {
	var res GCResult
	var oldest int64
	err := s.d.inTx(ctx, s.pool, writeTxOptions, func(tx pgx.Tx) error {
		// The state row's lock orders this against writers.
		var head int64
		if err := tx.QueryRow(ctx, "SELECT head, oldest FROM mandate_state FOR UPDATE").Scan(&head, &oldest); err != nil {
			return err
		}
		if target := min(int64(rev), head); target > oldest {
			oldest = target
			_, err := tx.Exec(ctx, "UPDATE mandate_state SET oldest = $1", oldest)
			return err
		}
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("moving the oldest readable revision: %w", err)
	}
	res.Oldest = store.Revision(oldest)

	// Readers that began before the move still see these rows in their
	// snapshots; readers after it refuse revisions that would need them.
	if res.History, err = s.deleteAll(ctx, "mandate_relationship_history", "deleted_rev <= $1", false, oldest); err != nil {
		return res, fmt.Errorf("relationship history: %w", err)
	}
	if res.Revisions, err = s.deleteAll(ctx, "mandate_revisions", "revision < $1", false, oldest); err != nil {
		return res, fmt.Errorf("revision records: %w", err)
	}
	tag, err := s.pool.Exec(ctx, `DELETE FROM mandate_schemas WHERE revision <
		(SELECT max(revision) FROM mandate_schemas WHERE revision <= $1)`, oldest)
	if err != nil {
		return res, fmt.Errorf("schemas: %w", err)
	}
	res.Schemas = tag.RowsAffected()
	// Current rows are what writers delete, so these deletes take the
	// writers' lock rather than risk a deadlock with one.
	if res.Expired, err = s.deleteAll(ctx, "mandate_relationships", "expiration <= $2 AND created_rev <= $1", true, oldest, expiredBy); err != nil {
		return res, fmt.Errorf("expired relationships: %w", err)
	}
	return res, nil
}

// deleteAll deletes the rows of table matching cond in bounded batches.
func (s *Store) deleteAll(ctx context.Context, table, cond string, lock bool, args ...any) (int64, error) {
	q := s.d.deleteLimited(table, cond, gcBatch)
	var total int64
	for {
		var n int64
		err := s.d.inTx(ctx, s.pool, writeTxOptions, func(tx pgx.Tx) error {
			if lock {
				if _, err := tx.Exec(ctx, "SELECT 1 FROM mandate_state FOR UPDATE"); err != nil {
					return err
				}
			}
			tag, err := tx.Exec(ctx, q, args...)
			n = tag.RowsAffected()
			return err
		})
		if err != nil {
			return total, err
		}
		total += n
		if n < gcBatch {
			return total, nil
		}
	}
}

// gcLoop collects every GCInterval until the store closes.
func (s *Store) gcLoop() {
	defer s.bgWG.Done()
	t := time.NewTicker(s.opts.GCInterval)
	defer t.Stop()
	for {
		select {
		case <-s.bg.Done():
			return
		case <-t.C:
		}
		// Commit times are the database's clock; the window is long
		// enough that skew against this one does not matter.
		res, err := s.GC(s.bg, time.Now().Add(-s.opts.GCWindow))
		if err != nil {
			if s.bg.Err() == nil {
				s.log.Error("garbage collection failed", "error", err)
			}
			continue
		}
		s.log.Debug("garbage collection", "oldest_revision", uint64(res.Oldest), "history", res.History,
			"expired", res.Expired, "revisions", res.Revisions, "schemas", res.Schemas)
	}
}
