package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/store/memory"
)

const clientTestKey = "client-test-key-7d2a"

// clientTestSchema has a two-level agent type (agents acting for users or
// for other agents), a caveat, and a document granting to both.
const clientTestSchema = `definition user {}

definition agent {
	relation acts_for: user | agent
}

caveat within_limit(amount int, limit int) {
	amount <= limit
}

definition doc {
	relation viewer: user | agent | user with within_limit
	permission view = viewer
}
`

// startClientServer runs a real server on loopback and points the client
// environment at it. It returns the gRPC address.
func startClientServer(t *testing.T) string {
	t.Helper()
	st := memory.New()
	srv, err := server.New(st, engine.New(), server.Config{
		GRPCAddr:            "127.0.0.1:0",
		PresharedKeys:       []string{clientTestKey},
		ShutdownGracePeriod: 5 * time.Second,
	})
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Error("server did not stop within 15s")
		}
		st.Close()
	})
	for deadline := time.Now().Add(5 * time.Second); !srv.Ready(); {
		if time.Now().After(deadline) {
			t.Fatal("server not ready within 5s")
		}
		time.Sleep(2 * time.Millisecond)
	}
	addr := srv.GRPCAddr().String()
	t.Setenv("MANDATE_ENDPOINT", addr)
	t.Setenv("MANDATE_TOKEN", clientTestKey)
	t.Setenv("MANDATE_INSECURE", "true")
	return addr
}

// cli runs the mandate command line with stdin and returns stdout, stderr
// and the exit status, as run does (run itself cannot be given stdin).
func cli(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	root := newRootCommand()
	var out, errb bytes.Buffer
	root.SetArgs(args)
	root.SetIn(strings.NewReader(stdin))
	root.SetOut(&out)
	root.SetErr(&errb)
	err := root.ExecuteContext(context.Background())
	var code exitCode
	switch {
	case err == nil:
		return out.String(), errb.String(), 0
	case errors.As(err, &code):
		return out.String(), errb.String(), int(code)
	}
	fmt.Fprintf(&errb, "mandate: %v\n", err)
	return out.String(), errb.String(), 1
}

// mustCLI runs the command line and fails the test on a non-zero status.
func mustCLI(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := cli(t, "", args...)
	if code != 0 {
		t.Fatalf("mandate %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

func revisionOf(t *testing.T, out string) string {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		if tok, ok := strings.CutPrefix(line, "revision: "); ok && tok != "" {
			return tok
		}
	}
	t.Fatalf("no revision in output:\n%s", out)
	return ""
}

func TestClientEndToEnd(t *testing.T) {
	startClientServer(t)
	dir := t.TempDir()
	schemaFile := filepath.Join(dir, "schema.zed")
	if err := os.WriteFile(schemaFile, []byte(clientTestSchema), 0o600); err != nil {
		t.Fatal(err)
	}
	revisionOf(t, mustCLI(t, "schema", "write", schemaFile))
	if got := mustCLI(t, "schema", "read", "--fully-consistent"); !strings.Contains(got, "relation acts_for: user | agent") {
		t.Errorf("schema read:\n%s", got)
	}

	relsFile := filepath.Join(dir, "rels.txt")
	if err := os.WriteFile(relsFile, []byte("# the chain agent:b -> agent:a -> user:alice\nagent:b#acts_for@agent:a\n\nagent:a#acts_for@user:alice\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	revisionOf(t, mustCLI(t, "rel", "write", "--file", relsFile))
	tok := revisionOf(t, mustCLI(t, "rel", "write",
		"doc:readme#viewer@user:alice",
		"doc:readme#viewer@agent:a",
		`doc:budget#viewer@user:alice[within_limit:{"limit":100}]`,
	))

	got := mustCLI(t, "rel", "read", "doc", "--relation", "viewer", "--consistency-token", tok)
	for _, want := range []string{"doc:readme#viewer@user:alice", "doc:readme#viewer@agent:a", `doc:budget#viewer@user:alice[within_limit:{"limit":100}]`} {
		if !strings.Contains(got, want) {
			t.Errorf("rel read lacks %q:\n%s", want, got)
		}
	}

	cases := []struct {
		name string
		args []string
		want []string
		not  []string
	}{
		{"allowed", []string{"check", "doc:readme#view", "user:alice"}, []string{"allowed\n", "revision: "}, nil},
		{"denied", []string{"check", "doc:readme#view", "user:bob"}, []string{"denied\n"}, nil},
		{"conditional", []string{"check", "doc:budget#view", "user:alice"}, []string{"conditional (missing: amount)"}, nil},
		{"context satisfies the caveat", []string{"check", "doc:budget#view", "user:alice", "--context", `{"amount": 10}`}, []string{"allowed\n"}, nil},
		{"context fails the caveat", []string{"check", "doc:budget#view", "user:alice", "--context", `{"amount": 1000}`}, []string{"denied\n"}, nil},
		{"explain through two links", []string{"check", "doc:readme#view", "agent:b", "--explain"}, []string{
			"denied\n",
			"chain: agent:b -> agent:a -> user:alice\n",
			"  agent:b: grant=denied link=allowed",
			"  agent:a: grant=allowed link=allowed",
			"  user:alice: grant=allowed",
			"reason: agent_not_granted\n",
			"failed at: agent:b (chain element 0)",
			"resolvable by approval: yes",
		}, nil},
		{"explain an allowed chain", []string{"check", "doc:readme#view", "agent:a", "--explain", "--on-behalf-of", "user:alice"}, []string{
			"allowed\n", "chain: agent:a -> user:alice\n",
		}, []string{"reason:", "failed at"}},
		{"explain a user", []string{"check", "doc:readme#view", "user:alice", "--explain"}, []string{"delegation: none"}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := append(append([]string{}, c.args...), "--consistency-token", tok)
			out := mustCLI(t, args...)
			for _, w := range c.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			for _, w := range c.not {
				if strings.Contains(out, w) {
					t.Errorf("output has %q:\n%s", w, out)
				}
			}
		})
	}

	// --fail-on-denied sets the documented statuses; without it any answer
	// exits 0 (checked above).
	for _, c := range []struct {
		args []string
		code int
	}{
		{[]string{"check", "doc:readme#view", "user:alice", "--fail-on-denied"}, 0},
		{[]string{"check", "doc:readme#view", "user:bob", "--fail-on-denied"}, exitDenied},
		{[]string{"check", "doc:budget#view", "user:alice", "--fail-on-denied"}, exitConditional},
	} {
		out, errOut, code := cli(t, "", append(c.args, "--fully-consistent")...)
		if code != c.code {
			t.Errorf("%v: exit %d, want %d\n%s%s", c.args, code, c.code, out, errOut)
		}
	}

	if got := mustCLI(t, "lookup-resources", "doc#view", "user:alice", "--fully-consistent"); !strings.Contains(got, "doc:readme\n") || !strings.Contains(got, "doc:budget conditional (missing: amount)") {
		t.Errorf("lookup-resources:\n%s", got)
	}
	if got := mustCLI(t, "lookup-subjects", "doc:readme#view", "user", "--fully-consistent"); got != "user:alice\n" {
		t.Errorf("lookup-subjects = %q, want user:alice", got)
	}

	// touch replaces, delete removes.
	mustCLI(t, "rel", "touch", `doc:budget#viewer@user:alice[within_limit:{"limit":5}]`)
	tok = revisionOf(t, mustCLI(t, "rel", "delete", "doc:readme#viewer@user:alice"))
	if got := mustCLI(t, "rel", "read", "doc", "--consistency-token", tok); strings.Contains(got, "doc:readme#viewer@user:alice") || !strings.Contains(got, `"limit":5`) {
		t.Errorf("after touch and delete:\n%s", got)
	}
	if got := mustCLI(t, "check", "doc:readme#view", "user:alice", "--consistency-token", tok); got[:len("denied")] != "denied" {
		t.Errorf("check after delete:\n%s", got)
	}

	// Relationships from standard input.
	_, errOut, code := cli(t, "doc:x#viewer@user:carol\n", "rel", "write", "--file", "-")
	if code != 0 {
		t.Errorf("rel write from stdin: exit %d: %s", code, errOut)
	}

	// schema validate: a compatible schema is valid, one dropping a type
	// in use is not (exit 1).
	out, _, code := cli(t, clientTestSchema+"definition team {}\n", "schema", "validate", "-")
	if code != 0 || !strings.Contains(out, "valid\n") || !strings.Contains(out, "team") {
		t.Errorf("schema validate (compatible): exit %d\n%s", code, out)
	}
	out, _, code = cli(t, "definition user {}\n", "schema", "validate", "-")
	if code != 1 || !strings.Contains(out, "invalid\n") || !strings.Contains(out, "would orphan") {
		t.Errorf("schema validate (orphaning): exit %d\n%s", code, out)
	}
}

func TestClientErrors(t *testing.T) {
	startClientServer(t)
	if _, errOut, code := cli(t, clientTestSchema, "schema", "write", "-"); code != 0 {
		t.Fatalf("schema write: %s", errOut)
	}

	cases := []struct {
		name string
		env  map[string]string
		args []string
		want []string
	}{
		{"wrong token", map[string]string{"MANDATE_TOKEN": "not-the-key"}, []string{"schema", "read"}, []string{"Unauthenticated", "refused the key"}},
		{"wrong token flag wins over env", nil, []string{"check", "doc:x#view", "user:a", "--token", "nope"}, []string{"check: Unauthenticated"}},
		{"no token", map[string]string{"MANDATE_TOKEN": ""}, []string{"schema", "read"}, []string{"Unauthenticated", "set --token or MANDATE_TOKEN"}},
		{"malformed resource", nil, []string{"check", "doc-readme", "user:a"}, []string{"RESOURCE#PERMISSION argument", `"doc-readme"`}},
		{"malformed subject", nil, []string{"check", "doc:x#view", "alice"}, []string{"SUBJECT argument", `"alice"`}},
		{"malformed context", nil, []string{"check", "doc:x#view", "user:a", "--context", "{amount"}, []string{"--context", "JSON object"}},
		{"malformed on-behalf-of", nil, []string{"check", "doc:x#view", "agent:a", "--on-behalf-of", "alice"}, []string{"--on-behalf-of", `"alice"`}},
		{"two consistencies", nil, []string{"check", "doc:x#view", "user:a", "--fully-consistent", "--consistency-token", "t"}, []string{"exclusive"}},
		{"malformed relationship", nil, []string{"rel", "write", "doc:x#viewer@user:a", "doc:x#viewer"}, []string{"argument 2", `"doc:x#viewer"`}},
		{"no relationships", nil, []string{"rel", "delete"}, []string{"no relationships given"}},
		{"unknown type on the server", nil, []string{"check", "nosuch:x#view", "user:a", "--fully-consistent"}, []string{"check: InvalidArgument"}},
		{"tls against plaintext", map[string]string{"MANDATE_INSECURE": ""}, []string{"schema", "read", "--timeout", "2s"}, []string{"schema read", "--insecure"}},
		{"bad env value", map[string]string{"MANDATE_TIMEOUT": "soon"}, []string{"schema", "read"}, []string{"MANDATE_TIMEOUT"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			out, errOut, code := cli(t, "", c.args...)
			if code == 0 {
				t.Fatalf("exit 0, want an error\nstdout: %s", out)
			}
			for _, w := range c.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errOut)
				}
			}
			if strings.Contains(errOut, "not-the-key") || strings.Contains(errOut, clientTestKey) {
				t.Errorf("a key appears in the error:\n%s", errOut)
			}
		})
	}
}
