package inbox

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/mandate-authz/mandate/server/inbox/oidctest"
)

// oidcFixture is an inbox signing in with a test provider.
type oidcFixture struct {
	srv *httptest.Server
	idp *oidctest.Provider
	in  *Inbox
}

func newOIDCFixture(t *testing.T, claim string, secure bool) *oidcFixture {
	t.Helper()
	srv := httptest.NewUnstartedServer(nil)
	redirect := "http://" + srv.Listener.Addr().String() + "/ui/callback"
	idp, err := oidctest.Start(oidctest.Config{ClientID: "mandate-ui", ClientSecret: "s3cret", RedirectURL: redirect, Users: []string{"alice"}, AutoLogin: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(idp.Close)
	in, err := New(Config{
		OIDC:        &OIDC{Issuer: idp.URL, ClientID: "mandate-ui", ClientSecret: "s3cret", RedirectURL: redirect, SubjectClaim: claim},
		SubjectType: "user", SecureCookies: secure,
	}, Deps{Core: newCore(t), Approvals: newFakeApprovals()})
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = in.Handler()
	srv.Start()
	t.Cleanup(srv.Close)
	return &oidcFixture{srv: srv, idp: idp, in: in}
}

func newClient(t *testing.T) *http.Client {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Jar: jar}
}

// read returns a response's status and body: read(t)(c.Get(u)).
func read(t *testing.T) func(*http.Response, error) (int, string) {
	return func(resp *http.Response, err error) (int, string) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
}

func TestOIDCSignIn(t *testing.T) {
	f := newOIDCFixture(t, "", false)
	c := newClient(t)
	code, body := read(t)(c.Get(f.srv.URL + "/ui/history"))
	if code != http.StatusOK || !strings.Contains(body, `title="Signed in as user:alice"`) || !strings.Contains(body, "<h1>History</h1>") {
		t.Fatalf("after sign-in: %d\n%s", code, body)
	}
	if f.idp.Issued() != 1 {
		t.Fatalf("%d ID tokens issued", f.idp.Issued())
	}
	// Signing out needs the form's token; then the session is gone.
	u, _ := url.Parse(f.srv.URL)
	var csrf string
	if m := csrfField.FindStringSubmatch(body); m != nil {
		csrf = m[1]
	}
	code, _ = read(t)(c.PostForm(f.srv.URL+"/ui/logout", url.Values{}))
	if code != http.StatusForbidden {
		t.Fatalf("sign-out without the token: %d", code)
	}
	code, body = read(t)(c.PostForm(f.srv.URL+"/ui/logout", url.Values{"csrf": {csrf}}))
	if code != http.StatusOK || !strings.Contains(body, "Signed out") {
		t.Fatalf("sign-out: %d", code)
	}
	for _, ck := range c.Jar.Cookies(u) {
		if ck.Name == sessionCookie {
			t.Fatalf("the session cookie survived sign-out")
		}
	}
}

// stopAt follows redirects until the URL's path is path.
func stopAt(c *http.Client, path string) *http.Client {
	cc := *c
	cc.CheckRedirect = func(req *http.Request, _ []*http.Request) error {
		if req.URL.Path == path {
			return http.ErrUseLastResponse
		}
		return nil
	}
	return &cc
}

func TestOIDCCallbackChecks(t *testing.T) {
	f := newOIDCFixture(t, "", false)
	c := newClient(t)
	resp, err := stopAt(c, "/ui/callback").Get(f.srv.URL + "/ui/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cb, err := resp.Location()
	if err != nil {
		t.Fatal(err)
	}
	// A callback whose state is not the one this browser started with.
	bad := *cb
	q := bad.Query()
	q.Set("state", "forged")
	bad.RawQuery = q.Encode()
	if code, body := read(t)(c.Get(bad.String())); code != http.StatusBadRequest || !strings.Contains(body, "state does not match") {
		t.Fatalf("forged state: %d\n%s", code, body)
	}
	// The login cookie is spent: the genuine callback cannot be replayed
	// afterwards either.
	if code, _ := read(t)(c.Get(cb.String())); code != http.StatusBadRequest {
		t.Fatalf("callback after its login was spent: %d", code)
	}
	// Another browser cannot finish this one's sign-in.
	if code, _ := read(t)(newClient(t).Get(cb.String())); code != http.StatusBadRequest {
		t.Fatalf("callback in another browser: %d", code)
	}
	if f.idp.Issued() != 0 {
		t.Fatalf("%d ID tokens issued for refused callbacks", f.idp.Issued())
	}
}

func TestOIDCSubjectClaim(t *testing.T) {
	// The name claim is "alice": signs in.
	f := newOIDCFixture(t, "name", false)
	if code, body := read(t)(newClient(t).Get(f.srv.URL + "/ui/")); code != http.StatusOK || !strings.Contains(body, "user:alice") {
		t.Fatalf("name claim: %d", code)
	}
	// The email claim cannot be a user id: refused, with the reason.
	f = newOIDCFixture(t, "email", false)
	if code, body := read(t)(newClient(t).Get(f.srv.URL + "/ui/")); code != http.StatusForbidden || !strings.Contains(body, "cannot name a user") {
		t.Fatalf("email claim: %d\n%s", code, body)
	}
	// A claim the token lacks.
	f = newOIDCFixture(t, "employee_id", false)
	if code, body := read(t)(newClient(t).Get(f.srv.URL + "/ui/")); code != http.StatusForbidden || !strings.Contains(body, "employee_id") {
		t.Fatalf("missing claim: %d\n%s", code, body)
	}
}

func TestCookieAttributes(t *testing.T) {
	for _, secure := range []bool{false, true} {
		f := newOIDCFixture(t, "", secure)
		resp, err := stopAt(newClient(t), "/authorize").Get(f.srv.URL + "/ui/login")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		cs := resp.Cookies()
		if len(cs) != 1 {
			t.Fatalf("cookies %v", cs)
		}
		ck := cs[0]
		wantName := loginCookie
		if secure {
			wantName = "__Host-" + loginCookie
		}
		if ck.Name != wantName || !ck.HttpOnly || ck.Secure != secure || ck.SameSite != http.SameSiteLaxMode || ck.Path != "/" {
			t.Errorf("secure=%v: cookie %+v", secure, ck)
		}
		if strings.Contains(ck.Value, "verifier") || len(ck.Value) < 100 {
			t.Errorf("the login cookie is not sealed: %q", ck.Value)
		}
	}
}
