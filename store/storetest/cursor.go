package storetest

import (
	"slices"
	"strconv"
	"testing"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// cursorSchema is keyOrderSchema's tricky names (see there) with
// expiration, so that expired rows sit between the live ones.
const cursorSchema = `use expiration

definition user {}

definition group {
	relation member: user
	relation member2: user
}

definition doc {
	relation viewer: user | user:* | user with expiration | group#member | group#member2
	relation viewer2: user
}

definition doc2 {
	relation viewer: user
}

definition doc/xyz {
	relation viewer: user
}
`

// readAfter collects Read(rev, f, after), failing on any error.
func (h *harness) readAfter(rev store.Revision, f rel.Filter, after *rel.Key) []string {
	h.t.Helper()
	var out []rel.Relationship
	for r, err := range h.s.Read(h.ctx, rev, f, after) {
		if err != nil {
			h.t.Fatalf("Read(%d, %+v, after %v): %v", rev, f, after, err)
		}
		out = append(out, r)
	}
	checkKeyOrder(h.t, out)
	return texts(out)
}

// page reads everything matching f at rev in pages of size n, each
// resuming after the previous page's last key.
func (h *harness) page(rev store.Revision, f rel.Filter, n int) []string {
	h.t.Helper()
	var out []string
	var after *rel.Key
	for {
		var got []rel.Relationship
		for r, err := range h.s.Read(h.ctx, rev, f, after) {
			if err != nil {
				h.t.Fatalf("Read(%d, %+v, after %v): %v", rev, f, after, err)
			}
			got = append(got, r)
			if len(got) == n {
				break
			}
		}
		out = append(out, texts(got)...)
		if len(got) < n {
			return out
		}
		k := got[len(got)-1].Key()
		after = &k
	}
}

// testReadCursor checks that Read resumes strictly after a key: from every
// position of every filter's result, after keys that are not stored and
// keys of expired rows, across writes at a fixed revision, at older
// revisions, and across the stores' internal page boundaries.
func testReadCursor(t *testing.T, newStore func(t *testing.T) store.Store) {
	live := []string{
		"doc:1#viewer@user:ann",
		"doc:1#viewer@user:ann1",
		"doc:1#viewer@user:ann+",
		"doc:1#viewer@user:*",
		"doc:1#viewer@group:eng#member",
		"doc:1#viewer@group:eng#member2",
		"doc:1#viewer2@user:ann",
		"doc:10#viewer@user:ann",
		"doc:1-2#viewer@user:ann",
		"doc:A#viewer@user:bob" + future,
		"doc2:1#viewer@user:ann",
		"doc/xyz:1#viewer@user:ann",
		"group:eng#member@user:ann",
		"group:eng#member2@user:ann",
	}
	expired := []string{
		"doc:1#viewer@user:old" + past,
		"doc:10#viewer@user:old" + past,
		"doc:9#viewer@user:ann" + past,
	}
	h := open(t, newStore)
	h.writeSchema(cursorSchema)
	h.write(nil, touch(append(slices.Clone(live), expired...)...)...)
	rev := h.head()
	key := func(text string) *rel.Key {
		k := mustParse(text).Key()
		return &k
	}

	filters := []struct {
		name   string
		filter rel.Filter
	}{
		{"everything", rel.Filter{}},
		{"a type that prefixes others", rel.Filter{ResourceType: "doc"}},
		{"resource IDs", rel.Filter{ResourceType: "doc", ResourceIDs: []string{"10", "1", "9"}}},
		{"relation", rel.Filter{ResourceType: "doc", Relation: "viewer"}},
		{"subject", rel.Filter{SubjectType: "user", SubjectID: "ann"}},
		{"subject relation", rel.Filter{SubjectRelation: ptr("member")}},
	}
	for _, fc := range filters {
		t.Run("every position/"+fc.name, func(t *testing.T) {
			h := h.in(t)
			all := h.readAfter(rev, fc.filter, nil)
			var want []string
			for _, text := range canonical(t, live) {
				if fc.filter.Matches(parse(t, text)) {
					want = append(want, text)
				}
			}
			if !slices.Equal(all, want) {
				t.Fatalf("Read(after nil) = %q, want %q", all, want)
			}
			for i, text := range all {
				if got := h.readAfter(rev, fc.filter, key(text)); !slices.Equal(got, all[i+1:]) {
					t.Fatalf("Read(after %s) = %q, want %q", text, got, all[i+1:])
				}
			}
			for n := 1; n <= len(all)+1; n++ {
				if got := h.page(rev, fc.filter, n); !slices.Equal(got, all) {
					t.Fatalf("pages of %d = %q, want %q", n, got, all)
				}
			}
		})
	}

	t.Run("after keys not stored", func(t *testing.T) {
		h := h.in(t)
		all := h.readAfter(rev, rel.Filter{}, nil)
		cases := []struct {
			after string
			from  string // the first key expected, "" for none
		}{
			{"aaa:0#aaa@aaa:a", all[0]},
			{"doc:0#viewer@user:ann", "doc:1#viewer2@user:ann"},
			{"doc:1#viewer@user:an", "doc:1#viewer@user:ann"},
			{"doc:1#viewer@user:ann0", "doc:1#viewer@user:ann1"},
			{"doc:1#viewer@group:eng", "doc:1#viewer@group:eng#member"},
			{"doc:1#viewer@group:eng#member1", "doc:1#viewer@group:eng#member2"},
			{"doc:1#viewer@user:old", "doc:1-2#viewer@user:ann"},
			{"doc:9#viewer@user:ann", "doc:A#viewer@user:bob" + future},
			{"doc:10#viewer@user:old", "doc:A#viewer@user:bob" + future},
			{"zzz:9#zzz@zzz:z", ""},
		}
		for _, c := range cases {
			want := []string(nil)
			if c.from != "" {
				i := slices.Index(all, parse(t, c.from).String())
				if i < 0 {
					t.Fatalf("bad case: %s is not in %q", c.from, all)
				}
				want = all[i:]
			}
			if got := h.readAfter(rev, rel.Filter{}, key(c.after)); !slices.Equal(got, want) {
				t.Errorf("Read(after %s) = %q, want %q", c.after, got, want)
			}
		}
	})

	t.Run("across writes at a fixed revision", func(t *testing.T) {
		h := h.in(t)
		all := h.readAfter(rev, rel.Filter{}, nil)
		mid := len(all) / 2
		after := key(all[mid-1])
		// Change keys before and after the cursor; the read at rev must
		// not see any of it, the read at the new head must.
		h.write(nil, batch(
			touch("doc:0#viewer@user:new", "doc:1#viewer@user:ann0", "group:eng#member@user:zed"),
			del(all[mid], all[len(all)-1]),
		)...)
		if got := h.readAfter(rev, rel.Filter{}, after); !slices.Equal(got, all[mid:]) {
			t.Fatalf("Read(%d, after %s) after a write = %q, want %q", rev, all[mid-1], got, all[mid:])
		}
		var want []string
		for _, text := range h.readAfter(h.head(), rel.Filter{}, nil) {
			if parse(t, text).Key().Compare(*after) > 0 {
				want = append(want, text)
			}
		}
		if got := h.readAfter(h.head(), rel.Filter{}, after); !slices.Equal(got, want) {
			t.Fatalf("Read(head, after %s) = %q, want %q", all[mid-1], got, want)
		}
		if slices.Equal(want, all[mid:]) {
			t.Fatal("bad case: the write changed nothing after the cursor")
		}
	})

	t.Run("resuming while the caller writes", func(t *testing.T) {
		h := h.in(t)
		all := h.readAfter(rev, rel.Filter{}, nil)
		var got []string
		after := key(all[2])
		for r, err := range h.s.Read(h.ctx, rev, rel.Filter{}, after) {
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			if len(got) == 0 {
				h.write(nil, touch("doc:1#viewer@user:ann2", "doc2:2#viewer@user:ann")...)
			}
			got = append(got, r.String())
		}
		if !slices.Equal(got, all[3:]) {
			t.Fatalf("Read(after %s) while writing = %q, want %q", all[2], got, all[3:])
		}
	})
}

// testReadCursorPages pages through more relationships than any store's
// internal page or batch holds, with page sizes that do not divide them,
// at the head and at an older revision.
func testReadCursorPages(t *testing.T, newStore func(t *testing.T) store.Store) {
	const n = 2500
	h := openWithSchema(t, newStore)
	rels := make([]string, 0, n)
	for i := range n {
		id := strconv.Itoa(i)
		switch i % 5 {
		case 0:
			rels = append(rels, "doc:"+id+"#viewer@user:u"+id+past)
		case 1:
			rels = append(rels, "doc:"+id+"#owner@user:u"+id)
		default:
			rels = append(rels, "doc:"+id+"#viewer@user:u"+id)
		}
	}
	old := h.write(nil, touch(rels...)...)
	// Later writes give the old revision history to read through.
	h.write(nil, del(rels[3], rels[1500])...)
	h.write(nil, touch("doc:1#owner@user:late", "doc:2499#viewer@user:late")...)
	for _, rev := range []store.Revision{old, h.head()} {
		for _, f := range []rel.Filter{{}, {ResourceType: "doc", Relation: "viewer"}} {
			all := h.readAfter(rev, f, nil)
			if len(all) < n/2 {
				t.Fatalf("Read(%d, %+v) yielded %d relationships, want over %d", rev, f, len(all), n/2)
			}
			for _, size := range []int{97, 1024, 1025} {
				if got := h.page(rev, f, size); !slices.Equal(got, all) {
					t.Fatalf("Read(%d, %+v) in pages of %d: %d relationships, want %d (first differing at %d)",
						rev, f, size, len(got), len(all), firstDiff(got, all))
				}
			}
		}
	}
}

func firstDiff(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
