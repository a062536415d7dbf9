package postgres

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// readBatch is how many rows a Read fetches per round trip.
const readBatch = 10_000

// rollback ends a read transaction even when ctx is done, so that the
// connection goes back to the pool clean.
func rollback(ctx context.Context, tx pgx.Tx) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = tx.Rollback(ctx)
}

// ReadSchema returns the schema text in force at rev and the revision that
// wrote it; "" and 0 when none had been written by then.
func (s *Store) ReadSchema(ctx context.Context, rev store.Revision) (string, store.Revision, error) {
	if s.closed.Load() {
		return "", 0, ErrClosed
	}
	tx, err := s.readTx(ctx)
	if err != nil {
		return "", 0, fmt.Errorf("read schema: %w", err)
	}
	defer rollback(ctx, tx)
	if _, err := checkReadable(ctx, tx, rev); err != nil {
		return "", 0, fmt.Errorf("read schema: %w", err)
	}
	var text string
	var at int64
	err = tx.QueryRow(ctx, "SELECT definition, revision FROM mandate_schemas WHERE revision <= $1 ORDER BY revision DESC LIMIT 1", int64(rev)).Scan(&text, &at)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", 0, nil
	}
	if err != nil {
		return "", 0, fmt.Errorf("read schema: %w", err)
	}
	return text, store.Revision(at), nil
}

// Read yields the relationships matching filter as of rev in key order,
// leaving out those expired at the time of the call. It streams through a
// cursor in one repeatable-read transaction, readBatch rows per round trip,
// so memory stays bounded however many match; the transaction holds one
// pooled connection until the iteration ends.
func (s *Store) Read(ctx context.Context, rev store.Revision, filter rel.Filter) iter.Seq2[rel.Relationship, error] {
	return func(yield func(rel.Relationship, error) bool) {
		if s.closed.Load() {
			yield(rel.Relationship{}, ErrClosed)
			return
		}
		if err := s.read(ctx, rev, filter, yield); err != nil {
			yield(rel.Relationship{}, fmt.Errorf("read: %w", err))
		}
	}
}

func (s *Store) read(ctx context.Context, rev store.Revision, filter rel.Filter, yield func(rel.Relationship, error) bool) error {
	tx, err := s.readTx(ctx)
	if err != nil {
		return err
	}
	defer rollback(ctx, tx)
	head, err := checkReadable(ctx, tx, rev)
	if err != nil {
		return err
	}
	var p params
	nowArg := p.add(s.now())
	cond := filterSQL(filter, "r", &p) + " AND " + liveSQL("r", nowArg)
	var q string
	if rev == head {
		// In this snapshot the current table is exactly the state at
		// rev, and its key index yields it in order.
		q = "SELECT " + prefixed("r") + " FROM mandate_relationships r WHERE " + cond + " ORDER BY " + keyExprs("r")
	} else {
		revArg := p.add(int64(rev))
		keys := keyExprs("r")
		q = "SELECT " + relCols + " FROM (" +
			"SELECT " + keys + ", " + prefixed("r") + " FROM mandate_relationships r WHERE r.created_rev <= " + revArg + " AND " + cond +
			" UNION ALL SELECT " + keys + ", " + prefixed("r") + " FROM mandate_relationship_history r WHERE r.created_rev <= " + revArg +
			" AND r.deleted_rev > " + revArg + " AND " + cond +
			") u (k1, k2, k3, k4, k5, k6, " + relCols + ") ORDER BY k1, k2, k3, k4, k5, k6"
	}
	if _, err := tx.Exec(ctx, "DECLARE mandate_read NO SCROLL CURSOR FOR "+q, p.list...); err != nil {
		return err
	}
	fetch := "FETCH " + strconv.Itoa(readBatch) + " FROM mandate_read"
	dec := newDecoder()
	batch := make([]rel.Relationship, 0, readBatch)
	for {
		batch = batch[:0]
		rows, err := tx.Query(ctx, fetch)
		if err != nil {
			return err
		}
		for rows.Next() {
			r, err := dec.decode(rows, 0)
			if err != nil {
				rows.Close()
				return err
			}
			batch = append(batch, r)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, r := range batch {
			if !yield(r, nil) {
				return nil
			}
		}
		if len(batch) < readBatch {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}
