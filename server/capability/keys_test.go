package capability

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/store/rel"
)

func TestKeyRotationAndRetirement(t *testing.T) {
	old, _ := GenerateKey("old", time.Now().Add(-time.Hour))
	keys, err := NewKeySet(old)
	if err != nil {
		t.Fatal(err)
	}
	v := NewVerifier(keys, VerifierOptions{})
	byOld, _ := Mint(keys, bobRead, time.Now())
	oldText, _ := byOld.Encode()
	if _, err := v.Verify(oldText); err != nil {
		t.Fatalf("verifying a token of the only key: %v", err)
	}
	next, _ := GenerateKey("new", time.Now())
	if err := keys.Add(next); err != nil {
		t.Fatal(err)
	}
	byNew, _ := Mint(keys, bobRead, time.Now())
	if byNew.Blocks[0].KeyID != "new" {
		t.Fatalf("after rotation the token was signed by %q, want new", byNew.Blocks[0].KeyID)
	}
	newText, _ := byNew.Encode()
	for _, text := range []string{oldText, newText} {
		if _, err := v.Verify(text); err != nil {
			t.Fatalf("verifying after rotation: %v", err)
		}
	}
	// Retiring the old key stops its tokens, even the cached one.
	if err := keys.Retire("old"); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(oldText); reason(err) != ReasonUnknownKey {
		t.Fatalf("a retired key's token: %v, want %s", err, ReasonUnknownKey)
	}
	if _, err := v.Verify(newText); err != nil {
		t.Fatalf("the new key's token after retiring the old key: %v", err)
	}
	if err := keys.Add(Key{ID: "bad id!", Public: next.Public}); err == nil {
		t.Fatal("a key id with spaces was accepted")
	}
	if err := keys.Add(Key{ID: "mismatch", Public: old.Public, Private: next.Private}); err == nil {
		t.Fatal("a key whose halves do not match was accepted")
	}
}

func TestLoadKeyDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), KeyDir)
	if _, err := LoadKeyDir(dir, false, time.Now()); err == nil {
		t.Fatal("loading a missing key directory without create succeeded")
	}
	created, err := LoadKeyDir(dir, true, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	signer, err := created.Signer()
	if err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(filepath.Join(dir, signer.ID+".key"))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v; want mode 0600", info, err)
	}
	tok, _ := Mint(created, bobRead, time.Now())
	text, _ := tok.Encode()
	// A verify-only copy of the public key verifies the token.
	pubDir := t.TempDir()
	if err := SaveKey(pubDir, Key{ID: signer.ID, Public: signer.Public}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{dir, pubDir} {
		ks, err := LoadKeyDir(d, false, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := NewVerifier(ks, VerifierOptions{}).Verify(text); err != nil {
			t.Fatalf("verifying with keys loaded from %s: %v", d, err)
		}
	}
	pubOnly, _ := LoadKeyDir(pubDir, false, time.Now())
	if _, err := Mint(pubOnly, bobRead, time.Now()); err == nil {
		t.Fatal("minting with only a public key succeeded")
	}
	if err := os.WriteFile(filepath.Join(pubDir, "junk.key"), []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKeyDir(pubDir, false, time.Now()); err == nil {
		t.Fatal("a key file that is not PEM was accepted")
	}
}

func reason(err error) Reason {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ReasonNone
}

// The cache serves a verified token until it expires, never after.
func TestCacheNeverServesExpired(t *testing.T) {
	keys := testKeys(t)
	clk := &clock{t: time.Now()}
	v := NewVerifier(keys, VerifierOptions{Now: clk.now, CacheSize: 4})
	tok, _ := Mint(keys, bobRead, clk.now())
	text, _ := tok.Encode()
	first, err := v.Verify(text)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := v.Verify(text); again != first {
		t.Fatal("a second Verify did not come from the cache")
	}
	clk.advance(time.Hour)
	if _, err := v.Verify(text); reason(err) != ReasonExpired {
		t.Fatalf("an expired cached token: %v, want %s", err, ReasonExpired)
	}
	// The cache stays bounded.
	for range 20 {
		tk, _ := Mint(keys, bobRead, clk.now())
		s, _ := tk.Encode()
		if _, err := v.Verify(s); err != nil {
			t.Fatal(err)
		}
	}
	v.mu.Lock()
	n := len(v.cache)
	v.mu.Unlock()
	if n > 4 {
		t.Fatalf("cache holds %d tokens, bound is 4", n)
	}
}

// A Datalog time limit that is too short is reported as its own reason and
// never allows; the default limit holds under concurrent load.
func TestDatalogTimeout(t *testing.T) {
	keys := testKeys(t)
	tok, _ := Mint(keys, bobRead, time.Now())
	text, _ := tok.Encode()
	req := Request{Resource: rel.Object{Type: "calendar", ID: "bob"}, Permission: "read", Holder: rel.Object{Type: "agent", ID: "a"}}

	tight := NewVerifier(keys, VerifierOptions{DatalogTimeout: time.Nanosecond})
	vt, err := tight.Verify(text)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tight.Allow(vt, req); reason(err) != ReasonTimeout {
		t.Fatalf("Allow with a 1 ns Datalog limit: %v, want %s", err, ReasonTimeout)
	}

	v := NewVerifier(keys, VerifierOptions{})
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 16 {
		wg.Go(func() {
			for i := range 40 {
				// A fresh verification each time, so that Datalog runs
				// rather than the memo answering.
				vt, err := v.verify(text)
				if err != nil {
					errs <- err
					return
				}
				r := req
				if (g+i)%2 == 1 {
					r.Permission = "write"
				}
				_, err = v.Allow(vt, r)
				if r.Permission == "read" && err != nil {
					errs <- err
					return
				}
				if r.Permission == "write" && reason(err) != ReasonOutOfScope {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("under load: %v", err)
	}
}

func TestInspect(t *testing.T) {
	keys := testKeys(t)
	now := time.Now()
	tok, _ := Mint(keys, Grant{Holder: rel.Object{Type: "agent", ID: "a"}, OnBehalfOf: rel.Object{Type: "user", ID: "bob"},
		Rights: []Right{{Type: "calendar", ID: "bob", Permissions: []string{"read", "write", "read"}}}, TTL: time.Hour, Task: "T", MaxUses: 3}, now)
	child, err := Attenuate(tok, Narrowing{Holder: &rel.Object{Type: "agent", ID: "b"}, Rights: []Right{{Type: "calendar", ID: "bob", Permissions: []string{"read"}}}, TTL: time.Minute}, now)
	if err != nil {
		t.Fatal(err)
	}
	text, _ := child.Encode()
	got, err := Inspect(text)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(got)
	var shape struct {
		Blocks []map[string]any `json:"blocks"`
	}
	if err := json.Unmarshal(out, &shape); err != nil || len(shape.Blocks) != 2 {
		t.Fatalf("inspect JSON %s: %v", out, err)
	}
	a, b := shape.Blocks[0], shape.Blocks[1]
	if a["holder"] != "agent:a" || a["on_behalf_of"] != "user:bob" || a["task"] != "T" || a["kid"] != "k1" || a["max_uses"] != float64(3) {
		t.Fatalf("authority block %v", a)
	}
	if b["holder"] != "agent:b" || b["parent"] != a["id"] || b["id"] != got.ID() {
		t.Fatalf("attenuation block %v", b)
	}
	if perms := a["rights"].([]any)[0].(map[string]any)["permissions"].([]any); len(perms) != 2 {
		t.Fatalf("duplicate permissions kept: %v", perms)
	}
}

// Concurrent Datalog evaluations of one shared, cached token are safe
// (run with -race): requests differ, so the memo does not answer them.
func TestConcurrentEvaluationOfASharedToken(t *testing.T) {
	keys := testKeys(t)
	g := bobRead
	g.Rights = []Right{{Type: "calendar", Permissions: []string{"read"}}}
	tok, _ := Mint(keys, g, time.Now())
	text, _ := tok.Encode()
	v := NewVerifier(keys, VerifierOptions{})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Go(func() {
			vt, err := v.Verify(text)
			if err != nil {
				errs <- err
				return
			}
			for i := range 30 {
				id := string(rune('a'+w)) + string(rune('a'+i%26))
				if _, err := v.Allow(vt, Request{Resource: rel.Object{Type: "calendar", ID: id}, Permission: "read", Holder: rel.Object{Type: "agent", ID: "a"}}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}
