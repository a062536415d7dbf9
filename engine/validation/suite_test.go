package validation

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/authzed/spicedb/pkg/validationfile/blocks"
	yaml "go.yaml.in/yaml/v3"
)

// The pinned SpiceDB module ships 73 validation files (self.yaml.skip aside).
const spicedbSuiteFiles = 73

// maxReported bounds the failures printed per file; the count of the rest is
// still reported and still fails the test.
const maxReported = 30

func spicedbSuiteDir(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/authzed/spicedb").Output()
	if err != nil {
		t.Fatalf("locating the spicedb module with go list: %v", err)
	}
	dir := strings.TrimSpace(string(out))
	if dir == "" {
		t.Fatal("go list returned no directory for github.com/authzed/spicedb")
	}
	return filepath.Join(dir, "internal", "services", "integrationtesting", "testconfigs")
}

func yamlFiles(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	return files
}

// runSuite runs every file as a subtest and returns the total result.
func runSuite(t *testing.T, files []string) *Result {
	t.Helper()
	total := &Result{}
	for _, path := range files {
		t.Run(filepath.Base(path), func(t *testing.T) {
			ctx := context.Background()
			f, err := ParseFile(ctx, path)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			r := Run(ctx, f, Options{Consistency: true})
			total.add(r)
			for i, fl := range r.Failures {
				if i == maxReported {
					t.Errorf("... and %d more failures", len(r.Failures)-maxReported)
					break
				}
				t.Error(fl.String())
			}
			t.Logf("%d documents, %d assertions, %d validation keys, %d consistency comparisons",
				r.Documents, r.Assertions, r.Validations, r.Comparisons)
		})
	}
	return total
}

func TestSpiceDBSuite(t *testing.T) {
	files := yamlFiles(t, spicedbSuiteDir(t))
	if len(files) != spicedbSuiteFiles {
		t.Fatalf("found %d validation files in the spicedb module, expected %d", len(files), spicedbSuiteFiles)
	}
	total := runSuite(t, files)
	t.Logf("SpiceDB suite: %d files, %d assertions, %d validation keys, %d consistency comparisons, %d failures",
		len(files), total.Assertions, total.Validations, total.Comparisons, len(total.Failures))
	if total.Assertions < 400 {
		t.Errorf("ran %d assertions, expected the suite's ~410", total.Assertions)
	}
}

// spicedbFile is SpiceDB's validation file layout (pkg/validationfile's
// ValidationFile, whose package pulls in SpiceDB's datastore): decoding into
// it is exactly what SpiceDB does with a file.
type spicedbFile struct {
	Relationships     blocks.ParsedRelationships     `yaml:"relationships"`
	Assertions        blocks.Assertions              `yaml:"assertions"`
	ExpectedRelations blocks.ParsedExpectedRelations `yaml:"validation"`
}

// TestSpiceDBSuiteParsesLikeSpiceDB checks the parser against SpiceDB's own
// decoding of the same files: nothing dropped, nothing invented.
func TestSpiceDBSuiteParsesLikeSpiceDB(t *testing.T) {
	for _, path := range yamlFiles(t, spicedbSuiteDir(t)) {
		t.Run(filepath.Base(path), func(t *testing.T) {
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			ours, err := Parse(context.Background(), path, data)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			var theirs spicedbFile
			if err := yaml.Unmarshal(data, &theirs); err != nil {
				t.Fatalf("spicedb decode: %v", err)
			}
			if len(ours.Documents) != 1 {
				t.Fatalf("got %d documents, expected 1", len(ours.Documents))
			}
			doc := ours.Documents[0]
			if got, want := len(doc.Relationships), len(theirs.Relationships.Relationships); got != want {
				t.Errorf("relationships: got %d, spicedb %d", got, want)
			}
			for i, r := range theirs.Relationships.Relationships {
				if i < len(doc.Relationships) && doc.Relationships[i].Key().String() != stripEllipsis(r.Resource.String()+"@"+r.Subject.String()) {
					t.Errorf("relationship %d: got %s, spicedb %s@%s", i, doc.Relationships[i].Key(), r.Resource, r.Subject)
				}
			}
			want := len(theirs.Assertions.AssertTrue) + len(theirs.Assertions.AssertFalse) + len(theirs.Assertions.AssertCaveated)
			if len(doc.Assertions) != want {
				t.Errorf("assertions: got %d, spicedb %d", len(doc.Assertions), want)
			}
			if len(doc.Expected) != len(theirs.ExpectedRelations.ValidationMap) {
				t.Errorf("validation keys: got %d, spicedb %d", len(doc.Expected), len(theirs.ExpectedRelations.ValidationMap))
			}
		})
	}
}

func stripEllipsis(s string) string { return strings.ReplaceAll(s, "#...", "") }

// TestAgentScenarios runs Mandate's agent delegation scenarios (started from
// the shared conformance set) the same way.
func TestAgentScenarios(t *testing.T) {
	files := yamlFiles(t, filepath.Join("testdata", "agents"))
	if len(files) == 0 {
		t.Fatal("no agent scenarios in testdata/agents")
	}
	total := runSuite(t, files)
	t.Logf("agent scenarios: %d files, %d documents, %d assertions, %d consistency comparisons, %d failures",
		len(files), total.Documents, total.Assertions, total.Comparisons, len(total.Failures))
}
