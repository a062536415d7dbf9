package engine

import (
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// erev is a revision as an edge holds it: its distance from index.base.
// Two of them keep an edge at 24 bytes where two store.Revisions would make
// it 32; index.reserve keeps every retained revision within reach.
type erev uint32

// never is the deletion revision of a live edge.
const never = erev(math.MaxUint32)

// maxSpan is the distance from index.base to the latest revision an edge
// can hold.
const maxSpan = store.Revision(never - 1)

// sym is an interned type or relation name. Names are interned for the life
// of the index, so a symbol means the same in every schema version.
type sym uint32

// noSym is the zero symbol, never assigned: an empty subject relation.
const noSym sym = 0

// oid is an object ID interned within its type: each type numbers its objects
// densely from 1, so a relation's edges are found by indexing, not hashing.
type oid uint32

// wildcardID is the "*" of every type.
const wildcardID oid = 0

// Object IDs no interned object carries.
const (
	// unknownID stands for a subject ID that appears in no relationship: only
	// wildcards can match it.
	unknownID = oid(^uint32(0))
	// unseenResource stands for a checked resource whose ID is in no
	// relationship; only a subject naming that same object shares it.
	unseenResource = oid(^uint32(0) - 1)
)

// edge is one relationship version, seen from its resource. It holds no
// pointers, so the garbage collector never scans the edge arrays.
type edge struct {
	// kind packs the subject's relation (high half) and type (low half).
	// Edges of a slot are sorted by (kind, subjID): plain subjects first (a
	// type's wildcard leading its IDs), then usersets.
	kind   uint64
	subjID oid
	// extra indexes index.extras for a caveat or an expiration; 0: neither.
	extra            uint32
	created, deleted erev
}

// subjectKind packs a subject relation and type as edge.kind does.
func subjectKind(relation, typ sym) uint64 { return uint64(relation)<<32 | uint64(typ) }

func (e *edge) subjRel() sym  { return sym(e.kind >> 32) }
func (e *edge) subjType() sym { return sym(e.kind) }

// edgeExtra is what few edges carry: a caveat, an expiration.
type edgeExtra struct {
	// expires is the expiration in Unix microseconds (nanoseconds overflow in
	// 2262); 0 for never.
	expires int64
	caveat  *edgeCaveat
}

// edgeCaveat is an edge's caveat. The index shares one among every edge
// whose caveat has the same name and context (intern.go), so nothing may
// change its context: relationshipOf's callers get the map itself.
type edgeCaveat struct {
	name    string
	context map[string]any
	// memo caches the converted context and decided outcomes (caveat.go).
	memo atomic.Pointer[caveatMemo]
	// key is the caveat's key in index.caveats, "" when it is not interned;
	// refs counts the index's extras holding it. Both change only under
	// the engine's write lock.
	key  string
	refs int
}

// relTable holds the edges of one relation of one type, by object.
type relTable struct {
	slots [][]edge
	// id is the table's position in index.tables.
	id uint32
	// vias[r]-1 is the index.vias position of (this table, subject
	// relation r); 0 when none is interned yet.
	vias []uint32
}

func (t *relTable) edges(obj oid) []edge {
	if int(obj) < len(t.slots) {
		return t.slots[obj]
	}
	return nil
}

// typeTable interns the object IDs of one type and holds its relations.
type typeTable struct {
	name string
	// ids finds an object's oid by its ID (ids.go).
	ids idTable
	// names[id] is the ID of object id; names[0] is "*".
	names []string
	// rels is indexed by relation symbol.
	rels []*relTable
	// reverse[id] lists the relationships naming object id as their
	// subject (reverse.go).
	reverse [][]revEdge

	// sortMu guards sorted, which lists every object (not "*") in ID order
	// for lookups. It is rebuilt lazily, never modified in place, so a
	// reader may keep using the slice it got.
	sortMu sync.Mutex
	sorted []oid
}

// lookup returns the interned ID of an object of this type.
func (t *typeTable) lookup(id string) (oid, bool) {
	return t.ids.find(t.names, id)
}

func (t *typeTable) intern(id string) oid {
	if o, ok := t.ids.find(t.names, id); ok {
		return o
	}
	o := oid(len(t.names))
	// Clone: the ID may be a slice of a larger string the caller holds.
	t.names = append(t.names, strings.Clone(id))
	t.ids.insert(t.names, o)
	return o
}

// objects returns every object ID of the type in ID order. Callers hold the
// engine's read lock, so names does not change meanwhile.
func (t *typeTable) objects() []oid {
	t.sortMu.Lock()
	defer t.sortMu.Unlock()
	n := len(t.names) - 1
	if len(t.sorted) == n {
		return t.sorted
	}
	// Sort only the IDs interned since the last call, then merge.
	fresh := make([]oid, 0, n-len(t.sorted))
	for o := len(t.sorted) + 1; o < len(t.names); o++ {
		fresh = append(fresh, oid(o))
	}
	byName := func(a, b oid) int { return strings.Compare(t.names[a], t.names[b]) }
	slices.SortFunc(fresh, byName)
	merged := make([]oid, 0, n)
	old := t.sorted
	for len(old) > 0 && len(fresh) > 0 {
		if byName(old[0], fresh[0]) < 0 {
			merged, old = append(merged, old[0]), old[1:]
		} else {
			merged, fresh = append(merged, fresh[0]), fresh[1:]
		}
	}
	merged = append(append(merged, old...), fresh...)
	t.sorted = merged
	return merged
}

// schemaVersion is a schema in force from rev on, compiled against the index.
type schemaVersion struct {
	rev  store.Revision
	plan *plan
	// reverse is what lookups walking from a subject need of plan.
	reverse *reversePlan
}

// index holds every retained version of every relationship, addressed by
// interned symbols and per-type object IDs.
type index struct {
	head   store.Revision
	oldest store.Revision
	// base is the revision edges count theirs from: never above oldest,
	// so every revision an answer may be asked at is at or above it.
	base store.Revision
	// superseded counts the versions kept only for history: closed by a
	// later write or a delete, not yet dropped by compact.
	superseded int

	typeSyms map[string]sym
	types    []*typeTable // by type symbol; types[0] is nil
	relSyms  map[string]sym
	relNames []string // by relation symbol; relNames[0] is ""

	// tables names every relTable's type and relation, by relTable.id;
	// vias every (table, subject relation) a reverse edge names
	// (reverse.go).
	tables []tableRef
	vias   []revVia

	extras []edgeExtra // extras[0] is unused
	// freeExtras lists extras released by compaction, for reuse.
	freeExtras []uint32
	// caveats interns the extras' caveats by appendCaveatKey (intern.go);
	// keyBuf is the scratch their keys are encoded in.
	caveats map[string]*edgeCaveat
	keyBuf  []byte

	schemas []schemaVersion
}

func newIndex() *index {
	return &index{
		typeSyms: map[string]sym{},
		types:    []*typeTable{nil},
		relSyms:  map[string]sym{},
		relNames: []string{""},
		extras:   []edgeExtra{{}},
		caveats:  map[string]*edgeCaveat{},
	}
}

// typeSym interns a type name, creating its table.
func (idx *index) typeSym(name string) sym {
	if s, ok := idx.typeSyms[name]; ok {
		return s
	}
	name = strings.Clone(name)
	s := sym(len(idx.types))
	tt := &typeTable{name: name, ids: newIDTable(), names: []string{rel.Wildcard}}
	tt.ids.insert(tt.names, wildcardID)
	idx.types = append(idx.types, tt)
	idx.typeSyms[name] = s
	return s
}

// relSym interns a relation name; "" is noSym.
func (idx *index) relSym(name string) sym {
	if name == "" {
		return noSym
	}
	if s, ok := idx.relSyms[name]; ok {
		return s
	}
	name = strings.Clone(name)
	s := sym(len(idx.relNames))
	idx.relNames = append(idx.relNames, name)
	idx.relSyms[name] = s
	return s
}

// table returns the edges of relation r of type t, creating the table.
func (idx *index) table(t, r sym) *relTable {
	tt := idx.types[t]
	if int(r) >= len(tt.rels) {
		tt.rels = append(tt.rels, make([]*relTable, int(r)+1-len(tt.rels))...)
	}
	if tt.rels[r] == nil {
		tt.rels[r] = &relTable{id: uint32(len(idx.tables))}
		idx.tables = append(idx.tables, tableRef{typ: t, rel: r})
	}
	return tt.rels[r]
}

// existingTable returns the table of relation r of type t, or nil.
func (idx *index) existingTable(t, r sym) *relTable {
	tt := idx.types[t]
	if int(r) < len(tt.rels) {
		return tt.rels[r]
	}
	return nil
}

func (idx *index) setSchema(rev store.Revision, p *plan) {
	n := len(idx.schemas)
	v := schemaVersion{rev: rev, plan: p, reverse: newReversePlan(p)}
	if n > 0 && idx.schemas[n-1].rev == rev {
		idx.schemas[n-1] = v
		return
	}
	idx.schemas = append(idx.schemas, v)
}

// reverseFor returns the reverse plan of a plan the index holds.
func (idx *index) reverseFor(p *plan) *reversePlan {
	for i := len(idx.schemas) - 1; i >= 0; i-- {
		if idx.schemas[i].plan == p {
			return idx.schemas[i].reverse
		}
	}
	return newReversePlan(p)
}

func (idx *index) planAt(rev store.Revision) *plan {
	i := sort.Search(len(idx.schemas), func(i int) bool { return idx.schemas[i].rev > rev })
	if i == 0 {
		return nil
	}
	return idx.schemas[i-1].plan
}

// subjectCmp orders an edge against the subject (kind, id).
func subjectCmp(e *edge, kind uint64, id oid) int {
	switch {
	case e.kind < kind:
		return -1
	case e.kind > kind:
		return 1
	case e.subjID < id:
		return -1
	case e.subjID > id:
		return 1
	}
	return 0
}

// find returns the position of the first edge for the subject in a slot.
// Slots are mostly tiny, where a scan beats a binary search.
func find(edges []edge, kind uint64, id oid) int {
	if len(edges) <= 8 {
		for i := range edges {
			if e := &edges[i]; e.kind > kind || e.kind == kind && e.subjID >= id {
				return i
			}
		}
		return len(edges)
	}
	lo, hi := 0, len(edges)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if e := &edges[m]; e.kind < kind || e.kind == kind && e.subjID < id {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// firstUserset returns the position of the first userset edge of a slot.
func firstUserset(edges []edge) int {
	if len(edges) == 0 || edges[len(edges)-1].subjRel() == noSym {
		return len(edges)
	}
	return find(edges, subjectKind(1, 0), 0)
}

func (idx *index) newExtra(x edgeExtra) uint32 {
	if n := len(idx.freeExtras); n > 0 {
		i := idx.freeExtras[n-1]
		idx.freeExtras = idx.freeExtras[:n-1]
		idx.extras[i] = x
		return i
	}
	idx.extras = append(idx.extras, x)
	return uint32(len(idx.extras) - 1)
}

// edgeRev returns revision rev as the index's edges hold it. Callers keep
// rev within [base, base+maxSpan]: answers at or above oldest, changes
// after reserve.
func (idx *index) edgeRev(rev store.Revision) erev { return erev(rev - idx.base) }

// reserve makes the edges able to hold revision rev, at or after head,
// before a change at rev is applied. It moves base up to oldest when rev is
// out of reach; when even the retained history spans more than an edge can
// hold (over four billion revisions: ForgetBefore never called), it first
// forgets the oldest of it, as ForgetBefore would, so that answers there
// fail with ErrRevisionGone rather than differ.
func (idx *index) reserve(rev store.Revision) {
	if rev-idx.base <= maxSpan {
		return
	}
	if floor := rev - maxSpan; idx.oldest < floor {
		idx.compact(floor)
		// compact stops at head; nothing changed from head to floor.
		idx.oldest = floor
	}
	idx.rebase(idx.oldest)
}

// rebase moves base up to to, at most oldest, rewriting every edge's
// revisions. Versions created before to read as created at to, which no
// answer (all at or after oldest) can tell apart.
func (idx *index) rebase(to store.Revision) {
	move := func(r erev) erev {
		if abs := idx.base + store.Revision(r); abs > to {
			return erev(abs - to)
		}
		return 0
	}
	for _, tt := range idx.types[1:] {
		for _, t := range tt.rels {
			if t == nil {
				continue
			}
			for _, edges := range t.slots {
				for i := range edges {
					e := &edges[i]
					e.created = move(e.created)
					if e.deleted != never {
						e.deleted = move(e.deleted)
					}
				}
			}
		}
	}
	idx.base = to
}

// touch writes relationship r at revision rev, which reserve has made room
// for.
func (idx *index) touch(rev store.Revision, r rel.Relationship) {
	typ := idx.typeSym(r.Resource.Type)
	obj := idx.types[typ].intern(r.Resource.ID)
	st := idx.typeSym(r.Subject.Type)
	sid := idx.types[st].intern(r.Subject.ID)
	srel := idx.relSym(r.Subject.Relation)
	t := idx.table(typ, idx.relSym(r.Relation))
	kind := subjectKind(srel, st)
	at := idx.edgeRev(rev)
	e := edge{kind: kind, subjID: sid, created: at, deleted: never}
	if x, ok := extraOf(r, idx.internCaveat); ok {
		e.extra = idx.newExtra(x)
	}
	if int(obj) >= len(t.slots) {
		t.slots = slices.Grow(t.slots, int(obj)+1-len(t.slots))[:int(obj)+1]
	}
	edges := t.slots[obj]
	i := find(edges, kind, sid)
	if i == len(edges) || subjectCmp(&edges[i], kind, sid) != 0 {
		// The relationship's first version: the subject learns of it.
		idx.addReverse(st, sid, srel, t, obj)
	}
	// Close the live version, if any, among the versions of this subject.
	j := i
	for ; j < len(edges) && subjectCmp(&edges[j], kind, sid) == 0; j++ {
		if edges[j].deleted == never {
			if edges[j].created == at {
				// Rewritten within the same revision.
				idx.releaseExtra(edges[j].extra)
				edges[j] = e
				return
			}
			edges[j].deleted = at
			idx.superseded++
		}
	}
	edges = slices.Insert(edges, j, e)
	t.slots[obj] = edges
}

// extraOf returns what an edge carries beside its subject: the
// relationship's expiration and caveat (made by newCaveat), if it has
// either.
func extraOf(r rel.Relationship, newCaveat func(*rel.Caveat) *edgeCaveat) (edgeExtra, bool) {
	if r.Expiration.IsZero() && r.Caveat == nil {
		return edgeExtra{}, false
	}
	var x edgeExtra
	if !r.Expiration.IsZero() {
		x.expires = r.Expiration.UnixMicro()
	}
	if r.Caveat != nil {
		x.caveat = newCaveat(r.Caveat)
	}
	return x, true
}

func (idx *index) releaseExtra(x uint32) {
	if x != 0 {
		if c := idx.extras[x].caveat; c != nil {
			idx.releaseCaveat(c)
		}
		idx.extras[x] = edgeExtra{}
		idx.freeExtras = append(idx.freeExtras, x)
	}
}

func (idx *index) remove(rev store.Revision, k rel.Key) {
	typ, ok := idx.typeSyms[k.Resource.Type]
	if !ok {
		return
	}
	obj, ok := idx.types[typ].lookup(k.Resource.ID)
	if !ok {
		return
	}
	rs, ok := idx.relSyms[k.Relation]
	if !ok {
		return
	}
	st, ok := idx.typeSyms[k.Subject.Type]
	if !ok {
		return
	}
	sid, ok := idx.types[st].lookup(k.Subject.ID)
	if !ok {
		return
	}
	srel := noSym
	if k.Subject.Relation != "" {
		if srel, ok = idx.relSyms[k.Subject.Relation]; !ok {
			return
		}
	}
	t := idx.existingTable(typ, rs)
	if t == nil {
		return
	}
	edges := t.edges(obj)
	kind := subjectKind(srel, st)
	for i := find(edges, kind, sid); i < len(edges) && subjectCmp(&edges[i], kind, sid) == 0; i++ {
		if edges[i].deleted == never {
			edges[i].deleted = idx.edgeRev(rev)
			idx.superseded++
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
	at := idx.edgeRev(rev)
	for _, tt := range idx.types[1:] {
		for _, t := range tt.rels {
			if t == nil {
				continue
			}
			for o, edges := range t.slots {
				kept := edges[:0]
				for _, e := range edges {
					if e.deleted > at {
						kept = append(kept, e)
					} else {
						// Only closed versions reach here: live ones are never deleted.
						idx.releaseExtra(e.extra)
						idx.superseded--
					}
				}
				if len(kept) == 0 {
					t.slots[o] = nil
				} else {
					clear(edges[len(kept):])
					t.slots[o] = kept
				}
			}
		}
	}
	idx.compactReverse()
	// Keep the schema in force at rev and later ones.
	i := sort.Search(len(idx.schemas), func(i int) bool { return idx.schemas[i].rev > rev })
	if i > 1 {
		idx.schemas = append(idx.schemas[:0], idx.schemas[i-1:]...)
	}
	idx.oldest = rev
}

// relationshipOf rebuilds the relationship an edge of object obj's relation
// relation (of type typ) stands for. Its caveat context is the index's,
// shared with other edges: read it, never change it.
func (idx *index) relationshipOf(typ sym, obj oid, relation sym, e *edge) rel.Relationship {
	r := rel.Relationship{
		Resource: rel.Object{Type: idx.types[typ].name, ID: idx.types[typ].names[obj]},
		Relation: idx.relNames[relation],
		Subject:  rel.Subject{Type: idx.types[e.subjType()].name, ID: idx.types[e.subjType()].names[e.subjID], Relation: idx.relNames[e.subjRel()]},
	}
	if e.extra != 0 {
		x := &idx.extras[e.extra]
		if x.caveat != nil {
			r.Caveat = &rel.Caveat{Name: x.caveat.name, Context: x.caveat.context}
		}
		if x.expires != 0 {
			r.Expiration = time.UnixMicro(x.expires).UTC()
		}
	}
	return r
}
