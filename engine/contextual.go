package engine

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/mandate-authz/mandate/store/rel"
)

// Contextual relationships hold for one request only (OpenFGA's contextual
// tuples). They are laid over the index as an overlay the request's checker
// reads in place of the index's edges: for every (relation, object) a
// contextual relationship touches, the overlay holds the index's edges with
// it merged in, as a write at the request's revision would leave them. The
// overlay lives and dies with the request's checker, and so does everything
// computed from it (the memo, caveat memos on its edges); the index is never
// written, so a request without them answers as if they never were.
//
// The index cannot be written under the read lock a request holds, so what
// the overlay adds that the index lacks gets numbers from ranges the index
// never reaches: objects no relationship names (overlayID), caveats and
// expirations (overlayExtra), reverse-edge vias (overlayVia).

// MaxContextualRelationships bounds the contextual relationships of one
// request at the engine; servers set a lower limit of their own.
const MaxContextualRelationships = 10_000

// ErrInvalidContextual marks a contextual relationship the schema refuses.
var ErrInvalidContextual = errors.New("invalid contextual relationship")

const (
	// overlayID numbers objects only contextual relationships name; two per
	// relationship at most, below unseenResource.
	overlayID = unseenResource - 2*MaxContextualRelationships - 1
	// overlayExtra and overlayVia number the overlay's extras and vias.
	overlayExtra = uint32(1) << 31
	overlayVia   = uint32(1) << 31
)

// overlay is one request's contextual relationships, merged with the index.
type overlay struct {
	idx  *index
	plan *plan
	// edges holds the merged edge slots, by slotKey(table, object).
	edges map[uint64][]edge
	// reverse holds the merged reverse edges, by slotKey(type, subject).
	reverse map[uint64][]revEdge
	extras  []edgeExtra
	vias    []revVia
	// ids and names number the objects only the overlay names, by type.
	ids   map[sym]map[string]oid
	names map[oid]string
	// rels are the relationships, as given, for explanations.
	rels []rel.Relationship
}

func slotKey(a uint32, b oid) uint64 { return uint64(a)<<32 | uint64(b) }

// newOverlay validates rels against the plan's schema, as a write would be,
// and merges them over the index. Callers hold the engine's read lock.
func newOverlay(idx *index, p *plan, rels []rel.Relationship) (*overlay, error) {
	if len(rels) > MaxContextualRelationships {
		return nil, fmt.Errorf("%w: %d contextual relationships, over the maximum of %d", ErrInvalidContextual, len(rels), MaxContextualRelationships)
	}
	ov := &overlay{idx: idx, plan: p, edges: map[uint64][]edge{}, reverse: map[uint64][]revEdge{},
		ids: map[sym]map[string]oid{}, names: map[oid]string{}, rels: rels}
	seen := make(map[rel.Key]int, len(rels))
	for i, r := range rels {
		if err := p.sch.ValidateRelationship(r); err != nil {
			return nil, fmt.Errorf("%w %d (%s): %w", ErrInvalidContextual, i, r.Key(), err)
		}
		if j, dup := seen[r.Key()]; dup {
			return nil, fmt.Errorf("%w %d: %s is also contextual relationship %d", ErrInvalidContextual, i, r.Key(), j)
		}
		seen[r.Key()] = i
		ov.add(p, r)
	}
	return ov, nil
}

// add merges one validated relationship: it replaces every version of the
// same relationship in the index, as a write would.
func (ov *overlay) add(p *plan, r rel.Relationship) {
	rp := p.types[r.Resource.Type].rels[r.Relation]
	st := p.types[r.Subject.Type]
	srel := noSym
	if r.Subject.Relation != "" {
		srel = st.rels[r.Subject.Relation].sym
	}
	obj := ov.intern(rp.typ, r.Resource.ID)
	sid := ov.intern(st, r.Subject.ID)
	e := edge{kind: subjectKind(srel, st.sym), subjID: sid, deleted: never}
	// The overlay lives for one request: its caveats are its own.
	if x, ok := extraOf(r, privateCaveat); ok {
		ov.extras = append(ov.extras, x)
		e.extra = overlayExtra + uint32(len(ov.extras)-1)
	}
	k := slotKey(rp.table.id, obj)
	edges, ok := ov.edges[k]
	if !ok {
		edges = slices.Clone(rp.table.edges(obj))
	}
	i := find(edges, e.kind, sid)
	j := i
	for j < len(edges) && subjectCmp(&edges[j], e.kind, sid) == 0 {
		j++
	}
	ov.edges[k] = slices.Replace(edges, i, j, e)

	rk := slotKey(uint32(st.sym), sid)
	rev, ok := ov.reverse[rk]
	if !ok {
		rev = slices.Clone(ov.idx.reverseOf(st.sym, sid))
	}
	ov.reverse[rk] = append(rev, revEdge{via: ov.viaOf(rp.table, srel), obj: obj})
}

// intern returns the ID of an object of type tp: the index's, or one of the
// overlay's own.
func (ov *overlay) intern(tp *typePlan, id string) oid {
	if o, ok := tp.table.lookup(id); ok {
		return o
	}
	ids := ov.ids[tp.sym]
	if ids == nil {
		ids = map[string]oid{}
		ov.ids[tp.sym] = ids
	}
	if o, ok := ids[id]; ok {
		return o
	}
	o := overlayID + oid(len(ov.names))
	ids[id] = o
	ov.names[o] = id
	return o
}

// viaOf returns the index's via of (t, srel), or one of the overlay's.
func (ov *overlay) viaOf(t *relTable, srel sym) uint32 {
	if int(srel) < len(t.vias) && t.vias[srel] != 0 {
		return t.vias[srel] - 1
	}
	want := revVia{table: t.id, subjRel: srel}
	if i := slices.Index(ov.vias, want); i >= 0 {
		return overlayVia + uint32(i)
	}
	ov.vias = append(ov.vias, want)
	return overlayVia + uint32(len(ov.vias)-1)
}

// local reports whether an object ID is one only the overlay names.
func local(o oid) bool { return o >= overlayID && o < unseenResource }

// The readers below are what evaluation and walks call instead of the
// index's own; with no overlay (a nil receiver) they are the index's.

func (ov *overlay) slot(t *relTable, obj oid) []edge {
	if ov != nil {
		if edges, ok := ov.edges[slotKey(t.id, obj)]; ok {
			return edges
		}
	}
	return t.edges(obj)
}

func (ov *overlay) reverseOf(idx *index, st sym, sid oid) []revEdge {
	if ov != nil {
		if rs, ok := ov.reverse[slotKey(uint32(st), sid)]; ok {
			return rs
		}
	}
	return idx.reverseOf(st, sid)
}

func (ov *overlay) via(idx *index, v uint32) revVia {
	if v >= overlayVia {
		return ov.vias[v-overlayVia]
	}
	return idx.vias[v]
}

// lookup returns the ID of object id of type t, and whether anything names it.
func (ov *overlay) lookup(t *typeTable, typ sym, id string) (oid, bool) {
	if ov != nil {
		if o, ok := ov.ids[typ][id]; ok {
			return o, true
		}
	}
	return t.lookup(id)
}

// name returns the ID of object o of type t.
func (ov *overlay) name(t *typeTable, o oid) string {
	if local(o) {
		return ov.names[o]
	}
	return t.names[o]
}

// objects returns every object of a type in ID order: the index's and the
// overlay's own.
func (ov *overlay) objects(t *typeTable, typ sym) []oid {
	ids := t.objects()
	if ov == nil || len(ov.ids[typ]) == 0 {
		return ids
	}
	ids = slices.Clone(ids)
	for _, o := range ov.ids[typ] {
		ids = append(ids, o)
	}
	slices.SortFunc(ids, func(a, b oid) int { return strings.Compare(ov.name(t, a), ov.name(t, b)) })
	return ids
}

// sameSlice reports whether a and b are the same list (not merely equal).
func sameSlice(a, b []rel.Relationship) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// extra returns the caveat and expiration edge extra x indexes.
func (c *checker) extra(x uint32) *edgeExtra {
	if x >= overlayExtra {
		return &c.ov.extras[x-overlayExtra]
	}
	return &c.idx.extras[x]
}

// edges returns the edges of object obj in table t, the overlay's first.
func (c *checker) edges(t *relTable, obj oid) []edge {
	if c.ov != nil {
		return c.ov.slot(t, obj)
	}
	return t.edges(obj)
}
