package main

import (
	"os"
	"strings"
	"testing"
)

// TestExportDashIsStdout: `mandate export -` writes to standard output, as
// import's - reads standard input, and creates no file named "-".
func TestExportDashIsStdout(t *testing.T) {
	startClientServer(t)
	if _, errOut, code := cli(t, clientTestSchema, "schema", "write", "-"); code != 0 {
		t.Fatalf("schema write: %s", errOut)
	}
	mustCLI(t, "rel", "write", "doc:plan#viewer@user:alice")
	t.Chdir(t.TempDir())
	out := mustCLI(t, "export", "-", "--fully-consistent")
	if !strings.Contains(out, "doc:plan#viewer@user:alice\n") {
		t.Errorf("export - printed %q, want the relationship", out)
	}
	if _, err := os.Stat("-"); err == nil {
		t.Error(`export - created a file named "-"`)
	}
}
