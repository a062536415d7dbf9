package engine

import (
	"maps"
	"math"
	"sort"
	"time"

	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// never is the deletion revision of a live edge.
const never = store.Revision(math.MaxUint64)

// sym is an interned string: type names, object IDs, relation names.
type sym uint32

// noSym is the zero symbol, never assigned: an empty subject relation.
const noSym sym = 0

// slotKey addresses the edges of one object's relation.
type slotKey struct {
	typ, obj, rel sym
}

// edge is one relationship version, seen from its resource.
type edge struct {
	subjType, subjID, subjRel sym
	// expires is the expiration in Unix microseconds (nanoseconds overflow in 2262); 0 for never.
	expires int64
	caveat  *edgeCaveat
	created store.Revision
	deleted store.Revision
}

type edgeCaveat struct {
	name    string
	context map[string]any
}

func (e *edge) liveAt(rev store.Revision, nowMicros int64) bool {
	return e.created <= rev && rev < e.deleted && (e.expires == 0 || nowMicros < e.expires)
}

// schemaVersion is a schema in force from rev on.
type schemaVersion struct {
	rev store.Revision
	sch *schema.Schema
}

// index holds every retained version of every relationship, addressed by
// interned symbols. Edges of a slot are kept sorted by subject so an exact
// subject is found by binary search and usersets sit together.
type index struct {
	head   store.Revision
	oldest store.Revision

	symbols map[string]sym
	names   []string

	slots map[slotKey][]edge
	// objects lists, per type, every object ID that appears in any
	// relationship, as resource or subject: the candidates of lookups.
	objects map[sym]map[sym]struct{}

	schemas []schemaVersion
	// wildcard is the interned "*".
	wildcard sym
}

func newIndex() *index {
	idx := &index{
		symbols: map[string]sym{},
		names:   []string{""},
		slots:   map[slotKey][]edge{},
		objects: map[sym]map[sym]struct{}{},
	}
	idx.wildcard = idx.intern(rel.Wildcard)
	return idx
}

func (idx *index) intern(s string) sym {
	if s == "" {
		return noSym
	}
	if id, ok := idx.symbols[s]; ok {
		return id
	}
	id := sym(len(idx.names))
	idx.names = append(idx.names, s)
	idx.symbols[s] = id
	return id
}

// lookup returns the symbol of s without interning it; ok is false when s
// appears nowhere in the index.
func (idx *index) lookup(s string) (sym, bool) {
	if s == "" {
		return noSym, true
	}
	id, ok := idx.symbols[s]
	return id, ok
}

func (idx *index) name(s sym) string { return idx.names[s] }

func (idx *index) setSchema(rev store.Revision, sch *schema.Schema) {
	// Intern every name the schema uses so that evaluation never meets an
	// unknown relation or type symbol.
	for name, d := range sch.Definitions {
		idx.intern(name)
		for rn := range d.Relations {
			idx.intern(rn)
		}
	}
	n := len(idx.schemas)
	if n > 0 && idx.schemas[n-1].rev == rev {
		idx.schemas[n-1].sch = sch
		return
	}
	idx.schemas = append(idx.schemas, schemaVersion{rev: rev, sch: sch})
}

func (idx *index) schemaAt(rev store.Revision) *schema.Schema {
	i := sort.Search(len(idx.schemas), func(i int) bool { return idx.schemas[i].rev > rev })
	if i == 0 {
		return nil
	}
	return idx.schemas[i-1].sch
}

func (idx *index) noteObject(typ, id sym) {
	m := idx.objects[typ]
	if m == nil {
		m = map[sym]struct{}{}
		idx.objects[typ] = m
	}
	m[id] = struct{}{}
}

// subjectLess orders edges by (type, relation, id).
func subjectLess(e *edge, typ, relation, id sym) bool {
	if e.subjType != typ {
		return e.subjType < typ
	}
	if e.subjRel != relation {
		return e.subjRel < relation
	}
	return e.subjID < id
}

// find returns the position of the first edge for the subject in a slot.
func find(edges []edge, typ, relation, id sym) int {
	return sort.Search(len(edges), func(i int) bool { return !subjectLess(&edges[i], typ, relation, id) })
}

func (idx *index) touch(rev store.Revision, r rel.Relationship) {
	key := slotKey{idx.intern(r.Resource.Type), idx.intern(r.Resource.ID), idx.intern(r.Relation)}
	st, sid, srel := idx.intern(r.Subject.Type), idx.intern(r.Subject.ID), idx.intern(r.Subject.Relation)
	idx.noteObject(key.typ, key.obj)
	if sid != idx.wildcard {
		idx.noteObject(st, sid)
	}
	e := edge{subjType: st, subjID: sid, subjRel: srel, created: rev, deleted: never}
	if !r.Expiration.IsZero() {
		e.expires = r.Expiration.UnixMicro()
	}
	if r.Caveat != nil {
		e.caveat = &edgeCaveat{name: r.Caveat.Name, context: maps.Clone(r.Caveat.Context)}
	}
	edges := idx.slots[key]
	i := find(edges, st, srel, sid)
	// Close the live version, if any, among the versions of this subject.
	j := i
	for ; j < len(edges) && edges[j].subjType == st && edges[j].subjRel == srel && edges[j].subjID == sid; j++ {
		if edges[j].deleted == never {
			if edges[j].created == rev {
				edges[j] = e // rewritten within the same revision
				return
			}
			edges[j].deleted = rev
		}
	}
	edges = append(edges, edge{})
	copy(edges[j+1:], edges[j:])
	edges[j] = e
	idx.slots[key] = edges
}

func (idx *index) remove(rev store.Revision, k rel.Key) {
	key := slotKey{}
	var ok bool
	if key.typ, ok = idx.lookup(k.Resource.Type); !ok {
		return
	}
	if key.obj, ok = idx.lookup(k.Resource.ID); !ok {
		return
	}
	if key.rel, ok = idx.lookup(k.Relation); !ok {
		return
	}
	st, ok1 := idx.lookup(k.Subject.Type)
	sid, ok2 := idx.lookup(k.Subject.ID)
	srel, ok3 := idx.lookup(k.Subject.Relation)
	if !ok1 || !ok2 || !ok3 {
		return
	}
	edges := idx.slots[key]
	for i := find(edges, st, srel, sid); i < len(edges) && edges[i].subjType == st && edges[i].subjRel == srel && edges[i].subjID == sid; i++ {
		if edges[i].deleted == never {
			edges[i].deleted = rev
		}
	}
}

// compact drops versions no answer at or after rev can see.
func (idx *index) compact(rev store.Revision) {
	if rev <= idx.oldest {
		return
	}
	if rev > idx.head {
		rev = idx.head
	}
	for k, edges := range idx.slots {
		kept := edges[:0]
		for _, e := range edges {
			if e.deleted > rev {
				kept = append(kept, e)
			}
		}
		if len(kept) == 0 {
			delete(idx.slots, k)
		} else {
			idx.slots[k] = kept
		}
	}
	// Keep the schema in force at rev and later ones.
	i := sort.Search(len(idx.schemas), func(i int) bool { return idx.schemas[i].rev > rev })
	if i > 1 {
		idx.schemas = append(idx.schemas[:0], idx.schemas[i-1:]...)
	}
	idx.oldest = rev
}

// relationshipOf rebuilds the relationship an edge stands for.
func (idx *index) relationshipOf(k slotKey, e *edge) rel.Relationship {
	r := rel.Relationship{
		Resource: rel.Object{Type: idx.name(k.typ), ID: idx.name(k.obj)},
		Relation: idx.name(k.rel),
		Subject:  rel.Subject{Type: idx.name(e.subjType), ID: idx.name(e.subjID), Relation: idx.name(e.subjRel)},
	}
	if e.caveat != nil {
		r.Caveat = &rel.Caveat{Name: e.caveat.name, Context: e.caveat.context}
	}
	if e.expires != 0 {
		r.Expiration = time.UnixMicro(e.expires).UTC()
	}
	return r
}
