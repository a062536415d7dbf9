package engine

import "github.com/mandate-authz/mandate/schema"

// memoKey is a subproblem: relation rp of object obj for subject t, within
// a group of requests that share revision, time and caveat context.
type memoKey struct {
	rp    *relPlan
	obj   oid
	t     target
	group uint32
}

// memoEntry is a solved subproblem and the depth its evaluation reached
// below it, so that reusing it never hides an ErrMaxDepth that evaluating it
// afresh at a greater depth would meet.
type memoEntry struct {
	out    outcome
	height int32
}

// memoTable is an open-addressing hash table of solved subproblems. Its
// slots hold no pointers (the rare missing-parameter lists live aside), so
// it costs the garbage collector nothing and a lookup no allocation, which a
// map keyed by memoKey could not offer on a path that runs per hop.
type memoTable struct {
	slots   []memoSlot // len is a power of two, or zero
	used    int
	missing [][]string // memoSlot.missing-1 indexes it
}

type memoSlot struct {
	// k0 packs the relation plan's number (never 0: 0 marks an empty slot)
	// and the object; k1 the subject's type and ID; k2 its relation and the
	// request group.
	k0, k1, k2 uint64
	height     int32
	v          schema.Outcome
	missing    uint32
}

// memoMaxRetained bounds the slots a pooled checker keeps between calls.
const memoMaxRetained = 1 << 14

func packKey(k memoKey) (uint64, uint64, uint64) {
	return uint64(k.rp.num)<<32 | uint64(k.obj),
		uint64(k.t.typ)<<32 | uint64(k.t.id),
		uint64(k.t.rel)<<32 | uint64(k.group)
}

func memoHash(k0, k1, k2 uint64) uint64 {
	h := k0*0x9e3779b97f4a7c15 ^ k1*0xc2b2ae3d27d4eb4f ^ k2*0x165667b19e3779f9
	h ^= h >> 31
	h *= 0xbf58476d1ce4e5b9
	return h ^ h>>29
}

func (m *memoTable) get(k memoKey) (memoEntry, bool) {
	if m.used == 0 {
		return memoEntry{}, false
	}
	k0, k1, k2 := packKey(k)
	mask := uint64(len(m.slots) - 1)
	for i := memoHash(k0, k1, k2) & mask; ; i = (i + 1) & mask {
		s := &m.slots[i]
		if s.k0 == 0 {
			return memoEntry{}, false
		}
		if s.k0 == k0 && s.k1 == k1 && s.k2 == k2 {
			e := memoEntry{out: outcome{v: s.v}, height: s.height}
			if s.missing != 0 {
				e.out.missing = m.missing[s.missing-1]
			}
			return e, true
		}
	}
}

func (m *memoTable) put(k memoKey, e memoEntry) {
	if (m.used+1)*4 > len(m.slots)*3 {
		m.grow()
	}
	k0, k1, k2 := packKey(k)
	mask := uint64(len(m.slots) - 1)
	for i := memoHash(k0, k1, k2) & mask; ; i = (i + 1) & mask {
		s := &m.slots[i]
		if s.k0 == 0 {
			m.used++
		} else if s.k0 != k0 || s.k1 != k1 || s.k2 != k2 {
			continue
		}
		*s = memoSlot{k0: k0, k1: k1, k2: k2, height: e.height, v: e.out.v}
		if len(e.out.missing) > 0 {
			m.missing = append(m.missing, e.out.missing)
			s.missing = uint32(len(m.missing))
		}
		return
	}
}

func (m *memoTable) grow() {
	old := m.slots
	m.slots = make([]memoSlot, max(256, 2*len(old)))
	mask := uint64(len(m.slots) - 1)
	for _, s := range old {
		if s.k0 == 0 {
			continue
		}
		i := memoHash(s.k0, s.k1, s.k2) & mask
		for m.slots[i].k0 != 0 {
			i = (i + 1) & mask
		}
		m.slots[i] = s
	}
}

// reset empties the table, keeping its slots unless they grew large.
func (m *memoTable) reset() {
	if m.used > 0 {
		if len(m.slots) > memoMaxRetained {
			m.slots = nil
		} else {
			clear(m.slots)
		}
	}
	m.used = 0
	clear(m.missing)
	m.missing = m.missing[:0]
}
