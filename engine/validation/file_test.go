package validation

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/store/rel"
)

const twoDocs = `---
# first document
schema: |+
  caveat is_weekday(day string) {
    day != "sat" && day != "sun"
  }

  definition user {}

  definition group {
    relation member: user
  }

  definition doc {
    relation viewer: user | group#member | user with is_weekday
    permission view = viewer
  }

relationships: |-
  group:eng#member@user:ann
  doc:1#viewer@group:eng#member
  // a comment
  doc:1#viewer@user:bob[is_weekday]
assertions:
  assertTrue:
    - "doc:1#view@user:ann"
    - 'doc:1#view@user:bob with {"day": "mon"}'
    - "doc:1#view@group:eng#member"
  assertCaveated:
    - "doc:1#view@user:bob"
  assertFalse:
    - doc:1#view@user:carl
validation:
  doc:1#view:
    - "[user:ann] is <group:eng#member>"
    - "[group:eng#member] is <doc:1#viewer>"
    - "[user:bob[...]] is <doc:1#viewer>"
---
schema: >-
  definition user {}

  definition doc {
    relation viewer: user
  }
relationships: >-
  doc:2#viewer@user:dan

  doc:3#viewer@user:dan
assertions:
  assertTrue:
    - doc:2#viewer@user:dan
---
`

func mustParseFile(t *testing.T, text string) *File {
	t.Helper()
	f, err := Parse(context.Background(), "test.yaml", []byte(text))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return f
}

func TestParseDocuments(t *testing.T) {
	f := mustParseFile(t, twoDocs)
	if len(f.Documents) != 2 {
		t.Fatalf("got %d documents, expected 2", len(f.Documents))
	}
	d := f.Documents[0]
	if d.Index != 0 || d.Line != 3 {
		t.Errorf("document 0: index %d line %d, expected 0 and 3", d.Index, d.Line)
	}
	gotRels := make([]string, len(d.Relationships))
	for i, r := range d.Relationships {
		gotRels[i] = r.String()
	}
	wantRels := []string{"group:eng#member@user:ann", "doc:1#viewer@group:eng#member", "doc:1#viewer@user:bob[is_weekday]"}
	if !reflect.DeepEqual(gotRels, wantRels) {
		t.Errorf("relationships: got %v, expected %v", gotRels, wantRels)
	}
	if want := []int{20, 21, 23}; !reflect.DeepEqual(d.RelationshipLines, want) {
		t.Errorf("relationship lines: got %v, expected %v", d.RelationshipLines, want)
	}

	type brief struct {
		Kind, Text string
		Want       engine.Decision
		Subject    rel.Subject
		Context    map[string]any
		Line       int
	}
	var got []brief
	for _, a := range d.Assertions {
		got = append(got, brief{a.Kind, a.Text, a.Want, a.Subject, a.Context, a.Line})
	}
	want := []brief{
		{AssertTrue, "doc:1#view@user:ann", engine.Allowed, rel.Subject{Type: "user", ID: "ann"}, nil, 26},
		{AssertTrue, `doc:1#view@user:bob with {"day": "mon"}`, engine.Allowed, rel.Subject{Type: "user", ID: "bob"}, map[string]any{"day": "mon"}, 27},
		{AssertTrue, "doc:1#view@group:eng#member", engine.Allowed, rel.Subject{Type: "group", ID: "eng", Relation: "member"}, nil, 28},
		{AssertCaveated, "doc:1#view@user:bob", engine.Conditional, rel.Subject{Type: "user", ID: "bob"}, nil, 30},
		{AssertFalse, "doc:1#view@user:carl", engine.Denied, rel.Subject{Type: "user", ID: "carl"}, nil, 32},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("assertions:\n got %+v\nwant %+v", got, want)
	}
	for _, a := range d.Assertions {
		if a.Resource != (rel.Object{Type: "doc", ID: "1"}) || a.Permission != "view" {
			t.Errorf("assertion %q: resource %v permission %q", a.Text, a.Resource, a.Permission)
		}
	}

	if len(d.Expected) != 1 {
		t.Fatalf("got %d validation keys, expected 1", len(d.Expected))
	}
	er := d.Expected[0]
	if er.Key != "doc:1#view" || er.Object != (rel.Object{Type: "doc", ID: "1"}) || er.Relation != "view" || er.Line != 34 {
		t.Errorf("validation key: %+v", er)
	}
	if len(er.Subjects) != 3 || er.Subjects[0].Subject == nil || *er.Subjects[0].Subject != (rel.Subject{Type: "user", ID: "ann"}) ||
		!reflect.DeepEqual(er.Subjects[0].Resources, []string{"group:eng#member"}) || er.Subjects[0].Line != 35 {
		t.Errorf("validation subjects: %+v", er.Subjects)
	}

	d2 := f.Documents[1]
	if d2.Index != 1 || len(d2.Relationships) != 2 || len(d2.Assertions) != 1 {
		t.Errorf("document 1: %+v", d2)
	}
	if want := []int{46, 48}; !reflect.DeepEqual(d2.RelationshipLines, want) {
		t.Errorf("folded relationship lines: got %v, expected %v", d2.RelationshipLines, want)
	}
}

func TestParseExpectedSubjectForms(t *testing.T) {
	f := mustParseFile(t, `schema: |-
  definition user {}
  definition doc {
    relation viewer: user | user:*
  }
validation:
  doc:1#viewer:
    - "[user:* - {user:a, user:b[...]}] is <doc:1#viewer>"
    - "[user:c[...]] is <doc:1#viewer>/<doc:2#viewer>"
    - "no subject here"
`)
	subs := f.Documents[0].Expected[0].Subjects
	if len(subs) != 3 {
		t.Fatalf("got %d subjects", len(subs))
	}
	w := subs[0]
	if w.Subject == nil || !w.Subject.IsWildcard() || w.Caveated {
		t.Errorf("wildcard entry: %+v", w)
	}
	wantX := []ExpectedExclusion{{rel.Subject{Type: "user", ID: "a"}, false}, {rel.Subject{Type: "user", ID: "b"}, true}}
	if !reflect.DeepEqual(w.Exclusions, wantX) {
		t.Errorf("exclusions: got %+v, expected %+v", w.Exclusions, wantX)
	}
	c := subs[1]
	if c.Subject == nil || c.Subject.ID != "c" || !c.Caveated || !reflect.DeepEqual(c.Resources, []string{"doc:1#viewer", "doc:2#viewer"}) {
		t.Errorf("caveated entry: %+v", c)
	}
	if subs[2].Subject != nil {
		t.Errorf("entry without subject: %+v", subs[2])
	}
}

func TestParseMalformed(t *testing.T) {
	const head = "schema: |-\n  definition user {}\n  definition doc {\n    relation viewer: user\n  }\n"
	tests := []struct {
		name string
		text string
		line int
		msg  string
	}{
		{"bad yaml", head + "relationships: |-\n  doc:1#viewer@user:a\nassertions: [\n", 8, ""},
		{"unknown key", head + "assertion:\n  assertTrue: []\n", 6, `unknown key "assertion"`},
		{"unknown assertion kind", head + "assertions:\n  assertTure:\n    - doc:1#viewer@user:a\n", 7, `unknown assertion kind "assertTure"`},
		{"unparsable relationship", head + "relationships: |-\n  doc:1#viewer@user:a\n  doc:2#viewer@@user:b\n", 8, "doc:2#viewer@@user:b"},
		{"relationship against schema", head + "relationships: |-\n  doc:1#viewer@user:a\n  doc:2#owner@user:b\n", 8, `relation "owner" is not defined on "doc"`},
		{"repeated relationship", head + "relationships: |-\n  doc:1#viewer@user:a\n  doc:1#viewer@user:a\n", 8, "repeated"},
		{"schema error", "schema: |-\n  definition user {}\n  definition doc {\n    permission view = nope\n  }\n", 4, "nope"},
		{"bad assertion", head + "assertions:\n  assertTrue:\n    - doc:1#viewer\n", 8, "doc:1#viewer"},
		{"caveat on assertion", head + "assertions:\n  assertFalse:\n    - doc:1#viewer@user:a[somecaveat]\n", 8, "may not carry a caveat"},
		{"bad context", head + "assertions:\n  assertTrue:\n    - 'doc:1#viewer@user:a with {nope'\n", 8, "caveat context"},
		{"bad validation subject", head + "validation:\n  doc:1#viewer:\n    - \"[user:a b] is <doc:1#viewer>\"\n", 8, "invalid subject"},
		{"bad validation key", head + "validation:\n  doc1viewer:\n    - \"[user:a] is <doc:1#viewer>\"\n", 7, "doc1viewer"},
		{"not a mapping", "- a\n- b\n", 1, "expected a mapping"},
		{"empty", "", 0, "no document"},
		{"second document", head + "---\n" + head + "relationships: nope\n", 12, "nope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(context.Background(), "bad.yaml", []byte(tt.text))
			if err == nil {
				t.Fatal("parsed a malformed file")
			}
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v is not a *ParseError", err)
			}
			if pe.Line != tt.line {
				t.Errorf("line: got %d, expected %d (%v)", pe.Line, tt.line, err)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q does not mention %q", err, tt.msg)
			}
			if tt.line > 0 && !strings.HasPrefix(err.Error(), "bad.yaml:") {
				t.Errorf("error %q does not start with the file and line", err)
			}
		})
	}
}

func TestParseSchemaFile(t *testing.T) {
	dir := t.TempDir()
	schemaText := "definition user {}\ndefinition doc {\n  relation viewer: user\n}\n"
	if err := os.WriteFile(filepath.Join(dir, "schema.zed"), []byte(schemaText), 0o644); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "file.yaml")
	if err := os.WriteFile(path, []byte("schemaFile: schema.zed\nrelationships: doc:1#viewer@user:ann\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := ParseFile(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Documents[0].Schema; got != schemaText {
		t.Errorf("schema: got %q, expected the file's text", got)
	}

	if err := os.WriteFile(path, []byte("schemaFile: missing.zed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = ParseFile(context.Background(), path)
	var pe *ParseError
	if !errors.As(err, &pe) || pe.Line != 1 || !strings.Contains(err.Error(), "missing.zed") {
		t.Errorf("missing schema file: got %v", err)
	}
}
