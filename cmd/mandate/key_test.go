package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mandate-authz/mandate/server/apikey"
)

// TestKeyGenerate: the printed entry, pasted into a keys file, admits the
// printed key with exactly its scopes; the key itself is not in the entry.
func TestKeyGenerate(t *testing.T) {
	out := mustCLI(t, "key", "generate", "billing", "--scopes", "check,audit")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "key: mandate_") {
		t.Fatalf("output:\n%s", out)
	}
	key := strings.TrimPrefix(lines[0], "key: ")
	if strings.Contains(lines[2], key) {
		t.Fatal("the keys-file entry contains the key")
	}
	ring := loadEntry(t, lines[2])
	k, ok := ring.Lookup(key)
	if !ok || k.Name != "billing" || k.Authorize("/mandate.v1.AuditService/Query") != nil || k.Authorize("/mandate.v1.SchemaService/WriteSchema") == nil {
		t.Errorf("the generated key: %+v, found %v", k, ok)
	}
	for _, args := range [][]string{
		{"key", "generate", "x", "--scopes", "root"},
		{"key", "generate", "x"},
		{"key", "generate", "a b", "--scopes", "check"},
		{"key", "generate", "x", "--scopes", "approvals", "--person", "alice"},
		{"key", "generate", "x", "--scopes", "approvals", "--person", "group:eng#member"},
		{"key", "generate", "x", "--scopes", "approvals", "--person", "user:*"},
		{"key", "generate", "x", "--scopes", "approvals", "--person", `user:a"b`},
	} {
		if _, _, code := cli(t, "", args...); code == 0 {
			t.Errorf("mandate %v succeeded", args)
		}
	}
}

// TestKeyGeneratePerson: --person binds the printed entry to the person,
// and the keys file loads it so.
func TestKeyGeneratePerson(t *testing.T) {
	out := mustCLI(t, "key", "generate", "alice", "--scopes", "approvals", "--person", "user:alice")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasSuffix(lines[2], `, person: "user:alice"}`) {
		t.Fatalf("output:\n%s", out)
	}
	ring := loadEntry(t, lines[2])
	k, ok := ring.Lookup(strings.TrimPrefix(lines[0], "key: "))
	if !ok || k.Person != "user:alice" || k.Authorize("/mandate.v1.ApprovalService/Approve") != nil {
		t.Errorf("the generated key: %+v, found %v", k, ok)
	}
}

// loadEntry opens a keys file holding just the printed entry.
func loadEntry(t *testing.T, entry string) *apikey.Keyring {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keys.yaml")
	if err := os.WriteFile(path, []byte("keys:\n"+entry+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ring, err := apikey.Open(path)
	if err != nil {
		t.Fatalf("the printed entry does not load: %v\n%s", err, entry)
	}
	return ring
}
