package capability

import (
	"slices"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/store/rel"
)

// The registry lists what was minted (metadata, never the token) by
// principal, holder and task; expired entries are not listed, and pruning
// deletes them.
func TestMintedRegistry(t *testing.T) {
	f := newFixture(t, "calendar:bob#owner@user:bob", "calendar:ann#owner@user:ann")
	register := func(text string) Minted {
		t.Helper()
		tok, err := Inspect(text)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Register(f.ctx, f.st, tok); err != nil {
			t.Fatal(err)
		}
		return MintedOf(tok)
	}
	a := register(f.mint(Grant{Holder: rel.Object{Type: "agent", ID: "a"}, OnBehalfOf: rel.Object{Type: "user", ID: "bob"},
		Rights: []Right{{Type: "calendar", ID: "bob", Permissions: []string{"read"}}}, TTL: time.Hour, Task: "T"}))
	parent := f.mint(Grant{Holder: rel.Object{Type: "agent", ID: "b"}, OnBehalfOf: rel.Object{Type: "user", ID: "bob"},
		Rights: []Right{{Type: "calendar", ID: "bob", Permissions: []string{"read", "write"}}}, TTL: 2 * time.Hour})
	b := register(parent)
	child := register(f.attenuate(parent, Narrowing{Holder: &rel.Object{Type: "agent", ID: "c"}, TTL: 10 * time.Minute,
		Rights: []Right{{Type: "calendar", ID: "bob", Permissions: []string{"read"}}}}))
	short := register(f.mint(Grant{Holder: rel.Object{Type: "agent", ID: "a"}, OnBehalfOf: rel.Object{Type: "user", ID: "ann"},
		Rights: []Right{{Type: "calendar", ID: "ann", Permissions: []string{"read"}}}, TTL: time.Minute}))

	if child.Parent != b.ID || child.RootID != b.ID || child.Holder != "agent:c" || child.Principal != "user:bob" ||
		!slices.Equal(child.Rights[0].Permissions, []string{"read"}) || !child.Expires.Before(b.Expires) {
		t.Fatalf("attenuated entry %+v (parent %+v)", child, b)
	}
	list := func(flt MintedFilter, now time.Time) []string {
		t.Helper()
		got, rev, err := ListMinted(f.ctx, f.st, flt, now)
		if err != nil || rev == 0 {
			t.Fatalf("ListMinted(%+v): rev %d, %v", flt, rev, err)
		}
		var out []string
		for _, m := range got {
			out = append(out, m.ID)
		}
		return out
	}
	now := f.clock.now()
	for _, c := range []struct {
		name   string
		filter MintedFilter
		now    time.Time
		want   []string // soonest expiry first
	}{
		{"everything", MintedFilter{}, now, []string{short.ID, child.ID, a.ID, b.ID}},
		{"by principal", MintedFilter{Principal: "user:bob"}, now, []string{child.ID, a.ID, b.ID}},
		{"by holder", MintedFilter{Holder: "agent:a"}, now, []string{short.ID, a.ID}},
		{"by task", MintedFilter{Task: "T"}, now, []string{a.ID}},
		{"by holder and principal", MintedFilter{Holder: "agent:a", Principal: "user:ann"}, now, []string{short.ID}},
		{"expired entries are not listed", MintedFilter{}, now.Add(30 * time.Minute), []string{a.ID, b.ID}},
	} {
		if got := list(c.filter, c.now); !slices.Equal(got, c.want) {
			t.Errorf("%s: listed %v, want %v", c.name, got, c.want)
		}
	}

	n, err := PruneMinted(f.ctx, f.st, now.Add(90*time.Minute))
	if err != nil || n != 3 {
		t.Fatalf("PruneMinted: %d, %v; want the 3 expired entries", n, err)
	}
	recs, _, _ := f.st.ReadRecords(f.ctx, MintedKind)
	if len(recs) != 1 || recs[0].ID != b.ID {
		t.Fatalf("after pruning the store keeps %v, want only %s", recs, b.ID)
	}
	if n, err := PruneMinted(f.ctx, f.st, now.Add(90*time.Minute)); err != nil || n != 0 {
		t.Fatalf("pruning again: %d, %v; want nothing to do", n, err)
	}
}
