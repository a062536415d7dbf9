package inbox

import (
	"bufio"
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/server/approval"
	"github.com/mandate-authz/mandate/server/audit"
	"github.com/mandate-authz/mandate/server/capability"
	"github.com/mandate-authz/mandate/server/op"
	"github.com/mandate-authz/mandate/store/rel"
)

func TestConfigValidate(t *testing.T) {
	proxies := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	oidc := func(mod func(*OIDC)) *OIDC {
		o := &OIDC{Issuer: "https://idp.example.com", ClientID: "mandate", RedirectURL: "https://mandate.example.com/ui/callback"}
		if mod != nil {
			mod(o)
		}
		return o
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // "" for valid
	}{
		{"header", Config{TrustedHeader: "X-Forwarded-User", TrustedProxies: proxies, SubjectType: "user"}, ""},
		{"oidc", Config{OIDC: oidc(nil), SubjectType: "user"}, ""},
		{"neither", Config{SubjectType: "user"}, "or a trusted header (--ui-trusted-header)"},
		{"both", Config{OIDC: oidc(nil), TrustedHeader: "X-User", TrustedProxies: proxies, SubjectType: "user"}, "exclude each other"},
		{"no subject type", Config{TrustedHeader: "X-User", TrustedProxies: proxies}, "--ui-subject-type is required"},
		{"bad subject type", Config{TrustedHeader: "X-User", TrustedProxies: proxies, SubjectType: "User!"}, "--ui-subject-type"},
		{"header without proxies", Config{TrustedHeader: "X-User", SubjectType: "user"}, "--ui-trusted-proxies"},
		{"bad header", Config{TrustedHeader: "X User", TrustedProxies: proxies, SubjectType: "user"}, "expected an HTTP header name"},
		{"bad issuer", Config{OIDC: oidc(func(o *OIDC) { o.Issuer = "idp" }), SubjectType: "user"}, "--ui-oidc-issuer"},
		{"http issuer beyond loopback", Config{OIDC: oidc(func(o *OIDC) { o.Issuer = "http://idp.example.com" }), SubjectType: "user"}, "http only on loopback"},
		{"http issuer on loopback", Config{OIDC: oidc(func(o *OIDC) { o.Issuer = "http://127.0.0.1:9000" }), SubjectType: "user"}, ""},
		{"no client", Config{OIDC: oidc(func(o *OIDC) { o.ClientID = "" }), SubjectType: "user"}, "--ui-oidc-client-id"},
		{"bad redirect", Config{OIDC: oidc(func(o *OIDC) { o.RedirectURL = "https://mandate.example.com/cb" }), SubjectType: "user"}, "--ui-oidc-redirect-url"},
		{"short key", Config{TrustedHeader: "X-User", TrustedProxies: proxies, SubjectType: "user", SessionKey: []byte("short")}, "expected 32"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.want == "" && err != nil {
				t.Fatalf("valid config refused: %v", err)
			}
			if tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("got %v, want an error naming %q", err, tc.want)
			}
		})
	}
}

func TestParseProxies(t *testing.T) {
	got, err := ParseProxies("10.0.0.0/8, 127.0.0.1,::1")
	if err != nil || len(got) != 3 || got[1] != netip.MustParsePrefix("127.0.0.1/32") {
		t.Fatalf("got %v, %v", got, err)
	}
	if _, err := ParseProxies("10.0.0.0/8,proxy.local"); err == nil || !strings.Contains(err.Error(), "proxy.local") {
		t.Fatalf("a host name was accepted: %v", err)
	}
}

// fixture is an inbox in trusted-header mode, the proxy at 127.0.0.1.
type fixture struct {
	t    *testing.T
	in   *Inbox
	apps *fakeApprovals
	toks *fakeTokens
	core *op.Core
}

const proxyAddr = "127.0.0.1:40000"

func newFixture(t *testing.T, rels ...string) *fixture {
	t.Helper()
	f := &fixture{t: t, apps: newFakeApprovals(), toks: &fakeTokens{}, core: newCore(t, rels...)}
	in, err := New(Config{
		TrustedHeader: "X-Forwarded-User", TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
		SubjectType: "user", MaxGrantDuration: 4 * time.Hour,
	}, Deps{Core: f.core, Approvals: f.apps, Tokens: f.toks, Revocations: f.toks})
	if err != nil {
		t.Fatal(err)
	}
	f.in = in
	return f
}

func (f *fixture) file(agent, principal, resource, perm string) approval.Request {
	f.t.Helper()
	r, err := f.apps.File(context.Background(), approval.Request{
		Agent: obj(agent), Principal: obj(principal), Chain: []rel.Object{obj(agent), obj(principal)},
		Resource: obj(resource), Permission: perm, Task: "T-1", Reason: "needs the figures for the report", Rule: "finance-docs", Duration: time.Hour,
	})
	if err != nil {
		f.t.Fatal(err)
	}
	return r
}

// browser is one person's requests through the proxy, keeping cookies.
type browser struct {
	f       *fixture
	user    string
	cookies []*http.Cookie
	csrf    string
}

func (f *fixture) as(user string) *browser { return &browser{f: f, user: user} }

var csrfField = regexp.MustCompile(`name="csrf-token" content="([^"]+)"`)

func (b *browser) do(req *http.Request) *httptest.ResponseRecorder {
	req.RemoteAddr = proxyAddr
	if b.user != "" {
		req.Header.Set("X-Forwarded-User", b.user)
	}
	for _, c := range b.cookies {
		req.AddCookie(c)
	}
	rec := httptest.NewRecorder()
	b.f.in.Handler().ServeHTTP(rec, req)
	if cs := rec.Result().Cookies(); len(cs) > 0 {
		b.cookies = cs
	}
	if m := csrfField.FindStringSubmatch(rec.Body.String()); m != nil {
		b.csrf = m[1]
	}
	return rec
}

func (b *browser) get(path string) *httptest.ResponseRecorder {
	return b.do(httptest.NewRequest(http.MethodGet, path, nil))
}

func (b *browser) post(path string, form url.Values) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return b.do(req)
}

func (b *browser) form(kv ...string) url.Values {
	v := url.Values{"csrf": {b.csrf}}
	for i := 0; i+1 < len(kv); i += 2 {
		v.Set(kv[i], kv[i+1])
	}
	return v
}

func status(t *testing.T, rec *httptest.ResponseRecorder, want int) string {
	t.Helper()
	if rec.Code != want {
		t.Fatalf("status %d, want %d; body:\n%s", rec.Code, want, rec.Body.String())
	}
	return rec.Body.String()
}

func TestTrustedHeader(t *testing.T) {
	f := newFixture(t)
	f.file("agent:bot", "user:alice", "doc:plan", "edit")

	body := status(t, f.as("alice").get("/ui/"), http.StatusOK)
	if !strings.Contains(body, "agent:bot") || !strings.Contains(body, "needs the figures for the report") {
		t.Fatalf("alice's inbox does not show her request:\n%s", body)
	}

	// The header from anywhere but the proxy names nobody.
	req := httptest.NewRequest(http.MethodGet, "/ui/", nil)
	req.RemoteAddr = "10.1.2.3:5555"
	req.Header.Set("X-Forwarded-User", "alice")
	rec := httptest.NewRecorder()
	f.in.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden || strings.Contains(rec.Body.String(), "agent:bot") {
		t.Fatalf("a header from an untrusted address was honoured: %d\n%s", rec.Code, rec.Body.String())
	}

	// The proxy without the header: nobody is signed in.
	status(t, f.as("").get("/ui/"), http.StatusUnauthorized)
	// An id the subject type cannot take is refused.
	status(t, f.as("alice@example.com").get("/ui/"), http.StatusForbidden)
}

func TestCSRFAndMethods(t *testing.T) {
	f := newFixture(t)
	req := f.file("agent:bot", "user:alice", "doc:plan", "edit")
	alice := f.as("alice")
	status(t, alice.get("/ui/"), http.StatusOK)
	if alice.csrf == "" {
		t.Fatal("the inbox has no CSRF token in its forms")
	}
	approve := "/ui/requests/" + req.ID + "/approve"

	for _, tc := range []struct {
		name string
		do   func() *httptest.ResponseRecorder
		want int
	}{
		{"GET cannot approve", func() *httptest.ResponseRecorder { return alice.get(approve) }, http.StatusMethodNotAllowed},
		{"no token", func() *httptest.ResponseRecorder { return alice.post(approve, url.Values{"duration": {"1h"}}) }, http.StatusForbidden},
		{"wrong token", func() *httptest.ResponseRecorder {
			return alice.post(approve, url.Values{"csrf": {randomString()}, "duration": {"1h"}})
		}, http.StatusForbidden},
		{"another session's token", func() *httptest.ResponseRecorder {
			bob := f.as("bob")
			bob.get("/ui/")
			return alice.post(approve, url.Values{"csrf": {bob.csrf}})
		}, http.StatusForbidden},
		{"cross-site post with the token", func() *httptest.ResponseRecorder {
			r := httptest.NewRequest(http.MethodPost, approve, strings.NewReader(alice.form().Encode()))
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			r.Header.Set("Sec-Fetch-Site", "cross-site")
			return alice.do(r)
		}, http.StatusForbidden},
		{"no session cookie", func() *httptest.ResponseRecorder {
			fresh := f.as("alice")
			return fresh.post(approve, alice.form())
		}, http.StatusForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status(t, tc.do(), tc.want)
			if got, _ := f.apps.Get(context.Background(), req.ID); got.Status != approval.Pending {
				t.Fatalf("the request was decided: %s", got.Status)
			}
		})
	}

	rec := alice.post(approve, alice.form("duration", "30m", "single_use", "on", "note", "ok for today"))
	status(t, rec, http.StatusSeeOther)
	got, _ := f.apps.Get(context.Background(), req.ID)
	if got.Status != approval.Approved || got.Decider != obj("user:alice") || !got.SingleUse || got.Note != "ok for today" ||
		got.GrantExpires.Sub(got.Decided) != 30*time.Minute {
		t.Fatalf("approved as %+v", got)
	}
	if loc := rec.Header().Get("Location"); loc != "/ui/?done=approved" {
		t.Fatalf("redirected to %q", loc)
	}
	if body := status(t, alice.get("/ui/?done=approved"), http.StatusOK); !strings.Contains(body, "Approved.") || strings.Contains(body, `id="req-`+req.ID) {
		t.Fatalf("after approving, the inbox shows:\n%s", body)
	}
}

func TestDecisionRefusals(t *testing.T) {
	f := newFixture(t)
	req := f.file("agent:bot", "user:alice", "doc:plan", "edit")
	mallory := f.as("mallory")
	status(t, mallory.get("/ui/"), http.StatusOK)

	// Mallory's inbox does not list it, its page shows nothing of it.
	body := status(t, mallory.get("/ui/requests/"+req.ID), http.StatusForbidden)
	if !strings.Contains(body, "You cannot decide this request") || strings.Contains(body, "needs the figures") || strings.Contains(body, "doc:plan") {
		t.Fatalf("mallory's view of alice's request:\n%s", body)
	}
	// Posting anyway: the service refuses, the page says so.
	body = status(t, mallory.post("/ui/requests/"+req.ID+"/approve", mallory.form("duration", "1h")), http.StatusForbidden)
	if !strings.Contains(body, "Refused: you may not decide this request") {
		t.Fatalf("refusal page:\n%s", body)
	}
	if got, _ := f.apps.Get(context.Background(), req.ID); got.Status != approval.Pending {
		t.Fatalf("mallory decided: %s", got.Status)
	}

	alice := f.as("alice")
	alice.get("/ui/")
	// Longer than the maximum, or not a duration: refused before the service.
	status(t, alice.post("/ui/requests/"+req.ID+"/approve", alice.form("duration", "5h")), http.StatusBadRequest)
	status(t, alice.post("/ui/requests/"+req.ID+"/approve", alice.form("duration", "soon")), http.StatusBadRequest)
	status(t, alice.post("/ui/requests/"+req.ID+"/approve", alice.form("note", strings.Repeat("x", maxNote+1))), http.StatusBadRequest)
	// Deny, then a second decision is refused.
	status(t, alice.post("/ui/requests/"+req.ID+"/deny", alice.form("note", "not this quarter")), http.StatusSeeOther)
	if got, _ := f.apps.Get(context.Background(), req.ID); got.Status != approval.Denied || got.Note != "not this quarter" {
		t.Fatalf("denied as %+v", got)
	}
	status(t, alice.post("/ui/requests/"+req.ID+"/approve", alice.form()), http.StatusConflict)
	status(t, alice.post("/ui/requests/nope/approve", alice.form()), http.StatusNotFound)

	body = status(t, alice.get("/ui/history"), http.StatusOK)
	if !strings.Contains(body, "not this quarter") || !strings.Contains(body, "s-denied") {
		t.Fatalf("history:\n%s", body)
	}
}

func TestDurations(t *testing.T) {
	in := &Inbox{cfg: Config{MaxGrantDuration: 2 * time.Hour, DefaultGrantDuration: 15 * time.Minute}}
	for _, tc := range []struct {
		requested time.Duration
		selected  string
	}{
		{time.Hour, "1h0m0s"},
		{10 * time.Minute, "10m0s"},
		{8 * time.Hour, "2h0m0s"}, // clamped to the maximum
		{0, "15m0s"},
	} {
		opts := in.durations(tc.requested)
		var sel []string
		for _, o := range opts {
			d, _ := time.ParseDuration(o.Value)
			if d > 2*time.Hour {
				t.Errorf("requested %s: offers %s, over the maximum", tc.requested, o.Value)
			}
			if o.Selected {
				sel = append(sel, o.Value)
			}
		}
		if len(sel) != 1 || sel[0] != tc.selected {
			t.Errorf("requested %s: selected %v, want %s", tc.requested, sel, tc.selected)
		}
	}
}

func TestMyAgents(t *testing.T) {
	f := newFixture(t,
		"agent:bot#acts_for@user:alice",
		"agent:helper#acts_for@agent:bot",
		"agent:other#acts_for@user:bob",
		"agent:old#acts_for@user:alice[expiration:2020-01-01T00:00:00Z]",
		"doc:plan#viewer@agent:bot",
		"doc:memo#editor@agent:helper",
		"doc:wiki#reader@agent:*",
		"doc:old#viewer@agent:bot[expiration:2020-01-01T00:00:00Z]",
	)
	hour := time.Now().Add(time.Hour)
	right := []capability.Right{{Type: "doc", ID: "plan", Permissions: []string{"view"}}}
	f.toks.minted = []capability.Minted{
		{ID: "tok-1", RootID: "tok-1", Holder: "agent:bot", Principal: "user:alice", Rights: right, Task: "T-1", Expires: hour},
		// Made from tok-1 offline and used since: dies with it.
		{ID: "tok-1a", Parent: "tok-1", RootID: "tok-1", Holder: "agent:helper", Principal: "user:alice", Rights: right, Task: "T-1", Expires: hour},
		// An agent with no stored link acting for alice through a token.
		{ID: "tok-2", RootID: "tok-2", Holder: "agent:courier", Principal: "user:alice", Rights: right, Expires: hour},
		{ID: "tok-old", RootID: "tok-old", Holder: "agent:bot", Principal: "user:alice", Rights: right, Expires: time.Now().Add(-time.Minute)},
		{ID: "tok-bob", RootID: "tok-bob", Holder: "agent:other", Principal: "user:bob", Rights: right, Expires: hour},
	}
	g := f.file("agent:bot", "user:alice", "doc:plan", "edit")
	if _, err := f.apps.Approve(context.Background(), g.ID, approval.Decision{Approver: obj("user:alice"), Duration: time.Hour}); err != nil {
		t.Fatal(err)
	}
	alice := f.as("alice")
	body := status(t, alice.get("/ui/agents"), http.StatusOK)
	for _, want := range []string{"agent:bot", "agent:helper", "sub-agent of <code>agent:bot</code>", "doc:plan", "doc:memo", "doc:wiki", `title="tok-1a"`, "doc:plan#view",
		"agent:courier", "through a capability token", "/ui/grants/" + g.ID + "/revoke"} {
		if !strings.Contains(body, want) {
			t.Errorf("my agents lacks %q", want)
		}
	}
	for _, absent := range []string{"agent:other", "agent:old", "doc:old", `"tok-old"`, `"tok-bob"`} {
		if strings.Contains(body, absent) {
			t.Errorf("my agents shows %q", absent)
		}
	}

	// Bob cannot cut alice's delegation, nor revoke her grant or token.
	bob := f.as("bob")
	bob.get("/ui/agents")
	status(t, bob.post("/ui/agents/unlink", bob.form("agent", "agent:bot", "for", "user:alice")), http.StatusForbidden)
	status(t, bob.post("/ui/grants/"+g.ID+"/revoke", bob.form()), http.StatusNotFound)
	status(t, bob.post("/ui/tokens/tok-1/revoke", bob.form()), http.StatusNotFound)
	status(t, alice.post("/ui/tokens/tok-old/revoke", alice.form()), http.StatusNotFound)
	if got, _ := f.apps.Get(context.Background(), g.ID); got.Status != approval.Approved {
		t.Fatalf("bob revoked alice's grant")
	}

	status(t, alice.post("/ui/tokens/tok-1/revoke", alice.form()), http.StatusSeeOther)
	status(t, alice.post("/ui/grants/"+g.ID+"/revoke", alice.form()), http.StatusSeeOther)
	status(t, alice.post("/ui/agents/unlink", alice.form("agent", "agent:helper", "for", "agent:bot")), http.StatusSeeOther)
	if got, _ := f.apps.Get(context.Background(), g.ID); got.Status != approval.Revoked {
		t.Fatalf("grant not revoked: %s", got.Status)
	}
	if len(f.toks.revoked) != 1 || f.toks.revoked[0].By != capability.RevokeToken || f.toks.revoked[0].Value != "tok-1" ||
		!strings.Contains(f.toks.revoked[0].Reason, "user:alice") {
		t.Fatalf("revocations %+v", f.toks.revoked)
	}
	links, err := f.in.read(context.Background(), rel.Filter{ResourceType: "agent", Relation: "acts_for"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if l.Resource.ID == "helper" {
			t.Fatalf("the helper's delegation is still there: %s", l)
		}
	}
	body = status(t, alice.get("/ui/agents?done=unlinked"), http.StatusOK)
	if strings.Contains(body, "agent:helper") || strings.Contains(body, `"tok-1`) || !strings.Contains(body, `"tok-2"`) || !strings.Contains(body, "No live grants") {
		t.Fatalf("after revoking:\n%s", body)
	}
}

func TestEvents(t *testing.T) {
	f := newFixture(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.RemoteAddr = proxyAddr
		r.Header.Set("X-Forwarded-User", "alice")
		f.in.Handler().ServeHTTP(w, r)
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/ui/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	r := f.file("agent:bot", "user:alice", "doc:plan", "edit")
	f.file("agent:bot", "user:bob", "doc:bobs", "edit") // not alice's to decide
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "data: ") {
			if !strings.Contains(line, `"id":"`+r.ID+`"`) || !strings.Contains(line, `"status":"pending"`) {
				t.Fatalf("first event %q, want alice's request", line)
			}
			return
		}
	}
	t.Fatalf("the stream ended without an event: %v", sc.Err())
}

// TestAuditedAsThePerson: what the inbox does through the core is audited
// as the signed-in person, over transport ui.
func TestAuditedAsThePerson(t *testing.T) {
	rec := &recorder{}
	f := newFixture(t)
	f.core = newAuditedCore(t, rec, "agent:bot#acts_for@user:alice")
	in, err := New(f.in.cfg, Deps{Core: f.core, Approvals: f.apps})
	if err != nil {
		t.Fatal(err)
	}
	f.in = in
	alice := f.as("alice")
	alice.get("/ui/agents")
	status(t, alice.post("/ui/agents/unlink", alice.form("agent", "agent:bot", "for", "user:alice")), http.StatusSeeOther)
	evs := rec.events(audit.OpDeleteRelationships)
	if len(evs) != 1 || evs[0].Caller != "ui:user:alice" || evs[0].Transport != "ui" || evs[0].Source != proxyAddr {
		t.Fatalf("delete events %+v", evs)
	}
}
