package engine

import (
	"strconv"
	"testing"
)

// TestIDTable interns IDs into a type table past several growths and finds
// every one, and none of the IDs it never saw, whether they differ by a
// byte, a length or only a prefix.
func TestIDTable(t *testing.T) {
	cases := []struct {
		name   string
		ids    []string
		absent []string
	}{
		{name: "wildcard only", absent: []string{"", "a", "**"}},
		{name: "empty ID", ids: []string{""}, absent: []string{" ", "*a"}},
		{name: "prefixes", ids: []string{"a", "ab", "abc", "abcd"}, absent: []string{"abcde", "b", "bc", "A"}},
		{name: "many", ids: numbered("d", 5000), absent: append(numbered("e", 100), "d5000", "d-1", "d00")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			idx := newIndex()
			tt := idx.types[idx.typeSym("doc")]
			for i, id := range c.ids {
				if got := tt.intern(id); got != oid(i+1) {
					t.Fatalf("intern(%q) = %d, want %d", id, got, i+1)
				}
			}
			for i, id := range c.ids {
				if got := tt.intern(id); got != oid(i+1) {
					t.Fatalf("intern(%q) again = %d, want %d", id, got, i+1)
				}
				if got, ok := tt.lookup(id); !ok || got != oid(i+1) {
					t.Fatalf("lookup(%q) = %d, %v; want %d", id, got, ok, i+1)
				}
			}
			if got, ok := tt.lookup("*"); !ok || got != wildcardID {
				t.Errorf("lookup(*) = %d, %v; want the wildcard", got, ok)
			}
			for _, id := range c.absent {
				if got, ok := tt.lookup(id); ok {
					t.Errorf("lookup(%q) = %d, want absent", id, got)
				}
			}
			if want := len(c.ids) + 1; tt.ids.used != want || len(tt.names) != want {
				t.Errorf("%d slots used, %d names; want %d", tt.ids.used, len(tt.names), want)
			}
		})
	}
}

func numbered(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = prefix + strconv.Itoa(i)
	}
	return out
}
