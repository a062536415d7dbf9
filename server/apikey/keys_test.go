package apikey

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func writeKeys(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestKeysFile(t *testing.T) {
	checkKey, checkHash, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	adminKey, adminHash, _ := Generate()
	if !strings.HasPrefix(checkKey, "mandate_") || strings.Contains(checkHash, checkKey) {
		t.Fatalf("key %q, hash %q", checkKey, checkHash)
	}
	path := filepath.Join(t.TempDir(), "keys.yaml")
	writeKeys(t, path, "keys:\n"+
		"  - {name: reader, hash: "+checkHash+", scopes: [check], concurrency: 1}\n"+
		"  - {name: ops, hash: "+adminHash+", scopes: [admin], rate: 1, burst: 2}\n")
	ring, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	reader, ok := ring.Lookup(checkKey)
	if !ok || reader.Name != "reader" {
		t.Fatalf("Lookup(reader's key) = %v, %v", reader, ok)
	}
	if _, ok := ring.Lookup(checkHash); ok {
		t.Error("the hash itself was accepted as a key")
	}
	if err := reader.Authorize("/mandate.v1.PermissionService/Check"); err != nil {
		t.Errorf("check-only key, Check: %v", err)
	}
	err = reader.Authorize("/authzed.api.v1.PermissionsService/WriteRelationships")
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), `"write" scope`) {
		t.Errorf("check-only key, WriteRelationships: %v, want PermissionDenied naming the write scope", err)
	}

	// Concurrency: one call in flight at a time.
	release, err := reader.Acquire()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reader.Acquire(); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("second concurrent call: %v, want ResourceExhausted", err)
	}
	release()
	if r, err := reader.Acquire(); err != nil {
		t.Errorf("after release: %v", err)
	} else {
		r()
	}
	// Rate: a burst of 2, then refused.
	ops, _ := ring.Lookup(adminKey)
	for i := range 2 {
		r, err := ops.Acquire()
		if err != nil {
			t.Fatalf("call %d within the burst: %v", i+1, err)
		}
		r()
	}
	if _, err := ops.Acquire(); status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "rate limit") {
		t.Errorf("call over the rate: %v", err)
	}

	// A broken edit keeps the old keys; a good one replaces them, picked
	// up by Watch without a call to Reload.
	writeKeys(t, path, "keys:\n  - {name: reader, hash: "+checkHash+", scopes: [everything]}\n")
	if err := ring.Reload(); err == nil || !strings.Contains(err.Error(), `scope "everything"`) {
		t.Errorf("reload of a bad file: %v", err)
	}
	if _, ok := ring.Lookup(adminKey); !ok {
		t.Error("a failed reload dropped the keys in force")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go ring.Watch(ctx, 10*time.Millisecond, func(error) {})
	writeKeys(t, path, "keys:\n  - {name: reader, hash: "+checkHash+", scopes: [check, write]}\n")
	future := time.Now().Add(time.Minute)
	os.Chtimes(path, future, future)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, ok := ring.Lookup(adminKey); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Watch did not pick up the changed file")
		}
	}
	if k, _ := ring.Lookup(checkKey); k == nil || k.Authorize("/mandate.v1.RelationshipService/WriteRelationships") != nil {
		t.Errorf("the reloaded key lacks its new write scope: %v", k)
	}
	// The call admitted under the old key's entry still holds its key.
	if reader.Name != "reader" {
		t.Error("an admitted key changed under its caller")
	}
}

func TestKeysFileErrors(t *testing.T) {
	_, h, _ := Generate()
	for body, want := range map[string]string{
		"keys:\n  - {hash: " + h + ", scopes: [check]}\n":                                                           "entry 1: name",
		"keys:\n  - {name: a, hash: sha256:abc, scopes: [check]}\n":                                                 "entry 1 (a): hash",
		"keys:\n  - {name: a, hash: " + h + "}\n":                                                                   "entry 1 (a): scopes",
		"keys:\n  - {name: a, hash: " + h + ", scopes: [check]}\n  - {name: a, hash: " + h + ", scopes: [check]}\n": "name is given twice",
		"keys:\n  - {name: a, hash: " + h + ", scopes: [check], rate: -1}\n":                                        "no negative",
		"keys:\n  - {name: a, hash: " + h + ", scopes: [check], secret: x}\n":                                       "field secret not found",
		"keys:\n  - {name: a, hash: " + h + ", scopes: [approvals], person: alice}\n":                               "entry 1 (a): person: expected type:id",
		"keys:\n  - {name: a, hash: " + h + ", scopes: [approvals], person: \"user:\"}\n":                           "entry 1 (a): person: expected type:id",
	} {
		_, err := parse([]byte(body))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", body, err, want)
		}
		if err != nil && strings.Contains(err.Error(), h[len("sha256:"):]) {
			t.Errorf("an error echoes a hash: %v", err)
		}
	}
}
