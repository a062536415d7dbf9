package validation

import (
	"context"
	"strings"
	"testing"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/store/rel"
)

func runText(t *testing.T, text string) *Result {
	t.Helper()
	return Run(context.Background(), mustParseFile(t, text), Options{Consistency: true})
}

func failureStrings(r *Result) []string {
	out := make([]string, len(r.Failures))
	for i, f := range r.Failures {
		out[i] = f.String()
	}
	return out
}

func TestRunPassingFile(t *testing.T) {
	r := runText(t, twoDocs)
	if r.Failed() {
		t.Fatalf("unexpected failures:\n%s", strings.Join(failureStrings(r), "\n"))
	}
	if r.Documents != 2 || r.Assertions != 6 || r.Validations != 1 {
		t.Errorf("counts: %d documents, %d assertions, %d validations; expected 2, 6, 1", r.Documents, r.Assertions, r.Validations)
	}
	if r.Comparisons == 0 {
		t.Error("the consistency check compared nothing")
	}
}

func TestRunReportsFailedAssertions(t *testing.T) {
	r := runText(t, `schema: |-
  caveat is_weekday(day string) {
    day != "sun"
  }
  definition user {}
  definition doc {
    relation viewer: user | user with is_weekday
    permission view = viewer
  }
relationships: |-
  doc:1#viewer@user:ann
  doc:1#viewer@user:bob[is_weekday]
assertions:
  assertTrue:
    - doc:1#view@user:ann
    - doc:1#view@user:bob
  assertCaveated:
    - 'doc:1#view@user:bob with {"day": "sun"}'
  assertFalse:
    - doc:1#view@user:ann
    - doc:1#view@user:carl
`)
	want := []string{
		"test.yaml:16: assertTrue doc:1#view@user:bob: expected allowed, got conditional (missing context: day)",
		`test.yaml:18: assertCaveated doc:1#view@user:bob with {"day": "sun"}: expected conditional, got denied`,
		"test.yaml:20: assertFalse doc:1#view@user:ann: expected denied, got allowed",
	}
	got := failureStrings(r)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("failures:\n got %s\nwant %s", strings.Join(got, "\n     "), strings.Join(want, "\n     "))
	}
	for _, f := range r.Failures {
		if f.Kind != KindAssertion {
			t.Errorf("failure %v has kind %q", f, f.Kind)
		}
	}
}

func TestRunNamesDocumentInMultiDocumentFile(t *testing.T) {
	text := strings.Replace(twoDocs, "    - doc:2#viewer@user:dan", "    - doc:2#viewer@user:eve", 1)
	r := runText(t, text)
	got := failureStrings(r)
	want := "test.yaml:51: document 2: assertTrue doc:2#viewer@user:eve: expected allowed, got denied"
	if len(got) != 1 || got[0] != want {
		t.Errorf("failures: got %q, expected [%q]", got, want)
	}
}

// validationSchema exercises the shapes of the validation block: usersets,
// exclusions, wildcards with exclusions, caveats on subjects and on usersets.
const validationSchema = `schema: |-
  caveat only_one(x int) {
    x == 1
  }
  definition user {}
  definition group {
    relation member: user | group#member
  }
  definition doc {
    relation viewer: user | user:* | group#member | user with only_one | group#member with only_one
    relation banned: user
    permission view = viewer - banned
  }
relationships: |-
  group:eng#member@user:ann
  group:eng#member@user:bob
  doc:1#viewer@group:eng#member
  doc:1#viewer@user:carl
  doc:1#banned@user:bob
  doc:2#viewer@user:*
  doc:2#banned@user:bob
  doc:3#viewer@user:dan[only_one]
  doc:4#viewer@group:eng#member[only_one]
`

func TestRunValidationBlock(t *testing.T) {
	r := runText(t, validationSchema+`validation:
  doc:1#view:
    - "[group:eng#member] is <doc:1#viewer>"
    - "[user:ann] is <group:eng#member>"
    - "[user:carl] is <doc:1#viewer>"
  doc:2#view:
    - "[user:* - {user:bob}] is <doc:2#viewer>"
  doc:3#view:
    - "[user:dan[...]] is <doc:3#viewer>"
  doc:4#viewer:
    - "[group:eng#member[...]] is <doc:4#viewer>"
    - "[user:ann[...]] is <group:eng#member>"
    - "[user:bob[...]] is <group:eng#member>"
  group:eng#member:
    - "[user:ann] is <group:eng#member>"
    - "[user:bob] is <group:eng#member>"
`)
	if r.Failed() {
		t.Fatalf("unexpected failures:\n%s", strings.Join(failureStrings(r), "\n"))
	}
	if r.Validations != 5 {
		t.Errorf("ran %d validation keys, expected 5", r.Validations)
	}
}

func TestRunValidationBlockFailures(t *testing.T) {
	r := runText(t, validationSchema+`validation:
  doc:1#view:
    - "[user:ann] is <doc:1#viewer>"
    - "[user:bob] is <group:eng#member>"
    - "[user:carl[...]] is <doc:1#viewer>"
    - "nothing"
  doc:2#view:
    - "[user:*] is <doc:2#viewer>"
  doc:3#view:
    - "[user:dan] is <doc:3#viewer>"
    - "[user:ann - {user:x}] is <doc:3#viewer>"
`)
	want := []string{
		"test.yaml:26: validation doc:1#view subject user:ann: expected found on <doc:1#viewer>, got found on <group:eng#member>",
		"test.yaml:27: validation doc:1#view subject user:bob: expected the subject to be found, got not found",
		"test.yaml:28: validation doc:1#view subject user:carl: expected caveated, got not caveated",
		"test.yaml:29: validation doc:1#view nothing: expected a [subject] in the entry, got none",
		"test.yaml:25: validation doc:1#view subject group:eng#member: expected only the listed subjects, got unlisted [group:eng#member] is <doc:1#viewer>",
		"test.yaml:31: validation doc:2#view subject user:*: expected excluded subjects {}, got {user:bob}",
		"test.yaml:33: validation doc:3#view subject user:dan: expected not caveated, got caveated",
		"test.yaml:34: validation doc:3#view subject user:ann: expected the subject to be found, got not found",
	}
	got := failureStrings(r)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("failures:\n got %s\nwant %s", strings.Join(got, "\n     "), strings.Join(want, "\n     "))
	}
}

func TestRunReportsLoadFailure(t *testing.T) {
	f := mustParseFile(t, twoDocs)
	// A relationship the schema would reject, slipped past the parser.
	f.Documents[1].Relationships = append(f.Documents[1].Relationships, f.Documents[0].Relationships[0])
	r := Run(context.Background(), f, Options{})
	if len(r.Failures) != 1 || r.Failures[0].Kind != KindLoad || r.Failures[0].Document != 2 {
		t.Fatalf("failures: %q", failureStrings(r))
	}
	if !strings.Contains(r.Failures[0].Got, "group") {
		t.Errorf("load failure does not name the problem: %v", r.Failures[0])
	}
}

func TestDescribe(t *testing.T) {
	got := describe(engine.CheckResult{Decision: engine.Denied, Delegation: &engine.Delegation{
		Chain:  []engine.ChainElement{{Subject: objectOf("agent:b")}, {Subject: objectOf("user:ann")}},
		Reason: engine.ReasonOutOfScope,
	}})
	if want := "denied (chain agent:b -> user:ann; reason out_of_scope)"; got != want {
		t.Errorf("got %q, expected %q", got, want)
	}
}

func objectOf(s string) rel.Object {
	typ, id, _ := strings.Cut(s, ":")
	return rel.Object{Type: typ, ID: id}
}
