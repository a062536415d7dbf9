// Package oidctest is a minimal OpenID Connect issuer for tests and demos
// of the MCP gateway: discovery, a JWKS with key rotation, and access
// tokens minted on request (go-jose signs them). It checks no credentials
// whatsoever: never expose it beyond loopback.
package oidctest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Issuer signs tokens with its current key and publishes its keys.
type Issuer struct {
	// URL is the issuer identifier, e.g. http://127.0.0.1:9000.
	URL string

	mu      sync.Mutex
	current *jose.JSONWebKey
	keys    []jose.JSONWebKey // public keys in the JWKS
}

// New makes an issuer named url with one fresh ES256 key.
func New(url string) (*Issuer, error) {
	i := &Issuer{URL: strings.TrimSuffix(url, "/")}
	if err := i.Rotate(false); err != nil {
		return nil, err
	}
	return i, nil
}

// Rotate signs from now on with a new key. keepOld keeps the previous keys
// in the JWKS (a graceful rotation); without it they are withdrawn.
func (i *Issuer) Rotate(keepOld bool) error {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("oidctest: generating a key: %w", err)
	}
	var id [8]byte
	rand.Read(id[:])
	jwk := &jose.JSONWebKey{Key: k, KeyID: hex.EncodeToString(id[:]), Algorithm: string(jose.ES256), Use: "sig"}
	i.mu.Lock()
	defer i.mu.Unlock()
	i.current = jwk
	if !keepOld {
		i.keys = nil
	}
	i.keys = append(i.keys, jwk.Public())
	return nil
}

// Mint signs claims. iss is set to the issuer; iat to now; exp to five
// minutes from now unless given. A claim set to nil is left out.
func (i *Issuer) Mint(claims map[string]any) (string, error) {
	i.mu.Lock()
	key := i.current
	i.mu.Unlock()
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithType("at+jwt"))
	if err != nil {
		return "", fmt.Errorf("oidctest: signer: %w", err)
	}
	now := time.Now()
	all := map[string]any{"iss": i.URL, "iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix()}
	for k, v := range claims {
		if v == nil {
			delete(all, k)
			continue
		}
		all[k] = v
	}
	return jwt.Signed(sig).Claims(all).Serialize()
}

// Act nests RFC 8693 act claims: Act("b", "a") is
// {"sub":"b","act":{"sub":"a"}}, the current actor first.
func Act(actors ...string) map[string]any {
	var act map[string]any
	for j := len(actors) - 1; j >= 0; j-- {
		next := map[string]any{"sub": actors[j]}
		if act != nil {
			next["act"] = act
		}
		act = next
	}
	return act
}

// Handler serves discovery at /.well-known/openid-configuration, the keys
// at /jwks, and, for demos, GET /mint?sub=&client_id=&aud=&scope=&act=b,a
// which returns a signed access token as text.
func (i *Issuer) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"issuer":                                i.URL,
			"jwks_uri":                              i.URL + "/jwks",
			"authorization_endpoint":                i.URL + "/authorize",
			"token_endpoint":                        i.URL + "/token",
			"response_types_supported":              []string{"code"},
			"subject_types_supported":               []string{"public"},
			"id_token_signing_alg_values_supported": []string{"ES256"},
		})
	})
	mux.HandleFunc("GET /jwks", func(w http.ResponseWriter, r *http.Request) {
		i.mu.Lock()
		set := jose.JSONWebKeySet{Keys: append([]jose.JSONWebKey(nil), i.keys...)}
		i.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(set)
	})
	mux.HandleFunc("GET /mint", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		claims := map[string]any{"sub": q.Get("sub"), "client_id": q.Get("client_id"), "aud": q.Get("aud")}
		if s := q.Get("scope"); s != "" {
			claims["scope"] = s
		}
		if a := q.Get("act"); a != "" {
			claims["act"] = Act(strings.Split(a, ",")...)
		}
		tok, err := i.Mint(claims)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Write([]byte(tok))
	})
	return mux
}
