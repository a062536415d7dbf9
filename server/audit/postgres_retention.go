package audit

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Retention on PostgreSQL deletes the oldest rows of the sink's own chain,
// never another server's, and never the newest row. Size is the records'
// bytes (octet_length of the record column, as the file sink counts lines),
// tracked in memory after one sum at the first check, so that a check
// after each batch costs nothing until the bound is passed. Past it the
// oldest rows go until the chain holds at most pgPruneTo of the bound, so
// that one large delete is made now and then rather than a small one after
// every batch.

const (
	// pgPruneTo is the share of MaxBytes a size prune leaves.
	pgPruneTo = 0.9
	// pgDeleteChunk bounds the rows one DELETE statement removes, so that
	// a large prune does not hold one long transaction.
	pgDeleteChunk = 10_000
	// pgRetentionTimeout bounds each retention query.
	pgRetentionTimeout = 30 * time.Second
)

// SetRetention sets the sink's retention; call it before the sink is used.
func (s *PostgresSink) SetRetention(r Retention) { s.retention = r }

// PlanPrune implements Pruner.
func (s *PostgresSink) PlanPrune(now time.Time) (PrunePlan, bool, error) {
	r := s.retention
	if !r.Active() || s.dirty || s.seq < 2 {
		return PrunePlan{}, false, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), pgRetentionTimeout)
	defer cancel()
	t := s.table.Sanitize()
	var through int64
	var reason string
	if r.MaxBytes > 0 {
		if !s.sized {
			if err := s.pool.QueryRow(ctx, `SELECT coalesce(sum(octet_length(record)), 0) FROM `+t+` WHERE chain_id = $1`, s.chain).Scan(&s.bytes); err != nil {
				return PrunePlan{}, false, fmt.Errorf("audit retention: sizing chain %q of %s: %w", s.chain, s.name, err)
			}
			s.sized = true
		}
		if s.bytes > r.MaxBytes {
			excess := s.bytes - int64(float64(r.MaxBytes)*pgPruneTo)
			// The first row at which the running total of the oldest rows
			// reaches the excess.
			err := s.pool.QueryRow(ctx, `SELECT seq FROM (
				SELECT seq, sum(octet_length(record)) OVER (ORDER BY seq) AS upto FROM `+t+` WHERE chain_id = $1
			) x WHERE upto >= $2 ORDER BY seq LIMIT 1`, s.chain, excess).Scan(&through)
			if err != nil && !errors.Is(err, pgx.ErrNoRows) {
				return PrunePlan{}, false, fmt.Errorf("audit retention: chain %q of %s: %w", s.chain, s.name, err)
			}
			reason = "size"
		}
	}
	if r.MaxAge > 0 && now.Sub(s.lastAgeCheck) >= ageCheckInterval {
		s.lastAgeCheck = now
		var old *int64
		if err := s.pool.QueryRow(ctx, `SELECT max(seq) FROM `+t+` WHERE chain_id = $1 AND time < $2`, s.chain, now.Add(-r.MaxAge)).Scan(&old); err != nil {
			return PrunePlan{}, false, fmt.Errorf("audit retention: chain %q of %s: %w", s.chain, s.name, err)
		}
		if old != nil && *old > through {
			through, reason = *old, "age"
		}
	}
	// The newest row stays: it is the chain's head, which the next
	// record follows.
	if through >= int64(s.seq) {
		through = int64(s.seq) - 1
	}
	if through < 1 {
		return PrunePlan{}, false, nil
	}
	var first int64
	var hash string
	var bytes int64
	err := s.pool.QueryRow(ctx, `SELECT min(seq), (SELECT hash FROM `+t+` WHERE chain_id = $1 AND seq = $2), coalesce(sum(octet_length(record)), 0)
		FROM `+t+` WHERE chain_id = $1 AND seq <= $2`, s.chain, through).Scan(&first, &hash, &bytes)
	if err != nil {
		// No row at through (a gap, or already deleted): nothing to do.
		if errors.Is(err, pgx.ErrNoRows) || isNullScan(err) {
			return PrunePlan{}, false, nil
		}
		return PrunePlan{}, false, fmt.Errorf("audit retention: chain %q of %s: %w", s.chain, s.name, err)
	}
	return PrunePlan{Bytes: bytes, ThroughSeq: uint64(through), ThroughHash: hash, Reason: reason}, true, nil
}

// isNullScan reports a scan of NULL into a non-pointer: the aggregate over
// no rows.
func isNullScan(err error) bool {
	var se pgx.ScanArgError
	return errors.As(err, &se)
}

// Prune implements Pruner: it deletes the chain's rows up to the plan's
// seq, a chunk at a time.
func (s *PostgresSink) Prune(p PrunePlan) error {
	ctx, cancel := context.WithTimeout(context.Background(), pgRetentionTimeout)
	defer cancel()
	t := s.table.Sanitize()
	var rows, bytes int64
	for {
		var n, b int64
		err := s.pool.QueryRow(ctx, `WITH d AS (
			DELETE FROM `+t+` WHERE chain_id = $1 AND seq IN (
				SELECT seq FROM `+t+` WHERE chain_id = $1 AND seq <= $2 ORDER BY seq LIMIT $3)
			RETURNING octet_length(record) AS n)
			SELECT count(*), coalesce(sum(n), 0) FROM d`, s.chain, int64(p.ThroughSeq), pgDeleteChunk).Scan(&n, &b)
		if err != nil {
			s.sized = false // re-sum at the next check
			return fmt.Errorf("audit retention: deleting chain %q of %s through seq %d: %w", s.chain, s.name, p.ThroughSeq, err)
		}
		rows, bytes = rows+n, bytes+b
		s.bytes -= b
		if n < pgDeleteChunk {
			break
		}
	}
	s.log.Info("audit retention deleted old rows", "table", s.name, "chain", s.chain, "rows", rows, "bytes", bytes,
		"reason", p.Reason, "through_seq", p.ThroughSeq, "through_hash", p.ThroughHash)
	return nil
}
