package embedded

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// On-disk layout (format 1). Buckets:
//
//	meta     "id" -> store UUID; "format" -> formatVersion; "head", "oldest" -> u64
//	rels     keyText 0x00 u64(created) -> u64(deleted, 0 while current) body
//	changes  u64(rev) -> change record (see assembleChange)
//	schemas  u64(rev) -> schema text written at rev
//	expiry   i64(sec) u32(nsec) keyText 0x00 u64(created) -> nothing
//
// Integers are big-endian so that byte order is numeric order. keyText is
// rel.Key.String(): IDs and names cannot contain 0x00, so every version of a
// key sorts together and keys sort exactly as their text, which is the order
// Read promises. body is a relationship's caveat and expiration:
//
//	flags(1) [i64 sec, u32 nsec if flagExpires] [uvarint len, name, uvarint len, context JSON if flagCaveat]
const formatVersion = 1

var (
	bucketMeta    = []byte("meta")
	bucketRels    = []byte("rels")
	bucketChanges = []byte("changes")
	bucketSchemas = []byte("schemas")
	bucketExpiry  = []byte("expiry")

	metaID     = []byte("id")
	metaFormat = []byte("format")
	metaHead   = []byte("head")
	metaOldest = []byte("oldest")
)

const (
	flagExpires byte = 1 << iota
	flagCaveat
)

// changeFlagSchema marks a change record that carries schema text.
const changeFlagSchema byte = 1

// changeRecordVersion leads every change record, so the format can evolve.
const changeRecordVersion byte = 1

// errCorrupt reports data that does not decode; it means the file was
// damaged or written by an incompatible version.
var errCorrupt = errors.New("embedded store: corrupt data")

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func revKey(rev store.Revision) []byte { return u64(uint64(rev)) }

// versionKey is the rels key of the version of keyText created at rev.
func versionKey(keyText []byte, created store.Revision) []byte {
	k := make([]byte, 0, len(keyText)+9)
	k = append(k, keyText...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, uint64(created))
}

// splitVersionKey returns the key text and creation revision of a rels key.
func splitVersionKey(k []byte) ([]byte, store.Revision, bool) {
	if len(k) < 10 || k[len(k)-9] != 0 {
		return nil, 0, false
	}
	return k[:len(k)-9], store.Revision(binary.BigEndian.Uint64(k[len(k)-8:])), true
}

// deletedAt reads the deletion revision at the front of a rels value.
func deletedAt(v []byte) (store.Revision, bool) {
	if len(v) < 9 {
		return 0, false
	}
	return store.Revision(binary.BigEndian.Uint64(v)), true
}

// withDeleted returns a copy of a rels value with its deletion revision set.
func withDeleted(v []byte, rev store.Revision) []byte {
	out := make([]byte, len(v))
	copy(out, v)
	binary.BigEndian.PutUint64(out, uint64(rev))
	return out
}

// appendBody encodes a relationship's caveat and expiration.
func appendBody(b []byte, r rel.Relationship) ([]byte, error) {
	var flags byte
	if !r.Expiration.IsZero() {
		flags |= flagExpires
	}
	if r.Caveat != nil {
		flags |= flagCaveat
	}
	b = append(b, flags)
	if flags&flagExpires != 0 {
		b = appendTime(b, r.Expiration)
	}
	if flags&flagCaveat != 0 {
		b = binary.AppendUvarint(b, uint64(len(r.Caveat.Name)))
		b = append(b, r.Caveat.Name...)
		var ctx []byte
		if len(r.Caveat.Context) > 0 {
			var err error
			if ctx, err = json.Marshal(r.Caveat.Context); err != nil {
				return nil, fmt.Errorf("%w: caveat context of %s is not JSON-encodable: %w", store.ErrInvalidRelationship, r.Key(), err)
			}
		}
		b = binary.AppendUvarint(b, uint64(len(ctx)))
		b = append(b, ctx...)
	}
	return b, nil
}

// appendTime encodes an instant as seconds (sign bit flipped, so that byte
// order is time order) and nanoseconds: the full range of time.Time, unlike
// Unix nanoseconds, which end in 2262.
func appendTime(b []byte, t time.Time) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(t.Unix())^(1<<63))
	return binary.BigEndian.AppendUint32(b, uint32(t.Nanosecond()))
}

func readTime(b []byte) (time.Time, []byte, bool) {
	if len(b) < 12 {
		return time.Time{}, nil, false
	}
	sec := int64(binary.BigEndian.Uint64(b) ^ (1 << 63))
	nsec := int64(binary.BigEndian.Uint32(b[8:]))
	return time.Unix(sec, nsec).UTC(), b[12:], true
}

// bodyExpiration reads just the expiration of a body (zero: none).
func bodyExpiration(b []byte) (time.Time, bool) {
	if len(b) < 1 {
		return time.Time{}, false
	}
	if b[0]&flagExpires == 0 {
		return time.Time{}, true
	}
	t, _, ok := readTime(b[1:])
	return t, ok
}

// decodeBody fills r's caveat and expiration from a body and returns the
// bytes after it. Every value is freshly allocated.
func decodeBody(b []byte, r *rel.Relationship) ([]byte, error) {
	if len(b) < 1 {
		return nil, errCorrupt
	}
	flags := b[0]
	b = b[1:]
	if flags&flagExpires != 0 {
		t, rest, ok := readTime(b)
		if !ok {
			return nil, errCorrupt
		}
		r.Expiration, b = t, rest
	}
	if flags&flagCaveat != 0 {
		name, rest, ok := readBytes(b)
		if !ok {
			return nil, errCorrupt
		}
		ctx, rest, ok := readBytes(rest)
		if !ok {
			return nil, errCorrupt
		}
		b = rest
		r.Caveat = &rel.Caveat{Name: string(name)}
		if len(ctx) > 0 {
			if err := json.Unmarshal(ctx, &r.Caveat.Context); err != nil {
				return nil, fmt.Errorf("%w: caveat context: %w", errCorrupt, err)
			}
		}
	}
	return b, nil
}

func readBytes(b []byte) ([]byte, []byte, bool) {
	n, w := binary.Uvarint(b)
	if w <= 0 || uint64(len(b)-w) < n {
		return nil, nil, false
	}
	return b[w : w+int(n)], b[w+int(n):], true
}

// namer turns key parts into strings, reusing one string per distinct type
// and relation name (there are few), so that a large load allocates only
// the object IDs.
type namer map[string]string

const maxNames = 4096

func (n namer) name(b []byte) string {
	if s, ok := n[string(b)]; ok {
		return s
	}
	s := string(b)
	if len(n) < maxNames {
		n[s] = s
	}
	return s
}

// parseKey reads a key text: type:id#relation@type:id[#relation].
func parseKey(text []byte, names namer) (rel.Key, bool) {
	p, ok := splitKey(text)
	if !ok {
		return rel.Key{}, false
	}
	return p.key(names), true
}

// key allocates the key's strings, sharing type and relation names.
func (p keyParts) key(names namer) rel.Key {
	k := rel.Key{
		Resource: rel.Object{Type: names.name(p.resType), ID: string(p.resID)},
		Relation: names.name(p.relation),
		Subject:  rel.Subject{Type: names.name(p.subjType), ID: string(p.subjID)},
	}
	if len(p.subjRel) > 0 {
		k.Subject.Relation = names.name(p.subjRel)
	}
	return k
}

// decodeVersion decodes a rels entry into a relationship.
func decodeVersion(keyText, v []byte, names namer) (rel.Relationship, error) {
	k, ok := parseKey(keyText, names)
	if !ok {
		return rel.Relationship{}, fmt.Errorf("%w: relationship key %q", errCorrupt, keyText)
	}
	r := rel.Relationship{Resource: k.Resource, Relation: k.Relation, Subject: k.Subject}
	if _, err := decodeBody(v[8:], &r); err != nil {
		return rel.Relationship{}, fmt.Errorf("relationship %s: %w", keyText, err)
	}
	return r, nil
}

// A change record holds one revision's change:
//
//	version(1) i64(commit unix nanos) flags(1) [uvarint len, schema]
//	uvarint(n) n × (op(1) uvarint len, keyText, body)
//
// Writers append updates as raw bytes (a Delete's body is copied from the
// stored version, never decoded), then assemble the record.

// appendUpdate appends one update of a change record.
func appendUpdate(b []byte, op store.Op, keyText, body []byte) []byte {
	b = append(b, byte(op))
	b = binary.AppendUvarint(b, uint64(len(keyText)))
	b = append(b, keyText...)
	return append(b, body...)
}

// assembleChange builds a change record from n updates appended by
// appendUpdate.
func assembleChange(commit time.Time, schemaText *string, n int, updates []byte) []byte {
	size := 32 + len(updates)
	if schemaText != nil {
		size += len(*schemaText)
	}
	b := make([]byte, 0, size)
	b = append(b, changeRecordVersion)
	b = binary.BigEndian.AppendUint64(b, uint64(commit.UnixNano()))
	var flags byte
	if schemaText != nil {
		flags |= changeFlagSchema
	}
	b = append(b, flags)
	if schemaText != nil {
		b = binary.AppendUvarint(b, uint64(len(*schemaText)))
		b = append(b, *schemaText...)
	}
	b = binary.AppendUvarint(b, uint64(n))
	return append(b, updates...)
}

// changeTime reads the commit time of a change record.
func changeTime(v []byte) (time.Time, bool) {
	if len(v) < 10 || v[0] != changeRecordVersion {
		return time.Time{}, false
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(v[1:]))), true
}

// readChange splits a change record into its schema text (nil when none)
// and calls fn for each update with its raw key text and body.
func readChange(v []byte, fn func(op store.Op, keyText, body []byte) error) (schemaText *string, err error) {
	if len(v) < 10 || v[0] != changeRecordVersion {
		return nil, errCorrupt
	}
	flags := v[9]
	b := v[10:]
	if flags&changeFlagSchema != 0 {
		text, rest, ok := readBytes(b)
		if !ok {
			return nil, errCorrupt
		}
		s := string(text)
		schemaText, b = &s, rest
	}
	n, w := binary.Uvarint(b)
	if w <= 0 || n > uint64(len(b)) {
		return nil, errCorrupt
	}
	b = b[w:]
	for range n {
		if len(b) < 1 {
			return nil, errCorrupt
		}
		op := store.Op(b[0])
		keyText, rest, ok := readBytes(b[1:])
		if !ok || (op != store.Touch && op != store.Delete) {
			return nil, errCorrupt
		}
		after, ok := skipBody(rest)
		if !ok {
			return nil, errCorrupt
		}
		if err := fn(op, keyText, rest[:len(rest)-len(after)]); err != nil {
			return nil, err
		}
		b = after
	}
	return schemaText, nil
}

// decodeChange decodes the change record of revision rev.
func decodeChange(rev store.Revision, v []byte, names namer) (store.Change, error) {
	ch := store.Change{Revision: rev}
	schemaText, err := readChange(v, func(op store.Op, keyText, body []byte) error {
		k, ok := parseKey(keyText, names)
		if !ok {
			return errCorrupt
		}
		r := rel.Relationship{Resource: k.Resource, Relation: k.Relation, Subject: k.Subject}
		if _, err := decodeBody(body, &r); err != nil {
			return err
		}
		ch.Updates = append(ch.Updates, store.Update{Op: op, Rel: r})
		return nil
	})
	if err != nil {
		return store.Change{}, fmt.Errorf("change record of revision %d: %w", rev, err)
	}
	ch.Schema = schemaText
	return ch, nil
}

func skipBody(b []byte) ([]byte, bool) {
	if len(b) < 1 {
		return nil, false
	}
	flags := b[0]
	b = b[1:]
	if flags&flagExpires != 0 {
		if len(b) < 12 {
			return nil, false
		}
		b = b[12:]
	}
	if flags&flagCaveat != 0 {
		var ok bool
		if _, b, ok = readBytes(b); !ok {
			return nil, false
		}
		if _, b, ok = readBytes(b); !ok {
			return nil, false
		}
	}
	return b, true
}

// expiryKey indexes a version by its expiration.
func expiryKey(exp time.Time, keyText []byte, created store.Revision) []byte {
	k := appendTime(make([]byte, 0, 12+len(keyText)+9), exp)
	k = append(k, keyText...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, uint64(created))
}

func binaryU64(b []byte) uint64 { return binary.BigEndian.Uint64(b) }
