package server

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/store"
)

func TestTokenRoundTrip(t *testing.T) {
	id, err := newInstanceID("")
	if err != nil {
		t.Fatal(err)
	}
	for _, rev := range []store.Revision{0, 1, 127, 128, 1 << 40, ^store.Revision(0)} {
		got, err := id.decodeToken("t", id.encodeToken(rev))
		if err != nil || got != rev {
			t.Errorf("round trip of %d = %d, %v", rev, got, err)
		}
	}
	c := cursor{rev: 42, req: 0xdeadbeef, after: "doc:x#viewer@user:ann"}
	got, err := id.decodeCursor("c", id.encodeCursor(c), c.req)
	if err != nil || got != c {
		t.Errorf("cursor round trip = %+v, %v", got, err)
	}
}

func TestStableInstanceID(t *testing.T) {
	a, _ := newInstanceID("pg-cluster-1")
	b, _ := newInstanceID("pg-cluster-1")
	c, _ := newInstanceID("pg-cluster-2")
	if a != b || a == c {
		t.Errorf("named instance ids: %x %x %x", a, b, c)
	}
	if _, err := b.decodeToken("t", a.encodeToken(7)); err != nil {
		t.Errorf("a token must survive a restart of a named store: %v", err)
	}
}

// TestTokenRejections: every kind of bad token is an InvalidArgument whose
// message names the field and the problem.
func TestTokenRejections(t *testing.T) {
	id, _ := newInstanceID("mine")
	other, _ := newInstanceID("theirs")
	good := id.encodeToken(99)
	raw, _ := base64.RawURLEncoding.DecodeString(good)
	reencode := func(mutate func([]byte) []byte) string {
		b := append([]byte(nil), raw...)
		return base64.RawURLEncoding.EncodeToString(mutate(b))
	}
	cases := []struct {
		name, token, want string
	}{
		{"empty", "", "empty"},
		{"not base64", "!!!", "bad encoding"},
		{"too short", "UgE", "malformed"},
		{"a cursor", id.encodeCursor(cursor{rev: 1}), "malformed"},
		{"another store", other.encodeToken(99), "different Mandate store"},
		{"future version", reencode(func(b []byte) []byte {
			b[1] = 9
			return b
		}), "unsupported format version 9"},
		{"truncated", good[:len(good)-2], "malformed"},
		{"last byte dropped", good[:len(good)-1], ""},
		{"padded", good + "AA", "corrupted"},
	}
	for i := range len(good) {
		flipped := []byte(good)
		flipped[i] = map[bool]byte{true: 'A', false: 'B'}[flipped[i] != 'A']
		cases = append(cases, struct{ name, token, want string }{fmt.Sprintf("char %d changed", i), string(flipped), ""})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := id.decodeToken("consistency.at_least_as_fresh", c.token)
			st, _ := status.FromError(err)
			if err == nil || st.Code() != codes.InvalidArgument {
				t.Fatalf("decode = %v, want InvalidArgument", err)
			}
			if !strings.Contains(st.Message(), "consistency.at_least_as_fresh") || !strings.Contains(st.Message(), c.want) {
				t.Errorf("message %q should name the field and %q", st.Message(), c.want)
			}
		})
	}
}

func TestCursorBoundToRequest(t *testing.T) {
	id, _ := newInstanceID("")
	tok := id.encodeCursor(cursor{rev: 3, req: 1, after: "a"})
	if _, err := id.decodeCursor("optional_cursor", tok, 2); err == nil || !strings.Contains(err.Error(), "different request") {
		t.Errorf("decode with another request = %v", err)
	}
	if _, err := id.decodeToken("t", tok); err == nil {
		t.Error("a cursor was accepted as a revision token")
	}
}

func TestCodeOf(t *testing.T) {
	cases := []struct {
		err  error
		want codes.Code
	}{
		{fmt.Errorf("x: %w", engine.ErrUnknownType), codes.InvalidArgument},
		{fmt.Errorf("x: %w", engine.ErrInvalidContext), codes.InvalidArgument},
		{engine.ErrNoSchema, codes.FailedPrecondition},
		{fmt.Errorf("write: %w", store.ErrAlreadyExists), codes.AlreadyExists},
		{fmt.Errorf("write: %w", store.ErrPreconditionFailed), codes.FailedPrecondition},
		{fmt.Errorf("write schema: %w: %w", store.ErrInvalidSchema, &schema.Error{Message: "bad"}), codes.InvalidArgument},
		{&schema.Error{Message: "bad"}, codes.InvalidArgument},
		{fmt.Errorf("x: %w", store.ErrSchemaOrphans), codes.FailedPrecondition},
		{engine.ErrMaxDepth, codes.ResourceExhausted},
		{fmt.Errorf("waiting: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{context.Canceled, codes.Canceled},
		{status.Error(codes.NotFound, "x"), codes.NotFound},
		{fmt.Errorf("disk on fire"), codes.Internal},
	}
	for _, c := range cases {
		if got := codeOf(c.err); got != c.want {
			t.Errorf("codeOf(%v) = %v, want %v", c.err, got, c.want)
		}
		if got := status.Code(toStatus(c.err)); got != c.want {
			t.Errorf("toStatus(%v) has code %v, want %v", c.err, got, c.want)
		}
	}
}

func TestDiffSchemas(t *testing.T) {
	ctx := context.Background()
	old, err := schema.Compile(ctx, `definition user {}
caveat small(n int) { n < 10 }
caveat gone(x int) { x == 1 }
definition doc {
	relation owner: user
	relation viewer: user
	permission view = viewer + owner
	permission edit = owner
}
definition legacy {}
`)
	if err != nil {
		t.Fatal(err)
	}
	updated, err := schema.Compile(ctx, `definition user {}
caveat small(n int, m int) { n < m }
caveat fresh(y int) { y == 2 }
definition doc {
	relation owner: user
	relation viewer: user | user:*
	relation parent: folder
	permission view = viewer + owner + parent->view
	permission edit = owner
}
definition folder {
	relation viewer: user
	permission view = viewer
}
`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range diffSchemas(old, updated) {
		got = append(got, fmt.Sprintf("%s %s#%s: %s", d.GetKind(), d.GetName(), d.GetRelation(), d.GetDetail()))
	}
	want := []string{
		"relation_added doc#parent: folder",
		"permission_changed doc#view: (viewer + owner) -> (viewer + owner + parent->view)",
		"relation_changed doc#viewer: user -> user | user:*",
		"definition_added folder#: ",
		"definition_removed legacy#: ",
		"caveat_added fresh#: (int y)",
		"caveat_removed gone#: (int x)",
		"caveat_changed small#: parameters (int n) -> (int m, int n)",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("diff:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if n := len(diffSchemas(updated, updated)); n != 0 {
		t.Errorf("a schema differs from itself in %d ways", n)
	}
	if d := diffSchemas(nil, old); len(d) != 5 {
		t.Errorf("diff from no schema = %v", d)
	}
}
