package engine

import "slices"

// The reverse adjacency lets a lookup walk from a subject toward the
// resources that name it, so that its cost follows the answer rather than
// the number of objects of the type. It over-approximates on purpose: an
// entry stands for every version of one relationship (live, deleted,
// expired or caveated alike), and every resource a walk finds is confirmed
// by the check itself, so the adjacency never decides anything on its own.

// revEdge is one relationship seen from its subject: how it names the
// subject (a revVia) and the resource object naming it. Like edge, it holds
// no pointers; at 8 bytes it is a quarter of the edge it mirrors.
type revEdge struct {
	via uint32 // index.vias position
	obj oid
}

// revVia is the table (resource type and relation) of a reverse edge and
// the subject relation it names.
type revVia struct {
	table   uint32 // index.tables position
	subjRel sym
}

// tableRef names the resource type and relation of a relTable.
type tableRef struct {
	typ, rel sym
}

// viaOf interns a (table, subject relation) pair.
func (idx *index) viaOf(t *relTable, srel sym) uint32 {
	if int(srel) < len(t.vias) && t.vias[srel] != 0 {
		return t.vias[srel] - 1
	}
	if int(srel) >= len(t.vias) {
		t.vias = append(t.vias, make([]uint32, int(srel)+1-len(t.vias))...)
	}
	v := uint32(len(idx.vias))
	idx.vias = append(idx.vias, revVia{table: t.id, subjRel: srel})
	t.vias[srel] = v + 1
	return v
}

// addReverse records that object obj of table t names subject (st, sid,
// srel). touch calls it only for the first version of a relationship, so
// entries are unique without a search.
func (idx *index) addReverse(st sym, sid oid, srel sym, t *relTable, obj oid) {
	tt := idx.types[st]
	if int(sid) >= len(tt.reverse) {
		tt.reverse = slices.Grow(tt.reverse, int(sid)+1-len(tt.reverse))[:int(sid)+1]
	}
	tt.reverse[sid] = append(tt.reverse[sid], revEdge{via: idx.viaOf(t, srel), obj: obj})
}

// reverseOf returns the reverse edges of object sid of type st.
func (idx *index) reverseOf(st sym, sid oid) []revEdge {
	if int(st) >= len(idx.types) || idx.types[st] == nil {
		return nil
	}
	r := idx.types[st].reverse
	if int(sid) < len(r) {
		return r[sid]
	}
	return nil
}

// compactReverse drops the reverse edges whose relationship compaction
// removed entirely, keeping the invariant: a reverse edge exists exactly
// when some version of its relationship does.
func (idx *index) compactReverse() {
	for st, tt := range idx.types {
		if tt == nil {
			continue
		}
		for sid, rs := range tt.reverse {
			kept := rs[:0]
			for _, r := range rs {
				via := idx.vias[r.via]
				ref := idx.tables[via.table]
				kind := subjectKind(via.subjRel, sym(st))
				edges := idx.types[ref.typ].rels[ref.rel].edges(r.obj)
				if i := find(edges, kind, oid(sid)); i < len(edges) && subjectCmp(&edges[i], kind, oid(sid)) == 0 {
					kept = append(kept, r)
				}
			}
			if len(kept) == 0 {
				tt.reverse[sid] = nil
			} else {
				clear(rs[len(kept):])
				tt.reverse[sid] = kept
			}
		}
	}
}
