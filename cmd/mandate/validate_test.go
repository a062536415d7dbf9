package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const passingFile = `schema: |-
  definition user {}
  definition doc {
    relation owner: user
    relation viewer: user
    permission view = owner + viewer
  }
relationships: |-
  doc:1#viewer@user:ann
assertions:
  assertTrue:
    - doc:1#view@user:ann
  assertFalse:
    - doc:1#view@user:bob
validation:
  doc:1#view:
    - "[user:ann] is <doc:1#viewer>"
`

func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestValidateCommand(t *testing.T) {
	pass := writeFile(t, "pass.yaml", passingFile)
	fail := writeFile(t, "fail.yaml", strings.Replace(passingFile, "doc:1#view@user:bob", "doc:1#view@user:ann", 1))
	bad := writeFile(t, "bad.yaml", strings.Replace(passingFile, "doc:1#viewer@user:ann", "doc:1#viewer@@user:ann", 1))

	tests := []struct {
		name     string
		args     []string
		code     int
		stdout   []string
		noStdout []string
		stderr   string
	}{
		{
			name:   "passing file",
			args:   []string{"validate", pass},
			code:   0,
			stdout: []string{"ok: 1 file, 1 document, 2 assertions, 1 validation key; 0 failures, 0 malformed files"},
		},
		{
			name:   "passing file with consistency",
			args:   []string{"validate", "--consistency", pass},
			code:   0,
			stdout: []string{"ok: 1 file, 1 document, 2 assertions, 1 validation key,", "consistency comparisons; 0 failures"},
		},
		{
			name: "failing file",
			args: []string{"validate", pass, fail},
			code: 1,
			stdout: []string{
				fail + ":14: assertFalse doc:1#view@user:ann: expected denied, got allowed\n",
				"FAIL: 2 files, 2 documents, 4 assertions, 2 validation keys; 1 failure, 0 malformed files",
			},
			noStdout: []string{pass + ":"},
		},
		{
			name:   "malformed file",
			args:   []string{"validate", bad, pass},
			code:   1,
			stdout: []string{bad + ":9: ", "doc:1#viewer@@user:ann", "FAIL: 2 files, 1 document, 2 assertions, 1 validation key; 0 failures, 1 malformed file"},
		},
		{
			name:   "missing file",
			args:   []string{"validate", filepath.Join(t.TempDir(), "nope.yaml")},
			code:   1,
			stdout: []string{"nope.yaml", "1 malformed file"},
		},
		{
			name:   "no file",
			args:   []string{"validate"},
			code:   1,
			stderr: "mandate: validate: no file given (usage: mandate validate FILE... [flags])\n",
		},
		{
			name:   "unknown command",
			args:   []string{"frobnicate"},
			code:   1,
			stderr: "mandate: unknown command \"frobnicate\" for \"mandate\"\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, tt.args...)
			if code != tt.code {
				t.Errorf("exit status %d, expected %d\nstdout:\n%s\nstderr:\n%s", code, tt.code, stdout, stderr)
			}
			for _, s := range tt.stdout {
				if !strings.Contains(stdout, s) {
					t.Errorf("stdout lacks %q:\n%s", s, stdout)
				}
			}
			for _, s := range tt.noStdout {
				if strings.Contains(stdout, s) {
					t.Errorf("stdout has %q:\n%s", s, stdout)
				}
			}
			if stderr != tt.stderr {
				t.Errorf("stderr %q, expected %q", stderr, tt.stderr)
			}
		})
	}
}

// TestValidateBinary builds and runs the real binary once, so main's exit
// status wiring is covered too.
func TestValidateBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary; skipped with -short")
	}
	bin := filepath.Join(t.TempDir(), "mandate")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	pass := writeFile(t, "pass.yaml", passingFile)
	fail := writeFile(t, "fail.yaml", strings.Replace(passingFile, "doc:1#view@user:bob", "doc:1#view@user:ann", 1))

	out, err := exec.Command(bin, "validate", pass).CombinedOutput()
	if err != nil {
		t.Errorf("passing file: %v\n%s", err, out)
	}
	out, err = exec.Command(bin, "validate", fail).CombinedOutput()
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() != 1 {
		t.Errorf("failing file: got %v, expected exit status 1\n%s", err, out)
	}
	if !strings.Contains(string(out), "assertFalse doc:1#view@user:ann: expected denied, got allowed") {
		t.Errorf("failing file: output lacks the failure:\n%s", out)
	}
}
