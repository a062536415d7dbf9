// Package oidctest is a small, real OpenID Connect provider for tests of
// the web inbox's sign-in: discovery, a JWKS, an authorization endpoint
// with a login form (or automatic sign-in of one user), and a token
// endpoint that checks the client's secret, the redirect URI and the PKCE
// verifier before it issues an ID token signed with go-jose. Codes are
// single-use and short-lived. It knows only the users it is given and
// checks no passwords: never expose it beyond loopback.
package oidctest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Config describes the one client the provider serves and its users.
type Config struct {
	ClientID     string
	ClientSecret string
	// RedirectURL is the only redirect URI accepted.
	RedirectURL string
	// Users may sign in, by name; each becomes the ID token's sub, with
	// email NAME@example.test.
	Users []string
	// AutoLogin, when set, signs this user in without the login form.
	AutoLogin string
}

// Provider is a running provider; Close stops it.
type Provider struct {
	// URL is the issuer (http://127.0.0.1:PORT).
	URL string

	cfg    Config
	srv    *httptest.Server
	key    *ecdsa.PrivateKey
	keyID  string
	mu     sync.Mutex
	codes  map[string]grant
	issued int
}

// grant is an authorization code's request, kept until it is redeemed.
type grant struct {
	user, nonce, challenge, redirect string
	expires                          time.Time
}

// codeTTL bounds how long an authorization code may wait to be redeemed.
const codeTTL = time.Minute

// Start starts a provider on a loopback port.
func Start(cfg Config) (*Provider, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("oidctest: generating a key: %w", err)
	}
	p := &Provider{cfg: cfg, key: key, keyID: random()[:12], codes: map[string]grant{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", p.discovery)
	mux.HandleFunc("GET /jwks", p.jwks)
	mux.HandleFunc("GET /authorize", p.authorize)
	mux.HandleFunc("POST /authorize", p.signIn)
	mux.HandleFunc("POST /token", p.token)
	p.srv = httptest.NewServer(mux)
	p.URL = p.srv.URL
	return p, nil
}

// Close stops the provider.
func (p *Provider) Close() { p.srv.Close() }

// Issued counts the ID tokens issued.
func (p *Provider) Issued() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.issued
}

func (p *Provider) discovery(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"issuer":                                p.URL,
		"authorization_endpoint":                p.URL + "/authorize",
		"token_endpoint":                        p.URL + "/token",
		"jwks_uri":                              p.URL + "/jwks",
		"response_types_supported":              []string{"code"},
		"subject_types_supported":               []string{"public"},
		"id_token_signing_alg_values_supported": []string{"ES256"},
		"code_challenge_methods_supported":      []string{"S256"},
		"grant_types_supported":                 []string{"authorization_code"},
		"scopes_supported":                      []string{"openid", "profile", "email"},
		"token_endpoint_auth_methods_supported": []string{"client_secret_basic", "client_secret_post"},
	})
}

func (p *Provider) jwks(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &p.key.PublicKey, KeyID: p.keyID, Algorithm: string(jose.ES256), Use: "sig"}}})
}

// authorize checks the authorization request and shows the login form
// (or signs AutoLogin in).
func (p *Provider) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if !p.validRequest(w, r, q) {
		return
	}
	if p.cfg.AutoLogin != "" {
		p.issueCode(w, r, q, p.cfg.AutoLogin)
		return
	}
	p.form(w, q, "")
}

// validRequest answers a bad authorization request: errors about the
// client or the redirect URI here, never sent to an unchecked redirect
// URI; the others to the client.
func (p *Provider) validRequest(w http.ResponseWriter, r *http.Request, q url.Values) bool {
	if q.Get("client_id") != p.cfg.ClientID || q.Get("redirect_uri") != p.cfg.RedirectURL {
		http.Error(w, "unknown client or redirect_uri", http.StatusBadRequest)
		return false
	}
	if msg := checkAuthRequest(q); msg != "" {
		redirectError(w, r, q, "invalid_request", msg)
		return false
	}
	return true
}

func checkAuthRequest(q url.Values) string {
	switch {
	case q.Get("response_type") != "code":
		return "response_type must be code"
	case !slices.Contains(strings.Fields(q.Get("scope")), "openid"):
		return "scope must include openid"
	case q.Get("code_challenge") == "" || q.Get("code_challenge_method") != "S256":
		return "PKCE with S256 is required"
	case q.Get("state") == "":
		return "state is required"
	case q.Get("nonce") == "":
		return "nonce is required"
	}
	return ""
}

var formPage = template.Must(template.New("login").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in · test provider</title>
<style>body{font:16px system-ui,sans-serif;max-width:24rem;margin:4rem auto;padding:0 1rem}
label,input,button{display:block;width:100%;font:inherit;margin:.4rem 0}input,button{padding:.5rem}</style></head>
<body><h1>Test identity provider</h1>
{{if .Error}}<p role="alert">{{.Error}}</p>{{end}}
<form method="post" action="/authorize">
{{range $k, $v := .Params}}<input type="hidden" name="{{$k}}" value="{{index $v 0}}">{{end}}
<label for="username">User name</label><input id="username" name="username" autocomplete="username" autofocus>
<button id="signin" type="submit">Sign in</button>
</form></body></html>`))

func (p *Provider) form(w http.ResponseWriter, q url.Values, msg string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	formPage.Execute(w, map[string]any{"Params": q, "Error": msg})
}

// signIn takes the login form: a known user gets a code.
func (p *Provider) signIn(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	q := url.Values{}
	for k, v := range r.PostForm {
		if k != "username" {
			q[k] = v
		}
	}
	if !p.validRequest(w, r, q) {
		return
	}
	user := r.PostForm.Get("username")
	if !slices.Contains(p.cfg.Users, user) {
		p.form(w, q, "Unknown user.")
		return
	}
	p.issueCode(w, r, q, user)
}

func (p *Provider) issueCode(w http.ResponseWriter, r *http.Request, q url.Values, user string) {
	code := random()
	p.mu.Lock()
	p.codes[code] = grant{user: user, nonce: q.Get("nonce"), challenge: q.Get("code_challenge"), redirect: q.Get("redirect_uri"), expires: time.Now().Add(codeTTL)}
	p.mu.Unlock()
	to, _ := url.Parse(q.Get("redirect_uri"))
	v := to.Query()
	v.Set("code", code)
	v.Set("state", q.Get("state"))
	to.RawQuery = v.Encode()
	http.Redirect(w, r, to.String(), http.StatusFound)
}

func redirectError(w http.ResponseWriter, r *http.Request, q url.Values, code, msg string) {
	to, _ := url.Parse(q.Get("redirect_uri"))
	v := to.Query()
	v.Set("error", code)
	v.Set("error_description", msg)
	v.Set("state", q.Get("state"))
	to.RawQuery = v.Encode()
	http.Redirect(w, r, to.String(), http.StatusFound)
}

// token redeems a code, once: the client's secret (basic or post), the
// redirect URI and the PKCE verifier must all match.
func (p *Provider) token(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		tokenError(w, http.StatusBadRequest, "invalid_request", "bad form")
		return
	}
	id, secret, ok := r.BasicAuth()
	if ok {
		id, _ = url.QueryUnescape(id)
		secret, _ = url.QueryUnescape(secret)
	} else {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	if id != p.cfg.ClientID || subtle.ConstantTimeCompare([]byte(secret), []byte(p.cfg.ClientSecret)) != 1 {
		tokenError(w, http.StatusUnauthorized, "invalid_client", "client authentication failed")
		return
	}
	if r.PostForm.Get("grant_type") != "authorization_code" {
		tokenError(w, http.StatusBadRequest, "unsupported_grant_type", "only authorization_code")
		return
	}
	code := r.PostForm.Get("code")
	p.mu.Lock()
	g, found := p.codes[code]
	delete(p.codes, code)
	p.mu.Unlock()
	if !found || time.Now().After(g.expires) || r.PostForm.Get("redirect_uri") != g.redirect {
		tokenError(w, http.StatusBadRequest, "invalid_grant", "unknown, used or expired code, or another redirect_uri")
		return
	}
	sum := sha256.Sum256([]byte(r.PostForm.Get("code_verifier")))
	if subtle.ConstantTimeCompare([]byte(base64.RawURLEncoding.EncodeToString(sum[:])), []byte(g.challenge)) != 1 {
		tokenError(w, http.StatusBadRequest, "invalid_grant", "the PKCE code_verifier does not match the code_challenge")
		return
	}
	idToken, err := p.sign(g)
	if err != nil {
		tokenError(w, http.StatusInternalServerError, "server_error", err.Error())
		return
	}
	p.mu.Lock()
	p.issued++
	p.mu.Unlock()
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, map[string]any{"access_token": random(), "token_type": "Bearer", "expires_in": 300, "id_token": idToken})
}

func (p *Provider) sign(g grant) (string, error) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: p.key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", p.keyID))
	if err != nil {
		return "", err
	}
	now := time.Now()
	claims := jwt.Claims{
		Issuer: p.URL, Subject: g.user, Audience: jwt.Audience{p.cfg.ClientID},
		IssuedAt: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(5 * time.Minute)),
	}
	extra := map[string]any{"nonce": g.nonce, "email": g.user + "@example.test", "name": g.user}
	return jwt.Signed(signer).Claims(claims).Claims(extra).Serialize()
}

func tokenError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]string{"error": code, "error_description": msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func random() string {
	b := make([]byte, 24)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
