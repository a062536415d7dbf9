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
