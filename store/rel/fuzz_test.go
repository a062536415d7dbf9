package rel_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/mandate-authz/mandate/store/rel"
)

// relationshipSeeds covers every part of the text form: usersets, ellipsis,
// wildcards, prefixed types, caveats with and without context (nested,
// lists, numbers, unicode), expirations with and without fractions or
// offsets, and near misses.
var relationshipSeeds = []string{
	"doc:1#viewer@user:ann",
	"doc:1#viewer@user:ann#...",
	"doc:1#viewer@group:eng#member",
	"doc:1#viewer@user:*",
	"org/doc:a-b_c|d=e+f#viewer@org/user:Z9",
	`doc:1#viewer@user:ann[is_ok]`,
	`doc:1#viewer@user:ann[is_ok:{}]`,
	`doc:1#viewer@user:ann[is_ok:{"x":1}]`,
	`doc:1#viewer@user:ann[is_ok:{"x":1.5,"y":"z","l":[1,"a",true,null],"m":{"k":{"n":-2e10}}}]`,
	`doc:1#viewer@user:ann[is_ok:{"ü":"ñ\u00e9"}]`,
	"doc:1#viewer@user:ann[expiration:2030-01-01T00:00:00Z]",
	"doc:1#viewer@user:ann[expiration:2030-01-01T00:00:00.123456789Z]",
	"doc:1#viewer@user:ann[expiration:2030-01-01T02:00:00+02:00]",
	`doc:1#viewer@user:ann[is_ok:{"x":"y"}][expiration:2030-01-01T00:00:00Z]`,
	"  doc:1#viewer@user:ann  ",
	"doc:1#viewer@user:ann[",
	"doc:*#viewer@user:ann",
	"doc:1#viewer@user:*#member",
	"doc:1#viewer",
	"doc:1@user:ann",
	"",
}

// FuzzParseRelationship: Parse never panics, and a parsed relationship's
// String parses back to an Equal relationship.
func FuzzParseRelationship(f *testing.F) {
	for _, s := range relationshipSeeds {
		f.Add(s)
	}
	for _, s := range spiceDBRelationships(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		r, err := rel.Parse(text)
		if err != nil {
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("Parse(%q) accepted a relationship that does not validate: %v", text, err)
		}
		s := r.String()
		back, err := rel.Parse(s)
		if err != nil {
			t.Fatalf("Parse(%q).String() = %q, which does not parse: %v", text, s, err)
		}
		if !back.Equal(r) {
			t.Fatalf("Parse(%q).String() = %q parses to %q, not an equal relationship", text, s, back)
		}
		if again := back.String(); again != s {
			t.Fatalf("String is not stable: %q then %q", s, again)
		}
		c := r.Clone()
		if !c.Equal(r) {
			t.Fatalf("Clone of %q is not equal", s)
		}
	})
}

// spiceDBRelationships reads the relationships of SpiceDB's own validation
// files, in place in the module cache (they are not copied into this
// repository). Without the module cache only the hand-written seeds run.
func spiceDBRelationships(f *testing.F) []string {
	dir := spiceDBTestConfigs(f)
	if dir == "" {
		return nil
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	var out []string
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		var doc struct {
			Relationships string `yaml:"relationships"`
		}
		if yaml.Unmarshal(data, &doc) != nil {
			continue
		}
		for line := range strings.SplitSeq(doc.Relationships, "\n") {
			if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "//") {
				out = append(out, line)
			}
		}
	}
	return out
}

func spiceDBTestConfigs(f *testing.F) string {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/authzed/spicedb").Output()
	if err != nil {
		f.Logf("spicedb module not found (%v): fuzzing from hand-written seeds only", err)
		return ""
	}
	return filepath.Join(strings.TrimSpace(string(out)), "internal", "services", "integrationtesting", "testconfigs")
}
