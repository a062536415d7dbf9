package store

import (
	"context"
	"errors"
	"fmt"
	"unicode/utf8"
)

// Record is a durable piece of server state that is not a relationship —
// a capability-token revocation, an approval request — identified by kind
// and id. Records are written in transactions at new revisions of the same
// sequence as relationships and carried in Change.Records, so every replica
// following the change stream sees them in revision order.
type Record struct {
	// Kind groups records by their owner, e.g. "capability.revocation".
	Kind string
	ID   string
	Data []byte
	// Revision is the revision that wrote this version (set by the store).
	Revision Revision
}

// RecordMutation is one record change within WriteRecords: Create writes a
// record that must not exist, Touch writes or replaces one, Delete removes
// one if it exists.
type RecordMutation struct {
	Op     Op
	Record Record
}

// RecordUpdate is one applied record change in the change stream: a Touch
// carries the record as written, a Delete the record that was removed.
type RecordUpdate struct {
	Op     Op
	Record Record
}

// RecordStore is implemented by stores that keep records (the memory,
// embedded and SQL stores all do).
type RecordStore interface {
	// WriteRecords applies mutations atomically at one new revision; on any
	// error nothing is written. A Create of an existing record fails with
	// ErrRecordExists.
	WriteRecords(ctx context.Context, mutations []RecordMutation) (Revision, error)
	// ReadRecords returns the current records of kind, sorted by id, and
	// the head revision they are current at: a follower loads them and
	// watches the change stream after that revision.
	ReadRecords(ctx context.Context, kind string) ([]Record, Revision, error)
}

// Record limits (README limits table).
const (
	MaxRecordKindLength = 64
	MaxRecordIDLength   = 1024
	MaxRecordDataLength = 64 << 10
	MaxRecordMutations  = 1000
)

// Errors of record writes.
var (
	ErrInvalidRecord = errors.New("invalid record")
	ErrRecordExists  = errors.New("record already exists")
)

// ValidateRecordMutations checks mutations' shapes and that each record is
// changed once, returning an error wrapping ErrInvalidRecord that names the
// offending mutation.
func ValidateRecordMutations(mutations []RecordMutation) error {
	if len(mutations) == 0 {
		return fmt.Errorf("%w: no mutations", ErrInvalidRecord)
	}
	if len(mutations) > MaxRecordMutations {
		return fmt.Errorf("%w: %d mutations, at most %d", ErrTooManyMutations, len(mutations), MaxRecordMutations)
	}
	type key struct{ kind, id string }
	seen := make(map[key]int, len(mutations))
	for i, m := range mutations {
		if m.Op != Create && m.Op != Touch && m.Op != Delete {
			return fmt.Errorf("%w: mutation %d: unknown operation %d", ErrInvalidRecord, i, m.Op)
		}
		if err := ValidateRecordKey(m.Record.Kind, m.Record.ID); err != nil {
			return fmt.Errorf("%w: mutation %d: %w", ErrInvalidRecord, i, err)
		}
		if len(m.Record.Data) > MaxRecordDataLength {
			return fmt.Errorf("%w: mutation %d (%s/%s): data is %d bytes, at most %d", ErrInvalidRecord, i, m.Record.Kind, m.Record.ID, len(m.Record.Data), MaxRecordDataLength)
		}
		k := key{m.Record.Kind, m.Record.ID}
		if j, dup := seen[k]; dup {
			return fmt.Errorf("%w: mutations %d and %d both change %s/%s", ErrInvalidRecord, j, i, k.kind, k.id)
		}
		seen[k] = i
	}
	return nil
}

// ValidateRecordKey checks a record's kind (lowercase letters, digits, '.',
// '_' and '-', at most MaxRecordKindLength bytes) and id (non-empty UTF-8 of
// at most MaxRecordIDLength bytes with no NUL).
func ValidateRecordKey(kind, id string) error {
	if kind == "" || len(kind) > MaxRecordKindLength {
		return fmt.Errorf("kind %q: expected 1 to %d bytes", kind, MaxRecordKindLength)
	}
	for _, c := range []byte(kind) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("kind %q: character %q is not allowed (allowed: a-z 0-9 . _ -)", kind, c)
		}
	}
	if id == "" || len(id) > MaxRecordIDLength {
		return fmt.Errorf("id of kind %s: expected 1 to %d bytes, got %d", kind, MaxRecordIDLength, len(id))
	}
	if !utf8.ValidString(id) {
		return fmt.Errorf("id of kind %s: not valid UTF-8", kind)
	}
	for i := 0; i < len(id); i++ {
		if id[i] == 0 {
			return fmt.Errorf("id of kind %s: contains NUL", kind)
		}
	}
	return nil
}

// CloneRecord copies a record's data, so that no caller can reach stored
// state.
func CloneRecord(r Record) Record {
	if r.Data != nil {
		r.Data = append([]byte{}, r.Data...)
	}
	return r
}
