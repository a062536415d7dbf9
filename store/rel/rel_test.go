package rel

import (
	"strings"
	"testing"

	"github.com/authzed/spicedb/pkg/tuple"
)

// TestValidateIDMatchesSpiceDB checks the hand-written ID check against
// SpiceDB's own regular expression on a spread of inputs.
func TestValidateIDMatchesSpiceDB(t *testing.T) {
	inputs := []string{"a", "doc1", "A-b_c|d=e+f/g", "with space", "é", "x.y", "a:b", "a#b", "a@b",
		"*", "", strings.Repeat("z", 1024), "tab\t", "semi;colon", "ünï", "0", "--", "a*b"}
	for _, in := range inputs {
		mine := validateID("id", in) == nil
		theirs := tuple.ValidateResourceID(in) == nil && len(in) <= MaxIDLength
		if mine != theirs {
			t.Errorf("%q: ours accepts=%v, SpiceDB accepts=%v", in, mine, theirs)
		}
	}
	if err := validateID("id", strings.Repeat("z", 1025)); err == nil {
		t.Error("an ID over 1024 bytes was accepted")
	}
}

func TestParseRoundTrip(t *testing.T) {
	tests := []string{
		"doc:1#viewer@user:ann",
		"doc:1#viewer@group:eng#member",
		"doc:1#viewer@user:*",
		`doc:1#viewer@user:ann[is_ok:{"x":1}]`,
		"doc:1#viewer@user:ann[expiration:2030-01-01T00:00:00Z]",
		`doc:1#viewer@user:ann[is_ok:{"x":"y"}][expiration:2030-01-01T00:00:00Z]`,
	}
	for _, in := range tests {
		r, err := Parse(in)
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if got := r.String(); got != in {
			t.Errorf("round trip: %s -> %s", in, got)
		}
	}
}

func TestParseErrors(t *testing.T) {
	tests := map[string]string{
		"empty":                  "",
		"no subject":             "doc:1#viewer",
		"wildcard resource":      "doc:*#viewer@user:ann",
		"bad caveat json":        "doc:1#viewer@user:ann[c:{x}]",
		"bad expiration":         "doc:1#viewer@user:ann[expiration:tomorrow]",
		"space in id":            "doc:a b#viewer@user:ann",
		"wildcard with relation": "doc:1#viewer@user:*#member",
	}
	for name, in := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := Parse(in); err == nil {
				t.Fatalf("%q parsed without error", in)
			}
		})
	}
}

// TestKeyCompareIsTextOrder pins Key.Compare to the bytewise order of the
// keys' text forms, including the cases where that differs from comparing
// field by field.
func TestKeyCompareIsTextOrder(t *testing.T) {
	keys := []string{
		"doc:1#viewer@user:ann",
		"doc:1#viewer@user:ann1",
		"doc:1#viewer@user:ann+",
		"doc:1#viewer@user:*",
		"doc:1#viewer@group:eng#member",
		"doc:1#viewer@group:eng#member2",
		"doc:1#viewer@group:eng-x#member",
		"doc:1#viewer2@user:ann",
		"doc:10#viewer@user:ann",
		"doc:1-2#viewer@user:ann",
		"doc2:1#viewer@user:ann",
		"doc/xyz:1#viewer@user:ann",
		"docs:1#viewer@user:ann",
	}
	for _, a := range keys {
		for _, b := range keys {
			ka, kb := mustKey(t, a), mustKey(t, b)
			if got, want := ka.Compare(kb), strings.Compare(a, b); got != want {
				t.Errorf("Compare(%s, %s) = %d, want %d (text order)", a, b, got, want)
			}
		}
	}
	// Field-by-field order would put doc before doc2 and viewer before
	// viewer2; text order puts them after, since ':' and '@' follow digits.
	if c := mustKey(t, "doc:1#viewer@user:a").Compare(mustKey(t, "doc2:1#viewer@user:a")); c != 1 {
		t.Errorf("doc:1 vs doc2:1: Compare = %d, want 1", c)
	}
	if c := mustKey(t, "doc:1#viewer@user:a").Compare(mustKey(t, "doc:1#viewer2@user:a")); c != 1 {
		t.Errorf("viewer vs viewer2: Compare = %d, want 1", c)
	}
}

func mustKey(t *testing.T, text string) Key {
	t.Helper()
	r, err := Parse(text)
	if err != nil {
		t.Fatal(err)
	}
	return r.Key()
}

// FuzzKeyCompare checks Compare against comparing String() for arbitrary
// field contents, valid or not.
func FuzzKeyCompare(f *testing.F) {
	f.Add("doc", "1", "viewer", "user", "ann", "", "doc2", "1", "viewer", "group", "eng", "member")
	f.Add("a", "", "", "", "", "", "", "a", "", "", "", "")
	f.Fuzz(func(t *testing.T, rt1, rid1, rl1, st1, sid1, sr1, rt2, rid2, rl2, st2, sid2, sr2 string) {
		a := Key{Resource: Object{Type: rt1, ID: rid1}, Relation: rl1, Subject: Subject{Type: st1, ID: sid1, Relation: sr1}}
		b := Key{Resource: Object{Type: rt2, ID: rid2}, Relation: rl2, Subject: Subject{Type: st2, ID: sid2, Relation: sr2}}
		if got, want := a.Compare(b), strings.Compare(a.String(), b.String()); got != want {
			t.Fatalf("Compare(%q, %q) = %d, want %d", a, b, got, want)
		}
	})
}
