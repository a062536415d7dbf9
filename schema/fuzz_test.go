package schema_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/store/rel"
)

// schemaSeeds exercise every construct of the language, plus broken text.
var schemaSeeds = []string{
	"",
	"definition user {}",
	"definition user {}\ndefinition doc {\n\trelation viewer: user | user:* | group#member\n\tpermission view = viewer\n}\ndefinition group {\n\trelation member: user | group#member\n}",
	"use expiration\n\ncaveat ok(a int, s string, l list<string>, b bool) {\n\ta > 1 && s in l || b\n}\n\ndefinition user {}\n\ndefinition doc {\n\trelation r: user with ok | user with expiration | user:* with ok and expiration\n\tpermission p = (r + nil) & r - (r)\n}",
	"definition user {}\ndefinition folder {\n\trelation parent: folder\n\trelation viewer: user\n\tpermission view = viewer + parent->view + parent.any(view) & parent.all(view)\n}",
	"use self\ndefinition user {\n\tpermission me = self\n}",
	"definition org/user {}\ndefinition org/doc {\n\trelation owner: org/user\n\tpermission edit = owner\n}",
	"definition user {}\ndefinition agent {\n\trelation acts_for: user | agent\n}",
	"definition user {}\ndefinition agent {\n\tpermission acts_for = nil\n}",
	"definition user {}\ndefinition agent {\n\trelation acts_for: user:*\n}",
	"caveat c(x int) { x > }",
	"definition doc { relation r: missing }",
	"definition doc { permission p = q }",
	"definition doc {\n\trelation r: doc\n\tpermission p = p2\n\tpermission p2 = p\n}",
	"/* comment */ definition a {} // trailing",
	"definition a { relation b: a#b with expiration }",
	"import \"x.zed\"",
	"partial p {}",
}

// FuzzCompile: Compile on any text returns an error or a schema, never
// panics; every relationship a compiled schema could hold validates without
// panicking, and the ones its allowed types describe are accepted.
func FuzzCompile(f *testing.F) {
	for _, s := range schemaSeeds {
		f.Add(s)
	}
	for _, s := range spiceDBSchemas(f) {
		f.Add(s)
	}
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, text string) {
		sch, err := schema.Compile(ctx, text)
		if err != nil {
			if sch != nil {
				t.Fatalf("Compile returned both a schema and an error: %v", err)
			}
			var se *schema.Error
			if !errors.As(err, &se) {
				t.Fatalf("Compile error is %T, want *schema.Error: %v", err, err)
			}
			return
		}
		if sch == nil {
			t.Fatal("Compile returned neither a schema nor an error")
		}
		if sch.Text != text {
			t.Fatal("compiled schema does not keep its source text")
		}
		checkRelationships(t, sch)
		for name, c := range sch.Caveats {
			// Nothing supplied: the caveat is unknown or decided, never a panic.
			if _, err := c.Evaluate(context.Background(), nil, nil, nil); err != nil {
				t.Logf("caveat %s with no context: %v", name, err)
			}
		}
	})
}

// checkRelationships validates, for each relation, a relationship of every
// allowed subject type (which must be accepted) and some that must not.
func checkRelationships(t *testing.T, sch *schema.Schema) {
	future := time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, defName := range sch.DefinitionNames() {
		d := sch.Definitions[defName]
		for _, name := range d.Order {
			r := d.Relations[name]
			if r == nil {
				t.Fatalf("%s: Order names %q, which is not in Relations", defName, name)
			}
			base := rel.Relationship{Resource: rel.Object{Type: defName, ID: "r1"}, Relation: name}
			if r.IsPermission {
				x := base
				x.Subject = rel.Subject{Type: defName, ID: "s1"}
				if err := sch.ValidateRelationship(x); err == nil {
					t.Fatalf("relationship %s writes to permission %s#%s but validates", x, defName, name)
				}
				continue
			}
			for _, a := range r.Allowed {
				x := base
				x.Subject = rel.Subject{Type: a.Type, ID: "s1", Relation: a.Relation}
				if a.Wildcard {
					x.Subject = rel.Subject{Type: a.Type, ID: rel.Wildcard}
				}
				if a.Caveat != "" {
					x.Caveat = &rel.Caveat{Name: a.Caveat}
				}
				if a.Expiration {
					x.Expiration = future
				}
				if err := sch.ValidateRelationship(x); err != nil {
					t.Fatalf("relationship %s of allowed type %s does not validate: %v", x, a, err)
				}
				// The same with an undeclared caveat, and with an
				// unknown subject type: must fail, not panic.
				y := x
				y.Caveat = &rel.Caveat{Name: "no_such_caveat", Context: map[string]any{"k": 1.0}}
				if err := sch.ValidateRelationship(y); err == nil {
					t.Fatalf("relationship %s with an undeclared caveat validates", y)
				}
				z := x
				z.Subject.Type = "no_such_type"
				if err := sch.ValidateRelationship(z); err == nil {
					t.Fatalf("relationship %s with an undefined subject type validates", z)
				}
			}
		}
	}
}

// spiceDBSchemas reads the schemas of SpiceDB's own validation files, in
// place in the module cache (they are not copied into this repository).
// Without the module cache only the hand-written seeds run.
func spiceDBSchemas(f *testing.F) []string {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/authzed/spicedb").Output()
	if err != nil {
		f.Logf("spicedb module not found (%v): fuzzing from hand-written seeds only", err)
		return nil
	}
	dir := filepath.Join(strings.TrimSpace(string(out)), "internal", "services", "integrationtesting", "testconfigs")
	files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	var schemas []string
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		var doc struct {
			Schema string `yaml:"schema"`
		}
		if yaml.Unmarshal(data, &doc) == nil && doc.Schema != "" {
			schemas = append(schemas, doc.Schema)
		}
	}
	return schemas
}
