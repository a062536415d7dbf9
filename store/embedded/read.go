package embedded

import (
	"bytes"
	"context"
	"fmt"
	"iter"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// Reads and watches work in pages, each in its own short read transaction,
// and yield between pages with no transaction open: a bbolt read
// transaction held across a yield would block a writer that needs to grow
// the file, even the caller's own (the store promises that iterating never
// blocks writers). A page that finds its revision collected in the meantime
// fails with store.ErrRevisionGone rather than yield a mixed view.
//
// Pages grow from firstReadPage to readPageSize: a caller that reads one
// short page through a cursor and stops (a paged API) decodes little more
// than it takes, and a long read soon reaches the full page size.
const (
	firstReadPage = 128
	readPageSize  = 1024
	// readPageScan bounds the versions one page inspects per relationship
	// it may hold, so a selective filter over a large store does not hold
	// a transaction for long.
	readPageScan = 16
	// watchPageUpdates bounds the updates one watch page decodes (at least
	// one change is always taken).
	watchPageUpdates = 16_384
	watchPageChanges = 256
)

// ReadSchema returns the schema text in force at rev ("" when none had been
// written by then) and the revision that wrote it.
func (s *Store) ReadSchema(ctx context.Context, rev store.Revision) (string, store.Revision, error) {
	if err := ctx.Err(); err != nil {
		return "", 0, err
	}
	var text string
	var at store.Revision
	err := s.view(func(tx *bolt.Tx) error {
		m, err := readMeta(tx)
		if err != nil {
			return err
		}
		if err := m.readable(rev); err != nil {
			return err
		}
		at, text = schemaAt(tx, rev)
		return nil
	})
	if err != nil {
		return "", 0, fmt.Errorf("read schema: %w", err)
	}
	return text, at, nil
}

// schemaAt returns the revision and text of the schema in force at rev.
func schemaAt(tx *bolt.Tx, rev store.Revision) (store.Revision, string) {
	c := tx.Bucket(bucketSchemas).Cursor()
	k, _ := c.Seek(revKey(rev + 1))
	var v []byte
	if k == nil {
		k, v = c.Last()
	} else {
		k, v = c.Prev()
	}
	if k == nil {
		return 0, ""
	}
	return store.Revision(binaryU64(k)), string(v)
}

// Read yields the relationships matching filter as of rev, in key order,
// leaving out those expired at the time of the call; with a non-nil after,
// only keys after it, found by seeking rather than scanning.
func (s *Store) Read(ctx context.Context, rev store.Revision, filter rel.Filter, after *rel.Key) iter.Seq2[rel.Relationship, error] {
	return func(yield func(rel.Relationship, error) bool) {
		if err := ctx.Err(); err != nil {
			yield(rel.Relationship{}, err)
			return
		}
		now := s.opts.Now()
		prefixes := candidatePrefixes(filter)
		names := namer{}
		var pos scanPos
		if after != nil {
			pos.from = afterKeyText(*after)
		}
		for size := firstReadPage; ; size = min(2*size, readPageSize) {
			page, done, err := s.readPage(rev, filter, prefixes, &pos, size, now, names)
			if err != nil {
				yield(rel.Relationship{}, fmt.Errorf("read: %w", err))
				return
			}
			for _, r := range page {
				if !yield(r, nil) {
					return
				}
			}
			if done {
				return
			}
			if err := ctx.Err(); err != nil {
				yield(rel.Relationship{}, err)
				return
			}
		}
	}
}

func (s *Store) readPage(rev store.Revision, f rel.Filter, prefixes [][]byte, pos *scanPos, size int, now time.Time, names namer) ([]rel.Relationship, bool, error) {
	var page []rel.Relationship
	done := false
	err := s.view(func(tx *bolt.Tx) error {
		m, err := readMeta(tx)
		if err != nil {
			return err
		}
		if err := m.readable(rev); err != nil {
			return err
		}
		scanned := 0
		var decodeErr error
		done = scan(tx.Bucket(bucketRels).Cursor(), prefixes, pos, func(k, v []byte) bool {
			scanned++
			if r, ok, err := visible(k, v, rev, f, now, names); err != nil {
				decodeErr = err
				return false
			} else if ok {
				page = append(page, r)
			}
			return len(page) < size && scanned < readPageScan*size
		})
		return decodeErr
	})
	return page, done, err
}

// visible decodes a rels entry when it is the version visible at rev,
// matches f and has not expired at now.
func visible(k, v []byte, rev store.Revision, f rel.Filter, now time.Time, names namer) (rel.Relationship, bool, error) {
	keyText, created, ok := splitVersionKey(k)
	deleted, ok2 := deletedAt(v)
	if !ok || !ok2 {
		return rel.Relationship{}, false, fmt.Errorf("%w: relationship entry %q", errCorrupt, k)
	}
	if created > rev || (deleted != 0 && deleted <= rev) {
		return rel.Relationship{}, false, nil
	}
	parts, ok := splitKey(keyText)
	if !ok {
		return rel.Relationship{}, false, fmt.Errorf("%w: relationship key %q", errCorrupt, keyText)
	}
	if !parts.matches(f) {
		return rel.Relationship{}, false, nil
	}
	exp, ok := bodyExpiration(v[8:])
	if !ok {
		return rel.Relationship{}, false, fmt.Errorf("%w: relationship %s", errCorrupt, keyText)
	}
	if !exp.IsZero() && !now.Before(exp) {
		return rel.Relationship{}, false, nil
	}
	r, err := decodeVersion(keyText, v, names)
	return r, err == nil, err
}

// scanPos is where a paged scan resumes: the prefix being walked and the
// last key consumed in it; from, when set, is where every prefix's walk
// starts at the earliest.
type scanPos struct {
	prefix int
	after  []byte
	from   []byte
}

// afterKeyText is the least rels key after every version of k: versions
// are k's text, 0x00 and a revision, and every longer key text continues
// k's with a byte above 0x00.
func afterKeyText(k rel.Key) []byte {
	return append([]byte(k.String()), 1)
}

// scan walks the entries under each prefix in order (prefixes ascend and do
// not overlap), from pos, calling fn until it returns false. It reports
// whether every prefix was walked to its end; otherwise pos is left after
// the last entry fn saw.
func scan(c *bolt.Cursor, prefixes [][]byte, pos *scanPos, fn func(k, v []byte) bool) bool {
	for ; pos.prefix < len(prefixes); pos.prefix++ {
		p := prefixes[pos.prefix]
		var k, v []byte
		if pos.after != nil {
			k, v = c.Seek(pos.after)
			if k != nil && bytes.Equal(k, pos.after) {
				k, v = c.Next()
			}
		} else {
			start := p
			if bytes.Compare(pos.from, start) > 0 {
				start = pos.from
			}
			k, v = c.Seek(start)
		}
		for ; k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
			if !fn(k, v) {
				pos.after = bytes.Clone(k)
				return false
			}
		}
		pos.after = nil
	}
	return true
}

// candidatePrefixes returns the key prefixes that can hold matches of f: one
// per resource ID when the filter names a type and IDs, the type's when it
// names only a type, else everything. Types and IDs cannot contain ':' or
// '#', so these prefixes never nest: sorted, their ranges ascend.
func candidatePrefixes(f rel.Filter) [][]byte {
	if f.ResourceType == "" {
		return [][]byte{nil}
	}
	if len(f.ResourceIDs) == 0 {
		return [][]byte{[]byte(f.ResourceType + ":")}
	}
	texts := make([]string, 0, len(f.ResourceIDs))
	for _, id := range f.ResourceIDs {
		texts = append(texts, f.ResourceType+":"+id+"#")
	}
	slices.Sort(texts)
	texts = slices.Compact(texts)
	out := make([][]byte, len(texts))
	for i, t := range texts {
		out[i] = []byte(t)
	}
	return out
}

// keyParts are the fields of a key text, unallocated.
type keyParts struct {
	resType, resID, relation, subjType, subjID, subjRel []byte
}

func splitKey(text []byte) (keyParts, bool) {
	var p keyParts
	cut := func(sep byte) []byte {
		i := bytes.IndexByte(text, sep)
		if i <= 0 {
			return nil
		}
		part := text[:i]
		text = text[i+1:]
		return part
	}
	p.resType, p.resID, p.relation, p.subjType = cut(':'), cut('#'), cut('@'), cut(':')
	p.subjID, p.subjRel, _ = bytes.Cut(text, []byte{'#'})
	ok := p.resType != nil && p.resID != nil && p.relation != nil && p.subjType != nil && len(p.subjID) > 0
	return p, ok
}

// matches is rel.Filter.Matches on the key's bytes.
func (p keyParts) matches(f rel.Filter) bool {
	if f.ResourceType != "" && string(p.resType) != f.ResourceType {
		return false
	}
	if len(f.ResourceIDs) > 0 && !slices.ContainsFunc(f.ResourceIDs, func(id string) bool { return string(p.resID) == id }) {
		return false
	}
	if f.Relation != "" && string(p.relation) != f.Relation {
		return false
	}
	if f.SubjectType != "" && string(p.subjType) != f.SubjectType {
		return false
	}
	if f.SubjectID != "" && string(p.subjID) != f.SubjectID {
		return false
	}
	if f.SubjectRelation != nil && string(p.subjRel) != *f.SubjectRelation {
		return false
	}
	return true
}

// Watch yields every change after `after` in revision order, then waits for
// new ones until ctx is done, when it ends without an error. It fails with
// store.ErrRevisionGone when those changes have been collected.
func (s *Store) Watch(ctx context.Context, after store.Revision) iter.Seq2[store.Change, error] {
	names := namer{}
	changes := func(_ context.Context, rev store.Revision) ([]store.Change, error) { return s.changesAfter(rev, names) }
	return store.ChangeFeed{Changes: changes, Wake: s.wakeChan}.Watch(ctx, after)
}

// changesAfter reads a page of the changes after rev.
func (s *Store) changesAfter(rev store.Revision, names namer) ([]store.Change, error) {
	var out []store.Change
	err := s.view(func(tx *bolt.Tx) error {
		m, err := readMeta(tx)
		if err != nil {
			return err
		}
		// Changes after rev are retained exactly when rev is readable.
		if err := m.readable(rev); err != nil {
			return err
		}
		c := tx.Bucket(bucketChanges).Cursor()
		updates := 0
		for k, v := c.Seek(revKey(rev + 1)); k != nil; k, v = c.Next() {
			if len(out) > 0 && (updates >= watchPageUpdates || len(out) >= watchPageChanges) {
				break
			}
			ch, err := decodeChange(store.Revision(binaryU64(k)), v, names)
			if err != nil {
				return err
			}
			out = append(out, ch)
			updates += len(ch.Updates)
		}
		return nil
	})
	return out, err
}
