package oidctest_test

import (
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/mandate-authz/mandate/server/inbox/oidctest"
)

// TestTokenEndpointChecks: a code is redeemed only with the client's
// secret, its redirect URI and the PKCE verifier, and only once.
func TestTokenEndpointChecks(t *testing.T) {
	const redirect = "http://127.0.0.1:1/ui/callback"
	p, err := oidctest.Start(oidctest.Config{ClientID: "c", ClientSecret: "s", RedirectURL: redirect, AutoLogin: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	verifier := "a-verifier-long-enough-for-the-test-0123456789"
	sum := sha256.Sum256([]byte(verifier))
	code := func() string {
		q := url.Values{"client_id": {"c"}, "redirect_uri": {redirect}, "response_type": {"code"}, "scope": {"openid"},
			"state": {"st"}, "nonce": {"n"}, "code_challenge": {base64.RawURLEncoding.EncodeToString(sum[:])}, "code_challenge_method": {"S256"}}
		c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		resp, err := c.Get(p.URL + "/authorize?" + q.Encode())
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		loc, err := resp.Location()
		if err != nil {
			t.Fatal(err)
		}
		return loc.Query().Get("code")
	}
	redeem := func(code, secret, verifier, redirectURI string) int {
		form := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {redirectURI}, "code_verifier": {verifier},
			"client_id": {"c"}, "client_secret": {secret}}
		resp, err := http.Post(p.URL+"/token", "application/x-www-form-urlencoded", strings.NewReader(form.Encode()))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tc := range []struct {
		name                       string
		secret, verifier, redirect string
		want                       int
	}{
		{"wrong verifier", "s", "another-verifier", redirect, http.StatusBadRequest},
		{"wrong secret", "x", verifier, redirect, http.StatusUnauthorized},
		{"wrong redirect", "s", verifier, "http://127.0.0.1:2/ui/callback", http.StatusBadRequest},
	} {
		if got := redeem(code(), tc.secret, tc.verifier, tc.redirect); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
	c := code()
	if got := redeem(c, "s", verifier, redirect); got != http.StatusOK {
		t.Fatalf("a good redemption: %d", got)
	}
	if got := redeem(c, "s", verifier, redirect); got != http.StatusBadRequest {
		t.Fatalf("a code redeemed twice: %d", got)
	}
	if p.Issued() != 1 {
		t.Fatalf("%d tokens issued", p.Issued())
	}
}
