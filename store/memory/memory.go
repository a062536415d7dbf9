// Package memory is an in-process store.Store with full multi-version
// history: every committed revision stays readable and watchable until
// ForgetBefore releases it. Nothing survives the process; it backs tests and
// embeddings that need no durability.
package memory

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// ErrClosed is returned by every method of a closed Store.
var ErrClosed = errors.New("memory store is closed")

// maxOrphansReported bounds the relationships named by a refused schema write.
const maxOrphansReported = 100

// Store is an in-memory MVCC store. The zero value is not usable; call New.
type Store struct {
	now func() time.Time

	mu     sync.RWMutex
	closed bool
	head   store.Revision
	// oldest is the earliest revision still readable; changes after it are
	// retained for Watch.
	oldest store.Revision
	// changes[i] is the change of revision oldest+1+i. Elements are never
	// modified once appended, so a sub-slice taken under the lock stays valid
	// after it is released.
	changes []store.Change
	// schemas ascend by revision; the first is the one in force at oldest.
	schemas []schemaVersion
	entries map[rel.Key]*entry
	// sorted holds entries in key order; pending holds entries created since
	// sorted was last merged, so that writes stay O(batch) and the ordering
	// cost is paid by the next read.
	sorted  []*entry
	pending []*entry
	// wake is closed and replaced on every commit (and closed on Close) so
	// that watchers block without polling.
	wake chan struct{}
}

type schemaVersion struct {
	rev      store.Revision
	text     string
	compiled *schema.Schema
}

// entry is the version history of one relationship key.
type entry struct {
	key  rel.Key
	text string // key.String(), the sort order of reads
	// versions ascend by created and never overlap: each version's deleted
	// is the next one's created, or 0 while it is current.
	versions []version
}

type version struct {
	created store.Revision
	deleted store.Revision // 0: not deleted
	// rel is never modified once stored; it is cloned on the way out.
	rel rel.Relationship
}

// Option configures a Store.
type Option func(*Store)

// WithClock sets the clock that decides expiration (tests).
func WithClock(now func() time.Time) Option { return func(s *Store) { s.now = now } }

// New returns an empty store at revision zero with no schema.
func New(opts ...Option) *Store {
	s := &Store{
		now:     time.Now,
		entries: make(map[rel.Key]*entry),
		wake:    make(chan struct{}),
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

var (
	_ store.Store           = (*Store)(nil)
	_ store.HistoryReleaser = (*Store)(nil)
)

// Head returns the latest committed revision.
func (s *Store) Head(ctx context.Context) (store.Revision, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return 0, ErrClosed
	}
	return s.head, nil
}

// WriteSchema compiles text and makes it the schema from a new revision on,
// unless live relationships would be invalid under it.
func (s *Store) WriteSchema(ctx context.Context, text string) (store.Revision, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	// Compiling is the slow part and needs no lock.
	sch, err := schema.Compile(ctx, text)
	if err != nil {
		return 0, fmt.Errorf("write schema: %w: %w", store.ErrInvalidSchema, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, ErrClosed
	}
	s.ensureSorted()
	orphans, err := store.OrphansUnder(sch, s.live(s.now()), maxOrphansReported)
	if err != nil {
		return 0, fmt.Errorf("write schema: %w", err)
	}
	if len(orphans) > 0 {
		more := ""
		if len(orphans) == maxOrphansReported {
			more = fmt.Sprintf(" (first %d shown)", maxOrphansReported)
		}
		return 0, fmt.Errorf("write schema: %w: %d relationship(s) would be invalid%s: %s",
			store.ErrSchemaOrphans, len(orphans), more, strings.Join(orphans, "; "))
	}
	rev := s.head + 1
	s.schemas = append(s.schemas, schemaVersion{rev: rev, text: text, compiled: sch})
	stored := text
	s.commit(store.Change{Revision: rev, Schema: &stored})
	return rev, nil
}

// ReadSchema returns the schema text in force at rev and the revision that
// wrote it; "" and 0 when none had been written by then.
func (s *Store) ReadSchema(ctx context.Context, rev store.Revision) (string, store.Revision, error) {
	if err := ctx.Err(); err != nil {
		return "", 0, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if err := s.checkReadable(rev); err != nil {
		return "", 0, fmt.Errorf("read schema: %w", err)
	}
	if v := s.schemaAt(rev); v != nil {
		return v.text, v.rev, nil
	}
	return "", 0, nil
}

// Write validates, checks preconditions and conflicts, then applies every
// mutation at one new revision; on any error nothing changes.
func (s *Store) Write(ctx context.Context, preconditions []store.Precondition, mutations []store.Mutation) (store.Revision, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, ErrClosed
	}
	cur := s.schemaAt(s.head)
	if cur == nil {
		return 0, fmt.Errorf("write: %w", store.ErrNoSchema)
	}
	if err := store.ValidateMutations(cur.compiled, mutations); err != nil {
		return 0, fmt.Errorf("write: %w", err)
	}
	now := s.now()
	if err := s.checkPreconditions(preconditions, now); err != nil {
		return 0, fmt.Errorf("write: %w", err)
	}
	// Every conflict is found before anything is applied: that is what
	// makes the write atomic without an undo log. ValidateMutations has
	// already ensured each key appears once, so checks cannot interact.
	for i, m := range mutations {
		if m.Op != store.Create {
			continue
		}
		if v := s.current(m.Rel.Key()); v != nil && !v.rel.ExpiredAt(now) {
			return 0, fmt.Errorf("write: mutation %d: %w: %s", i, store.ErrAlreadyExists, v.rel)
		}
	}
	rev := s.head + 1
	updates := make([]store.Update, 0, len(mutations))
	for _, m := range mutations {
		switch m.Op {
		case store.Create, store.Touch:
			r := normalize(m.Rel)
			s.put(rev, r)
			updates = append(updates, store.Update{Op: store.Touch, Rel: r})
		case store.Delete:
			// An expired relationship counts as absent, but it is still
			// stored: remove it too and say so, so that followers can drop it.
			if old, ok := s.remove(rev, m.Rel.Key()); ok {
				updates = append(updates, store.Update{Op: store.Delete, Rel: old})
			}
		}
	}
	s.commit(store.Change{Revision: rev, Updates: updates})
	return rev, nil
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
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, 0, ErrClosed
	}
	now := s.now()
	if err := s.checkPreconditions(preconditions, now); err != nil {
		return 0, 0, fmt.Errorf("delete matching: %w", err)
	}
	s.ensureSorted()
	var live, expired []*entry
	for _, e := range slices.Concat(s.candidates(filter)...) {
		v := e.current()
		if v == nil || !filter.Matches(v.rel) {
			continue
		}
		if v.rel.ExpiredAt(now) {
			expired = append(expired, e)
		} else {
			live = append(live, e)
		}
	}
	if limit > 0 && len(live) > limit {
		return 0, 0, fmt.Errorf("delete matching: %w: %d match, limit %d", store.ErrLimitExceeded, len(live), limit)
	}
	rev := s.head + 1
	updates := make([]store.Update, 0, len(live)+len(expired))
	for _, e := range slices.Concat(live, expired) {
		if old, ok := s.remove(rev, e.key); ok {
			updates = append(updates, store.Update{Op: store.Delete, Rel: old})
		}
	}
	s.commit(store.Change{Revision: rev, Updates: updates})
	return rev, len(live), nil
}

// A Read copies relationships in chunks, one per lock: the lock is
// released between chunks, so a long read does not block writers. Chunks
// grow from firstReadChunk to readChunk, so a caller that takes one short
// page through a cursor copies little more than it takes.
const (
	firstReadChunk = 128
	readChunk      = 1024
)

// Read yields the relationships matching filter as of rev in key order,
// leaving out those expired at the start of the call, from the first key
// after after (when given). It copies a chunk of them under the lock,
// finding where to start by binary search, and yields it after releasing
// the lock, so the caller may use the store while iterating.
func (s *Store) Read(ctx context.Context, rev store.Revision, filter rel.Filter, after *rel.Key) iter.Seq2[rel.Relationship, error] {
	return func(yield func(rel.Relationship, error) bool) {
		now := s.now()
		var from string
		if after != nil {
			from = after.String()
		}
		started := after != nil
		for size := firstReadChunk; ; size = min(2*size, readChunk) {
			if err := ctx.Err(); err != nil {
				yield(rel.Relationship{}, err)
				return
			}
			rels, more, err := s.chunk(rev, filter, from, started, size, now)
			if err != nil {
				yield(rel.Relationship{}, fmt.Errorf("read: %w", err))
				return
			}
			for _, r := range rels {
				if !yield(cloneRel(r), nil) {
					return
				}
			}
			if !more {
				return
			}
			from, started = rels[len(rels)-1].Key().String(), true
		}
	}
}

// chunk returns up to size relationships visible at rev that match
// filter, in key order after the key text from (from the first key when
// !after), and whether more may follow.
func (s *Store) chunk(rev store.Revision, filter rel.Filter, from string, after bool, size int, now time.Time) ([]rel.Relationship, bool, error) {
	s.mu.RLock()
	if len(s.pending) > 0 {
		// Merging new keys into the order needs the write lock; reading
		// under it too keeps a stream of writers from starving this read.
		s.mu.RUnlock()
		s.mu.Lock()
		defer s.mu.Unlock()
		s.ensureSorted()
	} else {
		defer s.mu.RUnlock()
	}
	if err := s.checkReadable(rev); err != nil {
		return nil, false, err
	}
	var out []rel.Relationship
	for _, entries := range s.candidates(filter) {
		if after {
			entries = entries[sort.Search(len(entries), func(i int) bool { return entries[i].text > from }):]
		}
		for _, e := range entries {
			if len(out) == size {
				return out, true, nil
			}
			v := e.at(rev)
			if v == nil || v.rel.ExpiredAt(now) || !filter.Matches(v.rel) {
				continue
			}
			out = append(out, v.rel)
		}
	}
	return out, false, nil
}

// watchPage bounds the changes one step of a Watch copies under the lock.
const watchPage = 256

// Watch yields every change after `after` in revision order, then waits for
// new ones until ctx is done, when it ends without an error.
func (s *Store) Watch(ctx context.Context, after store.Revision) iter.Seq2[store.Change, error] {
	return store.ChangeFeed{Changes: s.changesAfter, Wake: s.wakeChan}.Watch(ctx, after)
}

// changesAfter copies up to watchPage changes after rev.
func (s *Store) changesAfter(_ context.Context, rev store.Revision) ([]store.Change, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	// Changes after rev are retained exactly when rev is readable.
	if err := s.checkReadable(rev); err != nil {
		return nil, err
	}
	page := s.changes[rev-s.oldest:]
	page = page[:min(len(page), watchPage)]
	out := make([]store.Change, len(page))
	for i, ch := range page {
		out[i] = cloneChange(ch)
	}
	return out, nil
}

// wakeChan returns the channel the next commit (or Close) closes.
func (s *Store) wakeChan() <-chan struct{} {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.wake
}

// ForgetBefore releases history older than rev (at most the head): reads at
// earlier revisions and watches from before it fail with
// store.ErrRevisionGone afterwards. Expired relationships are dropped too,
// since no read can see them again.
func (s *Store) ForgetBefore(ctx context.Context, rev store.Revision) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	rev = min(rev, s.head)
	if rev <= s.oldest {
		return nil
	}
	s.changes = slices.Clone(s.changes[rev-s.oldest:])
	if i := sort.Search(len(s.schemas), func(i int) bool { return s.schemas[i].rev > rev }); i > 1 {
		s.schemas = slices.Clone(s.schemas[i-1:])
	}
	now := s.now()
	gone := false
	for k, e := range s.entries {
		kept := e.versions[:0]
		for _, v := range e.versions {
			if (v.deleted != 0 && v.deleted <= rev) || v.rel.ExpiredAt(now) {
				continue
			}
			kept = append(kept, v)
		}
		clear(e.versions[len(kept):])
		e.versions = kept
		if len(kept) == 0 {
			delete(s.entries, k)
			gone = true
		}
	}
	if gone {
		dropped := func(e *entry) bool { return s.entries[e.key] != e }
		s.sorted = slices.DeleteFunc(s.sorted, dropped)
		s.pending = slices.DeleteFunc(s.pending, dropped)
	}
	s.oldest = rev
	return nil
}

// Close wakes every watcher and makes every later call fail with ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		close(s.wake)
	}
	return nil
}

// commit records a change at the next revision and wakes watchers. Callers
// hold the write lock.
func (s *Store) commit(ch store.Change) {
	s.changes = append(s.changes, ch)
	s.head = ch.Revision
	close(s.wake)
	s.wake = make(chan struct{})
}

func (s *Store) checkReadable(rev store.Revision) error {
	switch {
	case s.closed:
		return ErrClosed
	case rev > s.head:
		return fmt.Errorf("%w: revision %d, head is %d", store.ErrFutureRevision, rev, s.head)
	case rev < s.oldest:
		return fmt.Errorf("%w: revision %d, oldest retained is %d", store.ErrRevisionGone, rev, s.oldest)
	}
	return nil
}

func (s *Store) schemaAt(rev store.Revision) *schemaVersion {
	i := sort.Search(len(s.schemas), func(i int) bool { return s.schemas[i].rev > rev })
	if i == 0 {
		return nil
	}
	return &s.schemas[i-1]
}

func (s *Store) checkPreconditions(pre []store.Precondition, now time.Time) error {
	if len(pre) == 0 {
		return nil
	}
	s.ensureSorted()
	for i, p := range pre {
		if s.anyLive(p.Filter, now) != p.MustExist {
			want := "no relationship may match"
			if p.MustExist {
				want = "a relationship must match"
			}
			return fmt.Errorf("%w: precondition %d: %s %+v", store.ErrPreconditionFailed, i, want, p.Filter)
		}
	}
	return nil
}

func (s *Store) anyLive(f rel.Filter, now time.Time) bool {
	for _, entries := range s.candidates(f) {
		for _, e := range entries {
			if v := e.current(); v != nil && !v.rel.ExpiredAt(now) && f.Matches(v.rel) {
				return true
			}
		}
	}
	return false
}

// live yields the current, unexpired relationships in key order. Callers
// hold the lock and have called ensureSorted.
func (s *Store) live(now time.Time) iter.Seq2[rel.Relationship, error] {
	return func(yield func(rel.Relationship, error) bool) {
		for _, e := range s.sorted {
			if v := e.current(); v != nil && !v.rel.ExpiredAt(now) {
				if !yield(v.rel, nil) {
					return
				}
			}
		}
	}
}

// candidates returns, in key order, the ranges of entries that can match
// f: one per resource ID when the filter names a type and IDs, one for the
// type when it names only a type, else everything. Callers hold the lock
// and have called ensureSorted; matching is still up to them.
func (s *Store) candidates(f rel.Filter) [][]*entry {
	if f.ResourceType == "" {
		return [][]*entry{s.sorted}
	}
	if len(f.ResourceIDs) == 0 {
		return [][]*entry{s.prefixRange(f.ResourceType + ":")}
	}
	prefixes := make([]string, 0, len(f.ResourceIDs))
	for _, id := range f.ResourceIDs {
		prefixes = append(prefixes, f.ResourceType+":"+id+"#")
	}
	// Types and IDs cannot contain ':' or '#', so these prefixes are never
	// nested: their ranges are disjoint and sort like the prefixes.
	slices.Sort(prefixes)
	prefixes = slices.Compact(prefixes)
	out := make([][]*entry, len(prefixes))
	for i, p := range prefixes {
		out[i] = s.prefixRange(p)
	}
	return out
}

func (s *Store) prefixRange(prefix string) []*entry {
	lo := sort.Search(len(s.sorted), func(i int) bool { return s.sorted[i].text >= prefix })
	n := sort.Search(len(s.sorted)-lo, func(i int) bool { return !strings.HasPrefix(s.sorted[lo+i].text, prefix) })
	return s.sorted[lo : lo+n : lo+n]
}

// ensureSorted merges pending entries into sorted. Callers hold the write
// lock.
func (s *Store) ensureSorted() {
	if len(s.pending) == 0 {
		return
	}
	byText := func(a, b *entry) int { return strings.Compare(a.text, b.text) }
	slices.SortFunc(s.pending, byText)
	merged := make([]*entry, 0, len(s.sorted)+len(s.pending))
	i, j := 0, 0
	for i < len(s.sorted) && j < len(s.pending) {
		if s.sorted[i].text < s.pending[j].text {
			merged = append(merged, s.sorted[i])
			i++
		} else {
			merged = append(merged, s.pending[j])
			j++
		}
	}
	merged = append(merged, s.sorted[i:]...)
	merged = append(merged, s.pending[j:]...)
	s.sorted = merged
	s.pending = nil
}

func (s *Store) current(k rel.Key) *version {
	if e := s.entries[k]; e != nil {
		return e.current()
	}
	return nil
}

// put makes r the current version of its key from rev on.
func (s *Store) put(rev store.Revision, r rel.Relationship) {
	k := r.Key()
	e := s.entries[k]
	if e == nil {
		e = &entry{key: k, text: k.String()}
		s.entries[k] = e
		s.pending = append(s.pending, e)
	}
	if v := e.current(); v != nil {
		v.deleted = rev
	}
	e.versions = append(e.versions, version{created: rev, rel: r})
}

// remove ends the current version of k at rev, returning it.
func (s *Store) remove(rev store.Revision, k rel.Key) (rel.Relationship, bool) {
	v := s.current(k)
	if v == nil {
		return rel.Relationship{}, false
	}
	v.deleted = rev
	return v.rel, true
}

func (e *entry) current() *version {
	if n := len(e.versions); n > 0 && e.versions[n-1].deleted == 0 {
		return &e.versions[n-1]
	}
	return nil
}

// at returns the version visible at rev, or nil.
func (e *entry) at(rev store.Revision) *version {
	for i := len(e.versions) - 1; i >= 0; i-- {
		v := &e.versions[i]
		if v.created <= rev {
			if v.deleted == 0 || v.deleted > rev {
				return v
			}
			return nil
		}
	}
	return nil
}

// normalize deep-copies a relationship on the way in, writing an empty
// caveat context as nil so that both spellings read back alike.
func normalize(r rel.Relationship) rel.Relationship {
	r = cloneRel(r)
	if r.Caveat != nil && len(r.Caveat.Context) == 0 {
		r.Caveat.Context = nil
	}
	return r
}

// cloneRel copies a relationship down to the nested lists and maps of its
// caveat context (rel.Relationship.Clone copies only the top-level map), so
// no caller can reach stored state.
func cloneRel(r rel.Relationship) rel.Relationship {
	r = r.Clone()
	if r.Caveat != nil {
		for k, v := range r.Caveat.Context {
			r.Caveat.Context[k] = cloneValue(v)
		}
	}
	return r
}

// cloneValue copies the container types that JSON-shaped context holds.
func cloneValue(v any) any {
	switch v := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(v))
		for k, x := range v {
			m[k] = cloneValue(x)
		}
		return m
	case []any:
		l := make([]any, len(v))
		for i, x := range v {
			l[i] = cloneValue(x)
		}
		return l
	case []string:
		return slices.Clone(v)
	}
	return v
}

func cloneChange(ch store.Change) store.Change {
	out := store.Change{Revision: ch.Revision}
	if ch.Schema != nil {
		text := *ch.Schema
		out.Schema = &text
	}
	if len(ch.Updates) > 0 {
		out.Updates = make([]store.Update, len(ch.Updates))
		for i, u := range ch.Updates {
			out.Updates[i] = store.Update{Op: u.Op, Rel: cloneRel(u.Rel)}
		}
	}
	return out
}
