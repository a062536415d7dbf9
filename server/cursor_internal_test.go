package server

import "testing"

// TestReadCursorKeyRoundTrip checks that the key a read cursor carries
// parses back to the same key, for the key shapes a store holds, so a page
// resumes exactly after its last relationship.
func TestReadCursorKeyRoundTrip(t *testing.T) {
	for _, text := range []string{"doc:1#viewer@user:ann", "doc:1#viewer@user:*", "doc:1#viewer@group:eng#member", "doc:a/b_c-d=e#viewer@user:x|y"} {
		k, err := parseKey(text)
		if err != nil || k.String() != text {
			t.Errorf("parseKey(%q) = %v, %v", text, k, err)
		}
	}
	if _, err := parseKey("doc:1#viewer"); err == nil {
		t.Error("a malformed cursor key parsed")
	}
}
