package engine

import "slices"

// The reverse adjacency lets a lookup walk from a subject toward the
// resources that name it, so that its cost follows the answer rather than
// the number of objects of the type. It over-approximates on purpose: an
// entry stands for every version of one relationship (live, deleted,
// expired or caveated alike), and every resource a walk finds is confirmed
// by the check itself, so the adjacency never decides anything on its own.

// revEdge is one relationship seen from its subject: the table (resource
// type and relation) and resource object that name the subject, and the
// subject's relation. Like edge, it holds no pointers.
type revEdge struct {
	table   uint32 // index.tables position
	subjRel sym
	obj     oid
}

// tableRef names the resource type and relation of a relTable.
type tableRef struct {
	typ, rel sym
}

// addReverse records that object obj of table t names subject (st, sid,
// srel). touch calls it only for the first version of a relationship, so
// entries are unique without a search.
func (idx *index) addReverse(st sym, sid oid, srel sym, t *relTable, obj oid) {
	tt := idx.types[st]
	if int(sid) >= len(tt.reverse) {
		tt.reverse = slices.Grow(tt.reverse, int(sid)+1-len(tt.reverse))[:int(sid)+1]
	}
	tt.reverse[sid] = append(tt.reverse[sid], revEdge{table: t.id, subjRel: srel, obj: obj})
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
				ref := idx.tables[r.table]
				kind := subjectKind(r.subjRel, sym(st))
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
