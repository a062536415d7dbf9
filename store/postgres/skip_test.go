package postgres_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/mandate-authz/mandate/store/postgres/pgtest"
)

// TestPackageSkipsWithoutDatabase runs this package's tests again, in a
// child process without pgtest.EnvVar, as `go test ./...` runs them on a
// machine without PostgreSQL: every test that needs the database must skip,
// none may fail (as TestConformance once did, skipping its parent from a
// subtest).
func TestPackageSkipsWithoutDatabase(t *testing.T) {
	if os.Getenv("MANDATE_PGTEST_CHILD") != "" {
		t.Skip("already the child process")
	}
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run", "^Test", "-test.v", "-test.timeout", "5m")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, pgtest.EnvVar+"=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "MANDATE_PGTEST_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the package's tests without %s failed: %v\n%s", pgtest.EnvVar, err, out)
	}
	for _, name := range []string{"TestConformance", "TestGC"} {
		if !strings.Contains(string(out), "--- SKIP: "+name+" ") {
			t.Errorf("%s did not skip without %s:\n%s", name, pgtest.EnvVar, out)
		}
	}
}
