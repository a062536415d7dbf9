package embedded

import (
	"bytes"
	"context"
	"fmt"
	"iter"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// maxOrphansReported bounds the relationships named by a refused schema write.
const maxOrphansReported = 100

// WriteSchema compiles text and makes it the schema from a new revision on,
// unless live relationships would be invalid under it; the check and the
// write are one transaction, so no write can slip in between.
func (s *Store) WriteSchema(ctx context.Context, text string) (store.Revision, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	// Compiling is the slow part: done before taking the writer's lock.
	compiled, err := schema.Compile(ctx, text)
	if err != nil {
		return 0, fmt.Errorf("write schema: %w: %w", store.ErrInvalidSchema, err)
	}
	var rev store.Revision
	err = s.update(func(tx *bolt.Tx) error {
		m, err := readMeta(tx)
		if err != nil {
			return err
		}
		orphans, err := store.OrphansUnder(compiled, liveRels(tx, s.opts.Now()), maxOrphansReported)
		if err != nil {
			return err
		}
		if len(orphans) > 0 {
			more := ""
			if len(orphans) == maxOrphansReported {
				more = fmt.Sprintf(" (first %d shown)", maxOrphansReported)
			}
			return fmt.Errorf("%w: %d relationship(s) would be invalid%s: %s",
				store.ErrSchemaOrphans, len(orphans), more, strings.Join(orphans, "; "))
		}
		rev = m.head + 1
		if err := tx.Bucket(bucketSchemas).Put(revKey(rev), []byte(text)); err != nil {
			return err
		}
		// Cached before the commit, so that a write grouped after this one
		// in the transaction need not compile it again. Should the commit
		// fail, the next transaction sees another latest schema revision
		// and recompiles (see schemaIn).
		s.setSchema(&schemaVersion{rev: rev, compiled: compiled})
		return s.commitChange(tx, rev, &text, 0, nil)
	})
	if err != nil {
		return 0, fmt.Errorf("write schema: %w", err)
	}
	s.committed(rev)
	return rev, nil
}

// liveRels yields the current, unexpired relationships of a transaction.
func liveRels(tx *bolt.Tx, now time.Time) iter.Seq2[rel.Relationship, error] {
	return func(yield func(rel.Relationship, error) bool) {
		names := namer{}
		c := tx.Bucket(bucketRels).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			deleted, ok := deletedAt(v)
			if !ok {
				yield(rel.Relationship{}, fmt.Errorf("%w: relationship entry %q", errCorrupt, k))
				return
			}
			if deleted != 0 {
				continue
			}
			r, ok, err := visible(k, v, store.Revision(^uint64(0)), rel.Filter{}, now, names)
			if err != nil {
				yield(rel.Relationship{}, err)
				return
			}
			if ok && !yield(r, nil) {
				return
			}
		}
	}
}

// Write validates, checks preconditions and conflicts, then applies every
// mutation at one new revision; on any error the transaction rolls back and
// nothing changes.
func (s *Store) Write(ctx context.Context, preconditions []store.Precondition, mutations []store.Mutation) (store.Revision, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	// Validate against the cached schema before taking the writer's lock;
	// the transaction re-validates only if the schema changed meanwhile.
	checked := s.currentSchema()
	if checked != nil {
		if err := store.ValidateMutations(checked.compiled, mutations); err != nil {
			return 0, fmt.Errorf("write: %w", err)
		}
	}
	muts, err := prepare(mutations)
	if err != nil {
		return 0, fmt.Errorf("write: %w", err)
	}
	var rev store.Revision
	err = s.update(func(tx *bolt.Tx) error {
		sch, err := s.schemaIn(ctx, tx)
		if err != nil {
			return err
		}
		if sch == nil {
			return store.ErrNoSchema
		}
		if checked == nil || sch.rev != checked.rev {
			if err := store.ValidateMutations(sch.compiled, mutations); err != nil {
				return err
			}
		}
		m, err := readMeta(tx)
		if err != nil {
			return err
		}
		now := s.opts.Now()
		if err := checkPreconditions(tx, preconditions, now); err != nil {
			return err
		}
		rev = m.head + 1
		rels, expiry := tx.Bucket(bucketRels), tx.Bucket(bucketExpiry)
		c := rels.Cursor()
		var updates []byte
		n := 0
		// In key order, so that the B+tree is walked once, front to back.
		for _, p := range muts {
			curKey, curVal, err := current(c, p.keyText)
			if err != nil {
				return err
			}
			if curKey != nil {
				if p.op == store.Create {
					if exp, _ := bodyExpiration(curVal[8:]); exp.IsZero() || now.Before(exp) {
						return fmt.Errorf("mutation %d: %w: %s", p.index, store.ErrAlreadyExists, p.keyText)
					}
				}
				// An expired relationship counts as absent, but it is still
				// stored: end it too, so that followers can drop it.
				if err := rels.Put(curKey, withDeleted(curVal, rev)); err != nil {
					return err
				}
				if p.op == store.Delete {
					updates = appendUpdate(updates, store.Delete, p.keyText, curVal[8:])
					n++
				}
			}
			if p.op == store.Delete {
				continue
			}
			value := append(u64(0), p.body...)
			if err := rels.Put(versionKey(p.keyText, rev), value); err != nil {
				return err
			}
			if !p.expires.IsZero() {
				if err := expiry.Put(expiryKey(p.expires, p.keyText, rev), nil); err != nil {
					return err
				}
			}
			updates = appendUpdate(updates, store.Touch, p.keyText, p.body)
			n++
		}
		return s.commitChange(tx, rev, nil, n, updates)
	})
	if err != nil {
		return 0, fmt.Errorf("write: %w", err)
	}
	s.committed(rev)
	return rev, nil
}

// prepared is a mutation encoded for the store.
type prepared struct {
	index   int
	op      store.Op
	keyText []byte
	body    []byte // nil for a Delete
	expires time.Time
}

// prepare encodes mutations and sorts them by key.
func prepare(mutations []store.Mutation) ([]prepared, error) {
	out := make([]prepared, len(mutations))
	for i, m := range mutations {
		p := prepared{index: i, op: m.Op, keyText: []byte(m.Rel.Key().String())}
		if m.Op != store.Delete {
			var err error
			if p.body, err = appendBody(nil, m.Rel); err != nil {
				return nil, fmt.Errorf("mutation %d: %w", i, err)
			}
			p.expires = m.Rel.Expiration
		}
		out[i] = p
	}
	slices.SortFunc(out, func(a, b prepared) int { return bytes.Compare(a.keyText, b.keyText) })
	return out, nil
}

// current returns copies of the rels key and value of keyText's current
// version, or nils when it has none.
func current(c *bolt.Cursor, keyText []byte) ([]byte, []byte, error) {
	// Versions of keyText sort as keyText 0x00 rev; keyText 0x01 is past
	// them all and before any other key.
	seek := append(bytes.Clone(keyText), 1)
	k, _ := c.Seek(seek)
	var v []byte
	if k == nil {
		k, v = c.Last()
	} else {
		k, v = c.Prev()
	}
	if k == nil {
		return nil, nil, nil
	}
	text, _, ok := splitVersionKey(k)
	if !ok || !bytes.Equal(text, keyText) {
		return nil, nil, nil
	}
	deleted, ok := deletedAt(v)
	if !ok {
		return nil, nil, fmt.Errorf("%w: relationship entry %q", errCorrupt, k)
	}
	if deleted != 0 {
		return nil, nil, nil
	}
	return bytes.Clone(k), bytes.Clone(v), nil
}

// DeleteMatching deletes the live relationships matching filter at one new
// revision, or none when more than limit (if non-zero) match. Expired
// matches are removed too but are neither counted nor limited.
func (s *Store) DeleteMatching(ctx context.Context, preconditions []store.Precondition, filter rel.Filter, limit int) (store.Revision, int, error) {
	if err := ctx.Err(); err != nil {
		return 0, 0, err
	}
	if limit < 0 {
		return 0, 0, fmt.Errorf("delete matching: limit %d: expected 0 (no limit) or more", limit)
	}
	var rev store.Revision
	deleted := 0
	err := s.update(func(tx *bolt.Tx) error {
		m, err := readMeta(tx)
		if err != nil {
			return err
		}
		now := s.opts.Now()
		if err := checkPreconditions(tx, preconditions, now); err != nil {
			return err
		}
		type match struct{ key, value []byte }
		var matches []match
		var scanErr error
		scan(tx.Bucket(bucketRels).Cursor(), candidatePrefixes(filter), &scanPos{}, func(k, v []byte) bool {
			keyText, _, ok := splitVersionKey(k)
			d, ok2 := deletedAt(v)
			if !ok || !ok2 {
				scanErr = fmt.Errorf("%w: relationship entry %q", errCorrupt, k)
				return false
			}
			if d != 0 {
				return true
			}
			parts, ok := splitKey(keyText)
			if !ok {
				scanErr = fmt.Errorf("%w: relationship key %q", errCorrupt, keyText)
				return false
			}
			if !parts.matches(filter) {
				return true
			}
			if exp, _ := bodyExpiration(v[8:]); exp.IsZero() || now.Before(exp) {
				deleted++
			}
			matches = append(matches, match{bytes.Clone(k), bytes.Clone(v)})
			return true
		})
		if scanErr != nil {
			return scanErr
		}
		if limit > 0 && deleted > limit {
			return fmt.Errorf("%w: %d match, limit %d", store.ErrLimitExceeded, deleted, limit)
		}
		rev = m.head + 1
		rels := tx.Bucket(bucketRels)
		var updates []byte
		for _, mt := range matches {
			if err := rels.Put(mt.key, withDeleted(mt.value, rev)); err != nil {
				return err
			}
			keyText, _, _ := splitVersionKey(mt.key)
			updates = appendUpdate(updates, store.Delete, keyText, mt.value[8:])
		}
		return s.commitChange(tx, rev, nil, len(matches), updates)
	})
	if err != nil {
		return 0, 0, fmt.Errorf("delete matching: %w", err)
	}
	s.committed(rev)
	return rev, deleted, nil
}

// commitChange records the change of rev and makes rev the head.
func (s *Store) commitChange(tx *bolt.Tx, rev store.Revision, schemaText *string, n int, updates []byte) error {
	record := assembleChange(s.opts.Now(), schemaText, n, updates)
	if err := tx.Bucket(bucketChanges).Put(revKey(rev), record); err != nil {
		return err
	}
	return putMeta(tx, metaHead, rev)
}

// checkPreconditions evaluates preconditions against the live state.
func checkPreconditions(tx *bolt.Tx, pre []store.Precondition, now time.Time) error {
	for i, p := range pre {
		found, err := anyLive(tx, p.Filter, now)
		if err != nil {
			return err
		}
		if found != p.MustExist {
			want := "no relationship may match"
			if p.MustExist {
				want = "a relationship must match"
			}
			return fmt.Errorf("%w: precondition %d: %s %+v", store.ErrPreconditionFailed, i, want, p.Filter)
		}
	}
	return nil
}

func anyLive(tx *bolt.Tx, f rel.Filter, now time.Time) (bool, error) {
	found := false
	var scanErr error
	scan(tx.Bucket(bucketRels).Cursor(), candidatePrefixes(f), &scanPos{}, func(k, v []byte) bool {
		keyText, _, ok := splitVersionKey(k)
		d, ok2 := deletedAt(v)
		if !ok || !ok2 {
			scanErr = fmt.Errorf("%w: relationship entry %q", errCorrupt, k)
			return false
		}
		if d != 0 {
			return true
		}
		if parts, ok := splitKey(keyText); !ok || !parts.matches(f) {
			return true
		}
		if exp, _ := bodyExpiration(v[8:]); exp.IsZero() || now.Before(exp) {
			found = true
			return false
		}
		return true
	})
	return found, scanErr
}

func (s *Store) currentSchema() *schemaVersion {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.schema
}

// setSchema replaces the cached schema. The cache is only a hint: schemaIn
// uses it only when its revision is the transaction's latest schema
// revision, which all writers see in the same serial order.
func (s *Store) setSchema(v *schemaVersion) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.schema = v
}

// schemaIn returns the latest schema as of tx, compiled (from the cache
// unless it is stale), or nil when none was ever written.
func (s *Store) schemaIn(ctx context.Context, tx *bolt.Tx) (*schemaVersion, error) {
	k, v := tx.Bucket(bucketSchemas).Cursor().Last()
	if k == nil {
		return nil, nil
	}
	rev := store.Revision(binaryU64(k))
	if cur := s.currentSchema(); cur != nil && cur.rev == rev {
		return cur, nil
	}
	compiled, err := schema.Compile(ctx, string(v))
	if err != nil {
		return nil, fmt.Errorf("compiling the stored schema of revision %d: %w", rev, err)
	}
	sv := &schemaVersion{rev: rev, compiled: compiled}
	s.setSchema(sv)
	return sv, nil
}
