package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/mandate-authz/mandate/store"
)

// Records are kept by migration 0002_records: mandate_records holds the
// current records, mandate_record_changes each revision's updates, deleted
// with the revision's row by garbage collection (ON DELETE CASCADE).

var _ store.RecordStore = (*Store)(nil)

// WriteRecords applies record mutations at one new revision; on any error
// the transaction rolls back and nothing changes.
func (s *Store) WriteRecords(ctx context.Context, mutations []store.RecordMutation) (store.Revision, error) {
	if s.closed.Load() {
		return 0, ErrClosed
	}
	if err := store.ValidateRecordMutations(mutations); err != nil {
		return 0, fmt.Errorf("write records: %w", err)
	}
	var rev store.Revision
	err := s.d.inTx(ctx, s.pool, writeTxOptions, func(tx pgx.Tx) error {
		var err error
		if rev, _, err = lockState(ctx, tx, false); err != nil {
			return err
		}
		// The revision's row first: record changes reference it.
		if err := s.recordRevision(ctx, tx, rev, 0); err != nil {
			return err
		}
		seq := 0
		for i, m := range mutations {
			r := m.Record
			data := r.Data
			if data == nil {
				data = []byte{}
			}
			var op store.Op
			var written store.Revision
			switch m.Op {
			case store.Create:
				tag, err := tx.Exec(ctx, "INSERT INTO mandate_records (kind, id, data, revision) VALUES ($1, $2, $3, $4) ON CONFLICT (kind, id) DO NOTHING",
					r.Kind, r.ID, data, int64(rev))
				if err != nil {
					return fmt.Errorf("mutation %d: %w", i, err)
				}
				if tag.RowsAffected() == 0 {
					return fmt.Errorf("mutation %d: %w: %s/%s", i, store.ErrRecordExists, r.Kind, r.ID)
				}
				op, written = store.Touch, rev
			case store.Touch:
				if _, err := tx.Exec(ctx, `INSERT INTO mandate_records (kind, id, data, revision) VALUES ($1, $2, $3, $4)
					ON CONFLICT (kind, id) DO UPDATE SET data = excluded.data, revision = excluded.revision`,
					r.Kind, r.ID, data, int64(rev)); err != nil {
					return fmt.Errorf("mutation %d: %w", i, err)
				}
				op, written = store.Touch, rev
			case store.Delete:
				var old int64
				err := tx.QueryRow(ctx, "DELETE FROM mandate_records WHERE kind = $1 AND id = $2 RETURNING data, revision", r.Kind, r.ID).Scan(&data, &old)
				if errors.Is(err, pgx.ErrNoRows) {
					continue
				}
				if err != nil {
					return fmt.Errorf("mutation %d: %w", i, err)
				}
				op, written = store.Delete, store.Revision(old)
			}
			if _, err := tx.Exec(ctx, "INSERT INTO mandate_record_changes (revision, seq, op, kind, id, data, written) VALUES ($1, $2, $3, $4, $5, $6, $7)",
				int64(rev), seq, int16(op), r.Kind, r.ID, data, int64(written)); err != nil {
				return fmt.Errorf("recording mutation %d: %w", i, err)
			}
			seq++
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("write records: %w", err)
	}
	s.committed(rev)
	return rev, nil
}

// ReadRecords returns the current records of kind, sorted by id, and the
// head they are current at, read in one snapshot.
func (s *Store) ReadRecords(ctx context.Context, kind string) ([]store.Record, store.Revision, error) {
	if s.closed.Load() {
		return nil, 0, ErrClosed
	}
	tx, err := s.readTx(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("read records: %w", err)
	}
	defer rollback(ctx, tx)
	var head int64
	if err := tx.QueryRow(ctx, "SELECT head FROM mandate_state").Scan(&head); err != nil {
		return nil, 0, fmt.Errorf("read records: %w", err)
	}
	rows, err := tx.Query(ctx, "SELECT id, data, revision FROM mandate_records WHERE kind = $1 ORDER BY id", kind)
	if err != nil {
		return nil, 0, fmt.Errorf("read records: %w", err)
	}
	defer rows.Close()
	var out []store.Record
	for rows.Next() {
		r := store.Record{Kind: kind}
		var rev int64
		if err := rows.Scan(&r.ID, &r.Data, &rev); err != nil {
			return nil, 0, fmt.Errorf("read records: %w", err)
		}
		r.Revision = store.Revision(rev)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("read records: %w", err)
	}
	return out, store.Revision(head), nil
}

// recordChangesSQL reads the record updates of revisions after $1 up to
// $2, in order.
const recordChangesSQL = "SELECT revision, op, kind, id, data, written FROM mandate_record_changes WHERE revision > $1 AND revision <= $2 ORDER BY revision, seq"

// scanRecordChanges adds the record updates rows holds to the changes at
// finds.
func scanRecordChanges(rows pgx.Rows, at func(int64) (*store.Change, error)) error {
	for rows.Next() {
		var rev, written int64
		var op int16
		var r store.Record
		if err := rows.Scan(&rev, &op, &r.Kind, &r.ID, &r.Data, &written); err != nil {
			return err
		}
		r.Revision = store.Revision(written)
		ch, err := at(rev)
		if err != nil {
			return err
		}
		ch.Records = append(ch.Records, store.RecordUpdate{Op: store.Op(op), Record: r})
	}
	return rows.Err()
}
