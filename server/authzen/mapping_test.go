package authzen

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseMappingErrors(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		want       []string // fragments of the error
	}{
		{"unknown key", "resources:\n  todo:\n    typ: todo_list\n", []string{"line 3", "typ"}},
		{"bad type name", "subjects:\n  user:\n    type: User-Type\n", []string{"line 3", `"User-Type"`, "schema type name"}},
		{"bad permission", "resources:\n  todo:\n    actions:\n      can_update_todo: Update!\n", []string{"line 4", `"Update!"`, "permission name"}},
		{"empty permission", "actions:\n  read: \"\"\n", []string{"line 2", "empty permission"}},
		{"bad caveat parameter", "resources:\n  todo:\n    properties:\n      ownerID: owner-id\n", []string{"line 4", "caveat parameter"}},
		{"wildcard resource", "resources:\n  todo:\n    id: \"*\"\n", []string{"line 3", "wildcard"}},
		{"bad id", "resources:\n  todo:\n    id: \"a b\"\n", []string{"line 3", "object id"}},
		{"not a map", "resources: [1, 2]\n", []string{"line 1"}},
		{"two errors", "subjects:\n  user:\n    type: Bad\nactions:\n  x: Bad\n", []string{"line 3", "line 5"}},
		{"unknown placeholder", "relationships:\n  - \"group:g#member@user:{subject.name}\"\n", []string{"line 2", "relationships[0]", "{subject.name}"}},
		{"not a relationship", "relationships:\n  - ok:x#member@user:x\n  - \"group:{subject.id}\"\n", []string{"line 3", "relationships[1]", "not a relationship"}},
		{"unmatched brace", "relationships:\n  - \"group:{subject.id#member@user:x\"\n", []string{"line 2", "brace"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseMapping([]byte(tc.yaml))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, f := range tc.want {
				if !strings.Contains(err.Error(), f) {
					t.Errorf("error %q lacks %q", err, f)
				}
			}
		})
	}
}

func TestParseMapping(t *testing.T) {
	m, err := ParseMapping([]byte("subjects:\n  person:\n    type: user\n    on_behalf_of: principal\nresources:\n  todo:\n    type: todo_list\n    id: shared\n    actions:\n      can_update_todo: update\nactions:\n  read: view\n"))
	if err != nil {
		t.Fatal(err)
	}
	if ty, sm := m.subject("person"); ty != "user" || sm.OnBehalfOf != "principal" {
		t.Errorf("subject person: %q %+v", ty, sm)
	}
	if ty, sm := m.subject("agent"); ty != "agent" || sm.OnBehalfOf != DefaultOnBehalfOf {
		t.Errorf("an unmapped subject keeps its name: %q %+v", ty, sm)
	}
	rm := m.resource("todo")
	for action, want := range map[string]string{"can_update_todo": "update", "read": "view", "other": "other"} {
		if got := m.permission(rm, action); got != want {
			t.Errorf("action %s: permission %q, want %q", action, got, want)
		}
	}
	if empty, err := ParseMapping(nil); err != nil || len(empty.Resources) != 0 {
		t.Errorf("an empty file: %v %v", empty, err)
	}
}

// TestExamplesParse: every example's mapping is valid.
func TestExamplesParse(t *testing.T) {
	files, _ := filepath.Glob("../../examples/authzen/*/mapping.yaml")
	if len(files) < 2 {
		t.Fatalf("examples: %v", files)
	}
	for _, f := range files {
		if _, err := LoadMapping(f); err != nil {
			t.Error(err)
		}
	}
	if _, err := LoadMapping(filepath.Join(t.TempDir(), "missing.yaml")); !os.IsNotExist(unwrapAll(err)) {
		t.Errorf("a missing file: %v", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}
