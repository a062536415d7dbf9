package storetest

import (
	"errors"
	"strings"
	"testing"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

func testEmptyStore(t *testing.T, newStore func(t *testing.T) store.Store) {
	h := open(t, newStore)
	if got := h.head(); got != 0 {
		t.Fatalf("Head of an empty store = %d, want 0", got)
	}
	text, at, err := h.s.ReadSchema(h.ctx, 0)
	if err != nil || text != "" || at != 0 {
		t.Fatalf("ReadSchema(0) = %q, %d, %v; want \"\", 0, nil", text, at, err)
	}
	h.expectAt(0, rel.Filter{})

	_, err = h.s.Write(h.ctx, nil, touch("doc:1#owner@user:ann"))
	h.failsWith("Write before any schema", err, store.ErrNoSchema, 0, nil)

	if _, _, err := h.s.ReadSchema(h.ctx, 1); !errors.Is(err, store.ErrFutureRevision) {
		t.Fatalf("ReadSchema(1) on an empty store: error %v, want ErrFutureRevision", err)
	}
	if err := h.readErr(1, rel.Filter{}); !errors.Is(err, store.ErrFutureRevision) {
		t.Fatalf("Read(1) on an empty store: error %v, want ErrFutureRevision", err)
	}
}

func testSchemaHistory(t *testing.T, newStore func(t *testing.T) store.Store) {
	h := open(t, newStore)
	first := "definition user {}\n\ndefinition doc {\n\trelation owner: user\n}\n"
	r1 := h.writeSchema(first)
	r2 := h.write(nil, touch("doc:1#owner@user:ann")...)
	r3 := h.writeSchema(baseSchema)
	r4 := h.writeSchema(baseSchema) // rewriting the same text is still a write

	cases := []struct {
		rev      store.Revision
		wantText string
		wantAt   store.Revision
	}{
		{0, "", 0},
		{r1, first, r1},
		{r2, first, r1},
		{r3, baseSchema, r3},
		{r4, baseSchema, r4},
	}
	for _, c := range cases {
		text, at, err := h.s.ReadSchema(h.ctx, c.rev)
		if err != nil {
			t.Fatalf("ReadSchema(%d): %v", c.rev, err)
		}
		if text != c.wantText || at != c.wantAt {
			t.Fatalf("ReadSchema(%d) = %q written at %d; want %q written at %d", c.rev, text, at, c.wantText, c.wantAt)
		}
	}
	if _, _, err := h.s.ReadSchema(h.ctx, r4+1); !errors.Is(err, store.ErrFutureRevision) {
		t.Fatalf("ReadSchema(head+1): error %v, want ErrFutureRevision", err)
	}
	// Relationships written under the old schema stay readable under the new.
	h.expectState("doc:1#owner@user:ann")
}

func testInvalidSchema(t *testing.T, newStore func(t *testing.T) store.Store) {
	cases := []struct{ name, text string }{
		{"syntax error", "definition user {"},
		{"unknown subject type", "definition doc {\n\trelation owner: person\n}"},
		{"unknown relation in permission", "definition user {}\n\ndefinition doc {\n\tpermission view = nope\n}"},
		{"duplicate definition", "definition user {}\n\ndefinition user {}"},
		{"unknown caveat", "definition user {}\n\ndefinition doc {\n\trelation owner: user with nope\n}"},
		{"ill-typed caveat", "caveat c(x int) {\n\tx == \"a\"\n}\n\ndefinition user {}"},
		{"expiration without use", "definition user {}\n\ndefinition doc {\n\trelation owner: user with expiration\n}"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// On an empty store, and replacing a valid schema.
			h := open(t, newStore)
			_, err := h.s.WriteSchema(h.ctx, c.text)
			h.failsWith("WriteSchema", err, store.ErrInvalidSchema, 0, nil)

			h.writeSchema(baseSchema)
			h.write(nil, touch("doc:1#owner@user:ann")...)
			head := h.head()
			_, err = h.s.WriteSchema(h.ctx, c.text)
			h.failsWith("WriteSchema", err, store.ErrInvalidSchema, head, []string{"doc:1#owner@user:ann"})
			if text, _, err := h.s.ReadSchema(h.ctx, head); err != nil || text != baseSchema {
				t.Fatalf("after a refused schema, ReadSchema(head) = %q, %v; want the previous schema", text, err)
			}
		})
	}
}

func testSchemaOrphans(t *testing.T, newStore func(t *testing.T) store.Store) {
	// edit applies replacement pairs to baseSchema.
	edit := func(pairs ...string) string {
		s := baseSchema
		for i := 0; i < len(pairs); i += 2 {
			if !strings.Contains(s, pairs[i]) {
				panic("storetest: baseSchema lacks " + pairs[i])
			}
			s = strings.Replace(s, pairs[i], pairs[i+1], 1)
		}
		return s
	}
	noReviewer := edit("\trelation reviewer: user with on_day\n", "")
	noWildcard := edit(" | user:*", "")
	noCaveatedViewer := edit(" | user with min_level", "")
	noExpiringViewer := edit(" | user with expiration", "")
	noUserMembers := edit("relation member: user | group#member", "relation member: group#member")
	noFolder := edit("definition folder {\n\trelation viewer: user\n}\n", "", "\trelation parent: folder\n", "", " + parent->viewer", "")

	cases := []struct {
		name   string
		setup  []string
		delete []string // deleted after setup, before the schema write
		schema string
		orphan string // key named in the refusal; "" when the write must succeed
	}{
		{"relation removed", []string{`doc:1#reviewer@user:ann[on_day:{"allowed":["mon"]}]`}, nil, noReviewer, "doc:1#reviewer@user:ann"},
		{"wildcard removed", []string{"doc:1#viewer@user:*"}, nil, noWildcard, "doc:1#viewer@user:*"},
		{"caveated subject type removed", []string{"doc:1#viewer@user:ann[min_level]"}, nil, noCaveatedViewer, "doc:1#viewer@user:ann"},
		{"expiring subject type removed", []string{"doc:1#viewer@user:ann" + future}, nil, noExpiringViewer, "doc:1#viewer@user:ann"},
		{"direct subject type removed", []string{"group:eng#member@user:ann"}, nil, noUserMembers, "group:eng#member@user:ann"},
		{"definition removed", []string{"folder:f#viewer@user:ann"}, nil, noFolder, "folder:f#viewer@user:ann"},
		{"one orphan among valid ones", []string{"doc:1#owner@user:ann", "doc:2#viewer@user:*", "doc:3#viewer@user:bob"}, nil, noWildcard, "doc:2#viewer@user:*"},
		{"unaffected relationships", []string{"doc:1#viewer@user:ann", "doc:1#owner@user:bob"}, nil, noWildcard, ""},
		{"expired relationship does not block", []string{"doc:1#viewer@user:ann" + past}, nil, noExpiringViewer, ""},
		{"deleted relationship does not block", []string{"doc:1#viewer@user:*"}, []string{"doc:1#viewer@user:*"}, noWildcard, ""},
		{"adding to the schema", []string{"doc:1#viewer@user:*"}, nil, baseSchema + "\ndefinition team {}\n", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := openWithSchema(t, newStore, c.setup...)
			if len(c.delete) > 0 {
				h.write(nil, del(c.delete...)...)
			}
			head, state := h.head(), h.state()
			rev, err := h.s.WriteSchema(h.ctx, c.schema)
			if c.orphan == "" {
				if err != nil {
					t.Fatalf("WriteSchema: %v", err)
				}
				h.checkAdvanced("WriteSchema", head, rev)
				if text, at, err := h.s.ReadSchema(h.ctx, rev); err != nil || text != c.schema || at != rev {
					t.Fatalf("ReadSchema(%d) = %q, %d, %v; want the new schema written at %d", rev, text, at, err, rev)
				}
				return
			}
			h.failsWith("WriteSchema", err, store.ErrSchemaOrphans, head, state)
			if !strings.Contains(err.Error(), c.orphan) {
				t.Fatalf("refusal %q does not name the orphan %s", err, c.orphan)
			}
			if text, _, err := h.s.ReadSchema(h.ctx, head); err != nil || text != baseSchema {
				t.Fatalf("after a refused schema, ReadSchema(head) = %q, %v; want the previous schema", text, err)
			}
		})
	}
}
