package inbox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/mandate-authz/mandate/server/op"
	"github.com/mandate-authz/mandate/store/rel"
)

func (o *OIDC) validate() error {
	u, err := url.Parse(o.Issuer)
	if err != nil || !(u.Scheme == "https" || u.Scheme == "http" && loopback(u.Hostname())) || u.Host == "" {
		// The provider's keys come from here: only TLS, or loopback, vouches for them.
		return fmt.Errorf("inbox: --ui-oidc-issuer %q: expected an https URL (http only on loopback)", o.Issuer)
	}
	if o.ClientID == "" {
		return errors.New("inbox: --ui-oidc-client-id is required with --ui-oidc-issuer")
	}
	r, err := url.Parse(o.RedirectURL)
	if o.RedirectURL == "" || err != nil || (r.Scheme != "https" && r.Scheme != "http") || r.Host == "" || r.Path != "/ui/callback" {
		return fmt.Errorf("inbox: --ui-oidc-redirect-url %q: expected this server's callback, e.g. https://mandate.example.com/ui/callback", o.RedirectURL)
	}
	return nil
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// person is the signed-in person of a request.
type person struct {
	Object  rel.Object
	Session session
}

type personKey struct{}

func personFrom(ctx context.Context) person {
	p, _ := ctx.Value(personKey{}).(person)
	return p
}

// person wraps a handler that needs a signed-in person. Without one, a GET
// goes to sign-in and anything else is refused.
func (in *Inbox) person(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var s session
		var ok bool
		if in.cfg.TrustedHeader != "" {
			s, ok = in.headerSession(w, r)
			if !ok {
				return
			}
		} else {
			err := in.readCookie(r, sessionCookie, &s)
			if err != nil || s.Subject == "" || time.Now().After(s.Expires) {
				if r.Method == http.MethodGet && r.URL.Path != "/ui/events" {
					http.Redirect(w, r, "/ui/login?return="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
					return
				}
				in.fail(w, r, http.StatusUnauthorized, "Your session has ended. Sign in again.")
				return
			}
		}
		p := person{Object: rel.Object{Type: in.cfg.SubjectType, ID: s.Subject}, Session: s}
		ctx := context.WithValue(r.Context(), personKey{}, p)
		// The core audits the inbox's reads and writes as the person's.
		ctx = op.WithIdentity(ctx, op.Identity{Name: "ui:" + p.Object.String()})
		ctx, _ = in.deps.Core.Begin(ctx, op.CallInfo{RequestID: randomString()[:16], Source: r.RemoteAddr, Transport: "ui"})
		h(w, r.WithContext(ctx))
	}
}

// headerSession names the person from the trusted header, honoured only
// from a trusted proxy's address, and keeps a session cookie for the CSRF
// token (renewed when the header names someone else).
func (in *Inbox) headerSession(w http.ResponseWriter, r *http.Request) (session, bool) {
	id := strings.TrimSpace(r.Header.Get(in.cfg.TrustedHeader))
	if !in.fromTrustedProxy(r) {
		if id != "" {
			in.log.Warn("inbox: a trusted header came from an address that is not a trusted proxy; ignored", "header", in.cfg.TrustedHeader, "source", r.RemoteAddr)
		}
		in.fail(w, r, http.StatusForbidden, "This inbox is only served through its authenticating proxy.")
		return session{}, false
	}
	if id == "" {
		in.fail(w, r, http.StatusUnauthorized, "The authenticating proxy did not name you.")
		return session{}, false
	}
	if err := rel.ValidateObject(rel.Object{Type: in.cfg.SubjectType, ID: id}); err != nil {
		in.fail(w, r, http.StatusForbidden, "Your id cannot name a "+in.cfg.SubjectType+": "+err.Error())
		return session{}, false
	}
	var s session
	if err := in.readCookie(r, sessionCookie, &s); err == nil && s.Subject == id && time.Now().Before(s.Expires) {
		return s, true
	}
	if r.Method != http.MethodGet {
		// A post without this person's session cannot carry its CSRF
		// token: refuse it rather than start a session here.
		in.fail(w, r, http.StatusForbidden, "The form has expired. Reload the page and try again.")
		return session{}, false
	}
	s = in.newSession(id, "header")
	if err := in.setCookie(w, sessionCookie, s, in.cfg.SessionTTL); err != nil {
		in.fail(w, r, http.StatusInternalServerError, "Could not start a session.")
		return session{}, false
	}
	return s, true
}

func (in *Inbox) fromTrustedProxy(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	a = a.Unmap()
	for _, p := range in.cfg.TrustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// csrf refuses a form post whose token is not the session's, and any
// cross-origin post the browser names as such.
func (in *Inbox) csrf(h http.HandlerFunc) http.HandlerFunc {
	cop := http.NewCrossOriginProtection()
	return func(w http.ResponseWriter, r *http.Request) {
		if err := cop.Check(r); err != nil {
			in.fail(w, r, http.StatusForbidden, "Refused: the form was posted from another site.")
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		if err := r.ParseForm(); err != nil {
			in.fail(w, r, http.StatusBadRequest, "The form could not be read.")
			return
		}
		if !equalTokens(r.PostForm.Get("csrf"), personFrom(r.Context()).Session.CSRF) {
			in.fail(w, r, http.StatusForbidden, "Refused: the form's security token is missing or stale. Reload the page and try again.")
			return
		}
		h(w, r)
	}
}

// oidcClient signs people in with an OpenID Connect provider, discovered
// at the first sign-in and kept once found.
type oidcClient struct {
	cfg OIDC

	mu       sync.Mutex
	oauth    *oauth2.Config
	verifier *oidc.IDTokenVerifier
}

func newOIDCClient(cfg OIDC) *oidcClient {
	if cfg.SubjectClaim == "" {
		cfg.SubjectClaim = DefaultSubjectClaim
	}
	if cfg.Scopes == nil {
		cfg.Scopes = []string{"profile", "email"}
	}
	return &oidcClient{cfg: cfg}
}

func (c *oidcClient) discover(ctx context.Context) (*oauth2.Config, *oidc.IDTokenVerifier, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.oauth != nil {
		return c.oauth, c.verifier, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	p, err := oidc.NewProvider(ctx, c.cfg.Issuer)
	if err != nil {
		return nil, nil, fmt.Errorf("discovering the OpenID provider %s: %w", c.cfg.Issuer, err)
	}
	c.oauth = &oauth2.Config{
		ClientID: c.cfg.ClientID, ClientSecret: c.cfg.ClientSecret, RedirectURL: c.cfg.RedirectURL,
		Endpoint: p.Endpoint(), Scopes: append([]string{oidc.ScopeOpenID}, c.cfg.Scopes...),
	}
	c.verifier = p.Verifier(&oidc.Config{ClientID: c.cfg.ClientID})
	return c.oauth, c.verifier, nil
}

const loginTTL = 10 * time.Minute

// login starts the authorization code flow: state, nonce and the PKCE
// verifier go into a short-lived cookie, the browser to the provider.
func (in *Inbox) login(w http.ResponseWriter, r *http.Request) {
	ret := safeReturn(r.URL.Query().Get("return"))
	if in.oidc == nil {
		http.Redirect(w, r, ret, http.StatusSeeOther)
		return
	}
	oauth, _, err := in.oidc.discover(r.Context())
	if err != nil {
		in.log.Error("inbox: sign-in is unavailable", "error", err)
		in.fail(w, r, http.StatusBadGateway, "Sign-in is unavailable: the identity provider cannot be reached. Try again shortly.")
		return
	}
	l := login{State: randomString(), Nonce: randomString(), Verifier: oauth2.GenerateVerifier(), Return: ret, Expires: time.Now().Add(loginTTL)}
	if err := in.setCookie(w, loginCookie, l, loginTTL); err != nil {
		in.fail(w, r, http.StatusInternalServerError, "Could not start sign-in.")
		return
	}
	http.Redirect(w, r, oauth.AuthCodeURL(l.State, oidc.Nonce(l.Nonce), oauth2.S256ChallengeOption(l.Verifier)), http.StatusFound)
}

// callback finishes the flow: the state must be the login cookie's, the
// code is exchanged with the PKCE verifier, the ID token verified (issuer,
// audience, expiry, signature) and its nonce checked.
func (in *Inbox) callback(w http.ResponseWriter, r *http.Request) {
	if in.oidc == nil {
		http.NotFound(w, r)
		return
	}
	var l login
	if err := in.readCookie(r, loginCookie, &l); err != nil || time.Now().After(l.Expires) {
		in.fail(w, r, http.StatusBadRequest, "Sign-in expired or was not started here. Sign in again.")
		return
	}
	in.clearCookie(w, loginCookie)
	q := r.URL.Query()
	if e := q.Get("error"); e != "" {
		in.fail(w, r, http.StatusForbidden, "The identity provider refused sign-in: "+e)
		return
	}
	if !equalTokens(q.Get("state"), l.State) {
		in.fail(w, r, http.StatusBadRequest, "Sign-in refused: the state does not match.")
		return
	}
	oauth, verifier, err := in.oidc.discover(r.Context())
	if err != nil {
		in.fail(w, r, http.StatusBadGateway, "Sign-in is unavailable: the identity provider cannot be reached.")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	defer cancel()
	tok, err := oauth.Exchange(ctx, q.Get("code"), oauth2.VerifierOption(l.Verifier))
	if err != nil {
		in.log.Warn("inbox: the code exchange failed", "error", err)
		in.fail(w, r, http.StatusForbidden, "Sign-in refused: the identity provider did not accept the code.")
		return
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		in.fail(w, r, http.StatusForbidden, "Sign-in refused: the identity provider sent no ID token.")
		return
	}
	idt, err := verifier.Verify(ctx, raw)
	if err != nil {
		in.log.Warn("inbox: an ID token was refused", "error", err)
		in.fail(w, r, http.StatusForbidden, "Sign-in refused: the ID token is not valid.")
		return
	}
	if !equalTokens(idt.Nonce, l.Nonce) {
		in.fail(w, r, http.StatusForbidden, "Sign-in refused: the ID token's nonce does not match.")
		return
	}
	var claims map[string]any
	if err := idt.Claims(&claims); err != nil {
		in.fail(w, r, http.StatusForbidden, "Sign-in refused: the ID token's claims cannot be read.")
		return
	}
	id, _ := claims[in.oidc.cfg.SubjectClaim].(string)
	if id == "" {
		in.fail(w, r, http.StatusForbidden, fmt.Sprintf("Sign-in refused: the ID token has no %q claim.", in.oidc.cfg.SubjectClaim))
		return
	}
	if err := rel.ValidateObject(rel.Object{Type: in.cfg.SubjectType, ID: id}); err != nil {
		in.fail(w, r, http.StatusForbidden, "Sign-in refused: your id cannot name a "+in.cfg.SubjectType+": "+err.Error())
		return
	}
	if err := in.setCookie(w, sessionCookie, in.newSession(id, "oidc"), in.cfg.SessionTTL); err != nil {
		in.fail(w, r, http.StatusInternalServerError, "Could not start a session.")
		return
	}
	http.Redirect(w, r, l.Return, http.StatusSeeOther)
}

func (in *Inbox) logout(w http.ResponseWriter, r *http.Request) {
	in.clearCookie(w, sessionCookie)
	in.render(w, r, http.StatusOK, "signedout.html", page{Title: "Signed out"})
}

// safeReturn keeps a post-sign-in redirect inside the inbox.
func safeReturn(s string) string {
	if !strings.HasPrefix(s, "/ui/") || strings.HasPrefix(s, "//") || strings.ContainsAny(s, "\\\r\n") {
		return "/ui/"
	}
	return s
}
