package memory

import (
	"cmp"
	"context"
	"fmt"
	"slices"

	"github.com/mandate-authz/mandate/store"
)

var _ store.RecordStore = (*Store)(nil)

type recordKey struct{ kind, id string }

// WriteRecords applies record mutations at one new revision; on any error
// nothing changes.
func (s *Store) WriteRecords(ctx context.Context, mutations []store.RecordMutation) (store.Revision, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err := store.ValidateRecordMutations(mutations); err != nil {
		return 0, fmt.Errorf("write records: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, ErrClosed
	}
	for i, m := range mutations {
		if _, exists := s.records[recordKey{m.Record.Kind, m.Record.ID}]; exists && m.Op == store.Create {
			return 0, fmt.Errorf("write records: mutation %d: %w: %s/%s", i, store.ErrRecordExists, m.Record.Kind, m.Record.ID)
		}
	}
	if s.records == nil {
		s.records = make(map[recordKey]store.Record)
	}
	rev := s.head + 1
	var updates []store.RecordUpdate
	for _, m := range mutations {
		k := recordKey{m.Record.Kind, m.Record.ID}
		if m.Op == store.Delete {
			if old, ok := s.records[k]; ok {
				delete(s.records, k)
				updates = append(updates, store.RecordUpdate{Op: store.Delete, Record: old})
			}
			continue
		}
		r := store.CloneRecord(m.Record)
		r.Revision = rev
		s.records[k] = r
		updates = append(updates, store.RecordUpdate{Op: store.Touch, Record: r})
	}
	s.commit(store.Change{Revision: rev, Records: updates})
	return rev, nil
}

// ReadRecords returns the current records of kind, sorted by id, and the
// head they are current at.
func (s *Store) ReadRecords(ctx context.Context, kind string) ([]store.Record, store.Revision, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, 0, ErrClosed
	}
	var out []store.Record
	for k, r := range s.records {
		if k.kind == kind {
			out = append(out, store.CloneRecord(r))
		}
	}
	slices.SortFunc(out, func(a, b store.Record) int { return cmp.Compare(a.ID, b.ID) })
	return out, s.head, nil
}

func cloneRecordUpdates(us []store.RecordUpdate) []store.RecordUpdate {
	if len(us) == 0 {
		return nil
	}
	out := make([]store.RecordUpdate, len(us))
	for i, u := range us {
		out[i] = store.RecordUpdate{Op: u.Op, Record: store.CloneRecord(u.Record)}
	}
	return out
}
