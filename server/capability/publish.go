package capability

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
)

// PublicKeysPath is where the server publishes its root public keys on the
// HTTP port, so that services can verify tokens offline.
const PublicKeysPath = "/.well-known/mandate-capability-keys"

// jwk is an Ed25519 public key as a JSON Web Key (RFC 8037).
type jwk struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	Kid string `json:"kid"`
	X   string `json:"x"`
	Use string `json:"use"`
}

// JWKS returns the key set's public halves as a JSON Web Key Set, newest
// first. Private halves never leave the key set.
func (ks *KeySet) JWKS() ([]byte, error) {
	var set struct {
		Keys []jwk `json:"keys"`
	}
	set.Keys = []jwk{}
	for _, k := range ks.PublicKeys() {
		set.Keys = append(set.Keys, jwk{Kty: "OKP", Crv: "Ed25519", Kid: k.ID, X: base64.RawURLEncoding.EncodeToString(k.Public), Use: "sig"})
	}
	return json.Marshal(set)
}

// PublicKeysHandler serves JWKS; keys added or retired show at once.
func PublicKeysHandler(ks *KeySet) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed: use GET", http.StatusMethodNotAllowed)
			return
		}
		body, err := ks.JWKS()
		if err != nil {
			http.Error(w, "encoding keys failed", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/jwk-set+json")
		w.Header().Set("Cache-Control", "max-age=60")
		_, _ = w.Write(body)
	})
}
