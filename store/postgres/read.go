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

// A Read fetches rows in batches growing from firstReadBatch to readBatch
// per round trip: a caller that takes one short page through a cursor
// fetches little more than it takes, and a long read (a snapshot load)
// soon fetches in large batches.
const (
	firstReadBatch = 128
	readBatch      = 10_000
)

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
// leaving out those expired at the time of the call, from the first key
// after after when it is given (a keyset condition the key indexes serve,
// so resuming reads nothing before it). It streams through a
// cursor in one repeatable-read transaction, readBatch rows per round trip,
// so memory stays bounded however many match; the transaction holds one
// pooled connection until the iteration ends.
func (s *Store) Read(ctx context.Context, rev store.Revision, filter rel.Filter, after *rel.Key) iter.Seq2[rel.Relationship, error] {
	return func(yield func(rel.Relationship, error) bool) {
		if s.closed.Load() {
			yield(rel.Relationship{}, ErrClosed)
			return
		}
		if err := s.read(ctx, rev, filter, after, yield); err != nil {
			yield(rel.Relationship{}, fmt.Errorf("read: %w", err))
		}
	}
}

func (s *Store) read(ctx context.Context, rev store.Revision, filter rel.Filter, after *rel.Key, yield func(rel.Relationship, error) bool) error {
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
	if after != nil {
		cond += " AND " + afterSQL(*after, "r", &p)
	}
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
	dec := newDecoder()
	var batch []rel.Relationship
	for size := firstReadBatch; ; size = min(2*size, readBatch) {
		batch = batch[:0]
		rows, err := tx.Query(ctx, "FETCH "+strconv.Itoa(size)+" FROM mandate_read")
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
		if len(batch) < size {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// afterSQL is the condition that a row of alias has a key after k: a row
// comparison on the key index's expressions, so the index seeks to it.
func afterSQL(k rel.Key, alias string, p *params) string {
	return "(" + keyExprs(alias) + ") > (" + p.add(k.Resource.Type+":") + ", " + p.add(k.Resource.ID+"#") + ", " +
		p.add(k.Relation+"@") + ", " + p.add(k.Subject.Type+":") + ", " + p.add(k.Subject.ID) + ", " + p.add(k.Subject.Relation) + ")"
}
