package embedded

import (
	"bytes"
	"context"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/mandate-authz/mandate/store"
)

// gcBatch bounds the work of one garbage collection transaction, so that
// writers wait for at most one batch, never for a whole collection.
const gcBatch = 10_000

// GCStats reports what one garbage collection removed.
type GCStats struct {
	// Oldest is the oldest retained revision afterwards.
	Oldest store.Revision
	// Changes is how many revisions' change records were dropped.
	Changes int
	// Versions is how many superseded or deleted relationship versions were
	// dropped.
	Versions int
	// Expired is how many expired relationship versions were dropped.
	Expired int
}

func (g GCStats) empty() bool { return g.Changes == 0 && g.Versions == 0 && g.Expired == 0 }

func (s *Store) gcLoop(ctx context.Context) {
	defer close(s.gcDone)
	t := time.NewTicker(s.opts.GCInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		stats, err := s.CollectGarbage(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			s.opts.Logger.Warn("embedded store garbage collection failed", "error", err)
		case err == nil && !stats.empty():
			s.opts.Logger.Info("embedded store garbage collected", "oldest_revision", uint64(stats.Oldest),
				"changes", stats.Changes, "versions", stats.Versions, "expired", stats.Expired)
		}
	}
}

// CollectGarbage forgets the history committed longer than the GC window
// ago and drops expired relationships. It runs in the background every
// GCInterval; calling it directly is safe at any time.
func (s *Store) CollectGarbage(ctx context.Context) (GCStats, error) {
	now := s.opts.Now()
	before, err := s.revisionCommittedBy(now.Add(-s.opts.GCWindow))
	if err != nil {
		return GCStats{}, fmt.Errorf("garbage collection: %w", err)
	}
	stats, err := s.forget(ctx, before)
	if err != nil {
		return stats, fmt.Errorf("garbage collection: %w", err)
	}
	if stats.Expired, err = s.dropExpired(ctx, now); err != nil {
		return stats, fmt.Errorf("garbage collection: %w", err)
	}
	return stats, nil
}

// ForgetBefore releases history older than rev (at most the head): reads at
// earlier revisions and watches from before it fail with
// store.ErrRevisionGone afterwards. Expired relationships are dropped too,
// since no read can see them again. The server calls it to apply its
// revision retention; it is safe at any time.
func (s *Store) ForgetBefore(ctx context.Context, rev store.Revision) error {
	if _, err := s.forget(ctx, rev); err != nil {
		return fmt.Errorf("forget before %d: %w", rev, err)
	}
	if _, err := s.dropExpired(ctx, s.opts.Now()); err != nil {
		return fmt.Errorf("forget before %d: %w", rev, err)
	}
	return nil
}

// revisionCommittedBy returns the newest revision committed at or before t
// (0 when none is retained).
func (s *Store) revisionCommittedBy(t time.Time) (store.Revision, error) {
	var rev store.Revision
	err := s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketChanges).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			at, ok := changeTime(v)
			if !ok {
				return fmt.Errorf("%w: change record of revision %d", errCorrupt, binaryU64(k))
			}
			if at.After(t) {
				break
			}
			rev = store.Revision(binaryU64(k))
		}
		return nil
	})
	return rev, err
}

// forget moves the oldest retained revision up to rev in batches: each
// batch drops the change records it passes and every relationship version
// those changes ended, since no retained revision can see them.
func (s *Store) forget(ctx context.Context, rev store.Revision) (GCStats, error) {
	var stats GCStats
	for {
		if err := ctx.Err(); err != nil {
			return stats, err
		}
		done := false
		var batch GCStats
		err := s.update(func(tx *bolt.Tx) error {
			batch = GCStats{}
			m, err := readMeta(tx)
			if err != nil {
				return err
			}
			batch.Oldest = m.oldest
			target := min(rev, m.head)
			if target <= m.oldest {
				done = true
				return nil
			}
			changes := tx.Bucket(bucketChanges)
			var ended [][]byte // key texts of the updates passed
			var passed [][]byte
			work := 0
			c := changes.Cursor()
			for k, v := c.Seek(revKey(m.oldest + 1)); k != nil && store.Revision(binaryU64(k)) <= target; k, v = c.Next() {
				if work >= gcBatch {
					break
				}
				_, err := readChange(v, func(_ store.Op, keyText, _ []byte) error {
					ended = append(ended, bytes.Clone(keyText))
					work++
					return nil
				})
				if err != nil {
					return fmt.Errorf("change record of revision %d: %w", binaryU64(k), err)
				}
				passed = append(passed, bytes.Clone(k))
				work++
			}
			if len(passed) == 0 {
				done = true
				return nil
			}
			oldest := store.Revision(binaryU64(passed[len(passed)-1]))
			for _, k := range passed {
				if err := changes.Delete(k); err != nil {
					return err
				}
			}
			batch.Changes = len(passed)
			if batch.Versions, err = dropEnded(tx, ended, oldest); err != nil {
				return err
			}
			if err := dropOldSchemas(tx, oldest); err != nil {
				return err
			}
			batch.Oldest = oldest
			return putMeta(tx, metaOldest, oldest)
		})
		if err != nil {
			return stats, err
		}
		stats.Oldest = batch.Oldest
		stats.Changes += batch.Changes
		stats.Versions += batch.Versions
		if done {
			return stats, nil
		}
	}
}

// dropEnded deletes the versions of the given keys that ended at or before
// rev, with their expiry entries.
func dropEnded(tx *bolt.Tx, keyTexts [][]byte, rev store.Revision) (int, error) {
	rels, expiry := tx.Bucket(bucketRels), tx.Bucket(bucketExpiry)
	c := rels.Cursor()
	dropped := 0
	for _, text := range keyTexts {
		prefix := append(bytes.Clone(text), 0)
		var gone [][]byte
		var exps [][]byte
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			d, ok := deletedAt(v)
			if !ok {
				return 0, fmt.Errorf("%w: relationship entry %q", errCorrupt, k)
			}
			if d == 0 || d > rev {
				continue
			}
			gone = append(gone, bytes.Clone(k))
			if exp, _ := bodyExpiration(v[8:]); !exp.IsZero() {
				_, created, _ := splitVersionKey(k)
				exps = append(exps, expiryKey(exp, text, created))
			}
		}
		for _, k := range gone {
			if err := rels.Delete(k); err != nil {
				return 0, err
			}
		}
		for _, k := range exps {
			if err := expiry.Delete(k); err != nil {
				return 0, err
			}
		}
		dropped += len(gone)
	}
	return dropped, nil
}

// dropOldSchemas keeps the schema in force at rev and every later one.
func dropOldSchemas(tx *bolt.Tx, rev store.Revision) error {
	b := tx.Bucket(bucketSchemas)
	inForce, _ := schemaAt(tx, rev)
	var old [][]byte
	c := b.Cursor()
	for k, _ := c.First(); k != nil && store.Revision(binaryU64(k)) < inForce; k, _ = c.Next() {
		old = append(old, bytes.Clone(k))
	}
	for _, k := range old {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// dropExpired deletes every relationship version expired at now: no read
// can see it again.
func (s *Store) dropExpired(ctx context.Context, now time.Time) (int, error) {
	nowKey := appendTime(nil, now)
	total := 0
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		n, done := 0, false
		err := s.update(func(tx *bolt.Tx) error {
			n = 0
			rels, expiry := tx.Bucket(bucketRels), tx.Bucket(bucketExpiry)
			var entries [][]byte
			c := expiry.Cursor()
			// An expiry key leads with its instant: every key below nowKey
			// (or equal in its first 12 bytes) has expired.
			for k, _ := c.First(); k != nil && bytes.Compare(k[:12], nowKey) <= 0 && len(entries) < gcBatch; k, _ = c.Next() {
				entries = append(entries, bytes.Clone(k))
			}
			for _, k := range entries {
				if len(k) < 12+10 {
					return fmt.Errorf("%w: expiry entry %q", errCorrupt, k)
				}
				if rels.Get(k[12:]) != nil {
					if err := rels.Delete(k[12:]); err != nil {
						return err
					}
					n++
				}
				if err := expiry.Delete(k); err != nil {
					return err
				}
			}
			done = len(entries) < gcBatch
			return nil
		})
		if err != nil {
			return total, err
		}
		total += n
		if done {
			return total, nil
		}
	}
}
