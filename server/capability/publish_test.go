package capability

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestPublicKeysHandler(t *testing.T) {
	k1, _ := GenerateKey("k1", time.Now().Add(-time.Hour))
	k2, _ := GenerateKey("k2", time.Now())
	ks, _ := NewKeySet(k1, k2)
	srv := httptest.NewServer(PublicKeysHandler(ks))
	defer srv.Close()
	resp, err := http.Get(srv.URL + PublicKeysPath)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var set struct {
		Keys []map[string]string `json:"keys"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil || resp.StatusCode != http.StatusOK || len(set.Keys) != 2 {
		t.Fatalf("GET keys: %d, %v, %v", resp.StatusCode, set, err)
	}
	if set.Keys[0]["kid"] != "k2" || set.Keys[0]["crv"] != "Ed25519" {
		t.Fatalf("newest key first: %v", set.Keys)
	}
	x, _ := base64.RawURLEncoding.DecodeString(set.Keys[0]["x"])
	if !ed25519.PublicKey(x).Equal(k2.Public) {
		t.Fatal("published key is not k2's public key")
	}
	raw, _ := json.Marshal(set)
	if strings.Contains(string(raw), `"d"`) {
		t.Fatal("a private key field was published")
	}
	resp2, err := http.Post(srv.URL, "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp2.Body.Close()
	if resp2.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST: %d", resp2.StatusCode)
	}
}
