package embedded

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/mandate-authz/mandate/store"
)

// Records live in two buckets beside the format-1 layout (see encode.go),
// created by the first record write, so stores without records are
// unchanged:
//
//	records         kind 0x00 id -> u64(rev written) data
//	record_changes  u64(rev) -> uvarint(n) n × (op(1) bytes(kind) bytes(id) u64(rev) bytes(data))
//
// where bytes(x) is uvarint(len) x. A record write also records an empty
// relationship change at its revision, so that the head, Watch and garbage
// collection treat it like any other write; record changes of revisions at
// or before the oldest retained one are dropped by later record writes.
var (
	bucketRecords       = []byte("records")
	bucketRecordChanges = []byte("record_changes")
)

var _ store.RecordStore = (*Store)(nil)

func recordKey(kind, id string) []byte {
	k := make([]byte, 0, len(kind)+1+len(id))
	k = append(k, kind...)
	k = append(k, 0)
	return append(k, id...)
}

// WriteRecords applies record mutations at one new revision; on any error
// the transaction rolls back and nothing changes.
func (s *Store) WriteRecords(ctx context.Context, mutations []store.RecordMutation) (store.Revision, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err := store.ValidateRecordMutations(mutations); err != nil {
		return 0, fmt.Errorf("write records: %w", err)
	}
	var rev store.Revision
	err := s.update(func(tx *bolt.Tx) error {
		m, err := readMeta(tx)
		if err != nil {
			return err
		}
		rev = m.head + 1
		recs, err := tx.CreateBucketIfNotExists(bucketRecords)
		if err != nil {
			return err
		}
		changes, err := tx.CreateBucketIfNotExists(bucketRecordChanges)
		if err != nil {
			return err
		}
		var updates []byte
		n := 0
		for i, mt := range mutations {
			key := recordKey(mt.Record.Kind, mt.Record.ID)
			old := recs.Get(key)
			switch {
			case mt.Op == store.Create && old != nil:
				return fmt.Errorf("mutation %d: %w: %s/%s", i, store.ErrRecordExists, mt.Record.Kind, mt.Record.ID)
			case mt.Op == store.Delete:
				if old == nil {
					continue
				}
				if len(old) < 8 {
					return fmt.Errorf("%w: record %s/%s", errCorrupt, mt.Record.Kind, mt.Record.ID)
				}
				updates = appendRecordUpdate(updates, store.Delete, mt.Record.Kind, mt.Record.ID, store.Revision(binaryU64(old)), old[8:])
				if err := recs.Delete(key); err != nil {
					return err
				}
			default:
				if err := recs.Put(key, append(revKey(rev), mt.Record.Data...)); err != nil {
					return err
				}
				updates = appendRecordUpdate(updates, store.Touch, mt.Record.Kind, mt.Record.ID, rev, mt.Record.Data)
			}
			n++
		}
		record := binary.AppendUvarint(nil, uint64(n))
		if err := changes.Put(revKey(rev), append(record, updates...)); err != nil {
			return err
		}
		if err := pruneRecordChanges(changes, m.oldest); err != nil {
			return err
		}
		return s.commitChange(tx, rev, nil, 0, nil)
	})
	if err != nil {
		return 0, fmt.Errorf("write records: %w", err)
	}
	s.committed(rev)
	return rev, nil
}

// pruneRecordChanges drops record changes no watch can ask for again.
func pruneRecordChanges(b *bolt.Bucket, oldest store.Revision) error {
	// Seek the first key again after each delete: a bbolt cursor's Next
	// after Delete skips the key that followed the deleted one.
	c := b.Cursor()
	for k, _ := c.First(); k != nil && store.Revision(binaryU64(k)) <= oldest; k, _ = c.First() {
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return nil
}

func appendRecordUpdate(b []byte, op store.Op, kind, id string, rev store.Revision, data []byte) []byte {
	b = append(b, byte(op))
	b = binary.AppendUvarint(b, uint64(len(kind)))
	b = append(b, kind...)
	b = binary.AppendUvarint(b, uint64(len(id)))
	b = append(b, id...)
	b = binary.BigEndian.AppendUint64(b, uint64(rev))
	b = binary.AppendUvarint(b, uint64(len(data)))
	return append(b, data...)
}

// recordChangesAt returns the record updates of revision rev (nil when it
// wrote none).
func recordChangesAt(tx *bolt.Tx, rev store.Revision) ([]store.RecordUpdate, error) {
	b := tx.Bucket(bucketRecordChanges)
	if b == nil {
		return nil, nil
	}
	v := b.Get(revKey(rev))
	if v == nil {
		return nil, nil
	}
	corrupt := fmt.Errorf("%w: record changes of revision %d", errCorrupt, rev)
	n, w := binary.Uvarint(v)
	if w <= 0 || n > uint64(len(v)) {
		return nil, corrupt
	}
	v = v[w:]
	out := make([]store.RecordUpdate, 0, n)
	for range n {
		if len(v) < 1 {
			return nil, corrupt
		}
		op := store.Op(v[0])
		kind, rest, ok := readBytes(v[1:])
		if !ok || (op != store.Touch && op != store.Delete) {
			return nil, corrupt
		}
		id, rest, ok := readBytes(rest)
		if !ok || len(rest) < 8 {
			return nil, corrupt
		}
		written := store.Revision(binaryU64(rest))
		data, rest, ok := readBytes(rest[8:])
		if !ok {
			return nil, corrupt
		}
		out = append(out, store.RecordUpdate{Op: op, Record: store.Record{
			Kind: string(kind), ID: string(id), Data: bytes.Clone(data), Revision: written,
		}})
		v = rest
	}
	return out, nil
}

// ReadRecords returns the current records of kind, sorted by id, and the
// head they are current at.
func (s *Store) ReadRecords(ctx context.Context, kind string) ([]store.Record, store.Revision, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	var out []store.Record
	var head store.Revision
	err := s.view(func(tx *bolt.Tx) error {
		m, err := readMeta(tx)
		if err != nil {
			return err
		}
		head = m.head
		b := tx.Bucket(bucketRecords)
		if b == nil {
			return nil
		}
		prefix := recordKey(kind, "")
		c := b.Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			if len(v) < 8 {
				return fmt.Errorf("%w: record %q", errCorrupt, k)
			}
			out = append(out, store.Record{Kind: kind, ID: string(k[len(prefix):]), Revision: store.Revision(binaryU64(v)), Data: bytes.Clone(v[8:])})
		}
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("read records: %w", err)
	}
	return out, head, nil
}
