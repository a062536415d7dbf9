package engine

import "hash/maphash"

// idTable finds a type's objects by ID. It is an open-addressing hash table
// holding only each object's oid and a tag of its hash; the ID itself is
// read from the type's names. A map[string]oid keeps a second string header
// per object and costs about 58 bytes an object at the scale mode's
// millions; this costs 11 to 21. Objects are interned for the life of the
// index, so nothing is ever removed.
type idTable struct {
	// seed is the table's own, so that IDs chosen to collide in one
	// table do not collide in another.
	seed maphash.Seed
	// slots' length is a power of two, or zero. A slot packs the high half
	// of the ID's hash (upper 32 bits) and its oid plus one (lower 32 bits,
	// 0 marks an empty slot).
	slots []uint64
	used  int
}

func newIDTable() idTable { return idTable{seed: maphash.MakeSeed()} }

// find returns the oid of id, whose object's ID names holds.
func (t *idTable) find(names []string, id string) (oid, bool) {
	if t.used == 0 {
		return 0, false
	}
	h := maphash.String(t.seed, id)
	tag := h >> 32 << 32
	mask := uint64(len(t.slots) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		s := t.slots[i]
		if s == 0 {
			return 0, false
		}
		if s&^0xffffffff == tag {
			if o := oid(s - 1); names[o] == id {
				return o, true
			}
		}
	}
}

// insert adds object o, whose ID is names[o] and is not in the table yet.
func (t *idTable) insert(names []string, o oid) {
	if (t.used+1)*4 > len(t.slots)*3 {
		t.grow(names)
	}
	t.place(maphash.String(t.seed, names[o]), o)
	t.used++
}

func (t *idTable) place(h uint64, o oid) {
	mask := uint64(len(t.slots) - 1)
	i := h & mask
	for t.slots[i] != 0 {
		i = (i + 1) & mask
	}
	t.slots[i] = h>>32<<32 | uint64(o) + 1
}

func (t *idTable) grow(names []string) {
	old := t.slots
	t.slots = make([]uint64, max(8, 2*len(old)))
	for _, s := range old {
		if s != 0 {
			o := oid(s - 1)
			t.place(maphash.String(t.seed, names[o]), o)
		}
	}
}
