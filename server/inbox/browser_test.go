package inbox_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image/png"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/mandate-authz/mandate/engine"
	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/server/approval"
	"github.com/mandate-authz/mandate/server/capability"
	"github.com/mandate-authz/mandate/server/escalation"
	"github.com/mandate-authz/mandate/server/inbox"
	"github.com/mandate-authz/mandate/server/inbox/oidctest"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/memory"
	"github.com/mandate-authz/mandate/store/rel"
)

// chromium finds the browser the tests drive: $MANDATE_CHROMIUM, else
// chromium on PATH. CI must have it (.ci/run installs it); elsewhere the
// browser tests skip without it.
func chromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("MANDATE_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("CI is set but chromium is not installed: the browser tests must run in CI (.ci/run installs it with apt-get install chromium)")
	}
	t.Skip("chromium is not installed (apt-get install chromium, or set MANDATE_CHROMIUM): skipping the browser tests; they run in CI")
	return ""
}

const e2eSchema = `definition user {}

definition agent {
	relation acts_for: user
}

definition doc {
	relation viewer: user | agent
	relation editor: user | agent
	permission view = viewer + editor
	permission edit = editor
}
`

const e2eRules = `rules:
  - name: edits-need-consent
    description: An agent editing a document needs its principal's consent.
    match:
      resource_types: [doc]
      permissions: [edit]
    max_duration: 4h
`

// system is a real Mandate server (server.New, memory store) with the
// escalation rules and the inbox signing in with a test OpenID provider,
// reached through a reverse proxy in front of its HTTP listener (as a TLS
// proxy would be), whose address is known before the server starts. The
// agent speaks mandate.v1 over gRPC.
type system struct {
	t     *testing.T
	srv   *server.Server
	proxy *httptest.Server
	idp   *oidctest.Provider
	perm  pb.PermissionServiceClient
	apps  pb.ApprovalServiceClient
	toks  pb.TokenServiceClient
	ctx   context.Context
}

const agentKey = "agent-platform-key-5b2e"

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return false }

func newSystem(t *testing.T, rels ...string) *system {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st := memory.New()
	if _, err := st.WriteSchema(ctx, e2eSchema); err != nil {
		t.Fatal(err)
	}
	var muts []store.Mutation
	for _, text := range rels {
		r, err := rel.Parse(text)
		if err != nil {
			t.Fatal(err)
		}
		muts = append(muts, store.Mutation{Op: store.Touch, Rel: r})
	}
	if _, err := st.Write(ctx, nil, muts); err != nil {
		t.Fatal(err)
	}
	rules, err := escalation.Parse("rules.yaml", []byte(e2eRules))
	if err != nil {
		t.Fatal(err)
	}

	proxy := httptest.NewUnstartedServer(nil)
	redirect := "http://" + proxy.Listener.Addr().String() + "/ui/callback"
	idp, err := oidctest.Start(oidctest.Config{ClientID: "mandate-inbox", ClientSecret: "test-secret", RedirectURL: redirect, Users: []string{"alice", "mallory"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(idp.Close)
	key, err := capability.GenerateKey("k1", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	keys, err := capability.NewKeySet(key)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(st, engine.New(), server.Config{
		CapabilityKeys: keys,
		GRPCAddr:       "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", PresharedKeys: []string{agentKey}, ShutdownGracePeriod: 2 * time.Second,
		Escalation: escalation.New(rules, escalation.Options{}),
		UI: &inbox.Config{
			OIDC:        &inbox.OIDC{Issuer: idp.URL, ClientID: "mandate-inbox", ClientSecret: "test-secret", RedirectURL: redirect},
			SubjectType: "user",
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server: %v", err)
		}
		st.Close()
	})
	for deadline := time.Now().Add(10 * time.Second); !srv.Ready(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the server did not become ready")
		}
	}
	proxy.Config.Handler = httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: srv.HTTPAddr().String()})
	proxy.Start()
	t.Cleanup(proxy.Close)
	conn, err := grpc.NewClient(srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(bearer(agentKey)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &system{t: t, srv: srv, proxy: proxy, idp: idp, perm: pb.NewPermissionServiceClient(conn), apps: pb.NewApprovalServiceClient(conn),
		toks: pb.NewTokenServiceClient(conn), ctx: ctx}
}

var (
	alice   = rel.Object{Type: "user", ID: "alice"}
	mallory = rel.Object{Type: "user", ID: "mallory"}
	bot     = rel.Object{Type: "agent", ID: "research-bot"}
)

func ref(o rel.Object) *pb.ObjectReference {
	return &pb.ObjectReference{ObjectType: o.Type, ObjectId: o.ID}
}

// check is the agent's check over gRPC, as fresh as the store; token,
// when set, is the capability token it carries.
func (s *system) check(agent rel.Object, resource, perm string, token ...string) *pb.CheckResponse {
	s.t.Helper()
	task, _ := structpb.NewStruct(map[string]any{"task": "T-42"})
	req := &pb.CheckRequest{
		Resource: ref(obj(resource)), Permission: perm, Subject: &pb.SubjectReference{Object: ref(agent)}, Context: task,
		Consistency: &pb.Consistency{Requirement: &pb.Consistency_FullyConsistent{FullyConsistent: true}},
	}
	if len(token) > 0 {
		req.CapabilityToken = token[0]
	}
	resp, err := s.perm.Check(s.ctx, req)
	if err != nil {
		s.t.Fatal(err)
	}
	return resp
}

// file is the agent filing the request its escalated check names.
func (s *system) file(res *pb.CheckResponse, reason string, d time.Duration) approval.Request {
	s.t.Helper()
	if res.GetDecision() != pb.Decision_DECISION_APPROVAL_REQUIRED || res.GetApproval().GetRequest() == nil {
		s.t.Fatalf("the check asks for no approval: %v", res)
	}
	req := res.GetApproval().GetRequest()
	req.Reason, req.Duration = reason, durationpb.New(d)
	out, err := s.apps.Request(s.ctx, req)
	if err != nil {
		s.t.Fatal(err)
	}
	got, err := s.srv.Approvals().Get(s.ctx, out.GetApproval().GetId())
	if err != nil {
		s.t.Fatal(err)
	}
	return got
}

func (s *system) get(id string) approval.Request {
	s.t.Helper()
	r, err := s.srv.Approvals().Get(s.ctx, id)
	if err != nil {
		s.t.Fatal(err)
	}
	return r
}

func (s *system) status(id string) approval.Status { return s.get(id).Status }

func obj(s string) rel.Object {
	t, id, _ := strings.Cut(s, ":")
	return rel.Object{Type: t, ID: id}
}

// browser starts headless chromium. People take turns in it, signing out
// in between (a second browser context loses its target across the
// redirect to the provider in this chromedp version).
func browser(t *testing.T) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium(t)), chromedp.NoSandbox, chromedp.WindowSize(1280, 900))
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	return ctx
}

// do runs steps with a deadline (generous: CI machines are loaded).
func do(t *testing.T, ctx context.Context, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := chromedp.Do(sctx, steps...); err != nil {
		t.Fatalf("browser: %v", err)
	}
}

func run[T any](t *testing.T, ctx context.Context, a chromedp.Action[T]) T {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	v, err := chromedp.Run(sctx, a)
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	return v
}

// signIn goes to the inbox, is sent to the provider's login form, signs in.
func (s *system) signIn(t *testing.T, ctx context.Context, user string) {
	t.Helper()
	do(t, ctx,
		chromedp.Navigate(s.proxy.URL+"/ui/"),
		chromedp.WaitVisible(chromedp.ID("username")),
		chromedp.SetValue(chromedp.ID("username"), user),
		chromedp.Click(chromedp.ID("signin")),
		chromedp.WaitVisible(chromedp.CSS(`span.person`)),
	)
	if who := run(t, ctx, chromedp.Text(chromedp.CSS(`span.person`))); who != user {
		t.Fatalf("signed in as %q, want %q", who, user)
	}
}

// signOut posts the sign-out form; the inbox then needs a new sign-in.
func (s *system) signOut(t *testing.T, ctx context.Context) {
	t.Helper()
	do(t, ctx,
		chromedp.Navigate(s.proxy.URL+"/ui/"),
		chromedp.Click(chromedp.CSS(`form[action="/ui/logout"] button`)),
		chromedp.WaitVisible(chromedp.CSS(`a[href="/ui/login"]`)),
	)
}

func card(id string) chromedp.CSS { return chromedp.CSS(`[id="req-` + id + `"]`) }

// flash waits for the page's message (after a form's redirect) to say want.
func flash(t *testing.T, ctx context.Context, class, want string) {
	t.Helper()
	js := fmt.Sprintf(`(() => { const e = document.querySelector("p.flash.%s"); return !!e && e.innerText.includes(%q); })()`, class, want)
	// Evaluated again and again: the page may be navigating meanwhile.
	for deadline := time.Now().Add(45 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		ok, err := chromedp.Run(sctx, chromedp.Evaluate[bool](js))
		cancel()
		if err == nil && ok {
			return
		}
	}
	got, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector("main").innerText`))
	t.Fatalf("waiting for %q (%v); the page says:\n%s", want, err, got)
}

func text(t *testing.T, ctx context.Context, sel chromedp.CSS) string {
	t.Helper()
	do(t, ctx, chromedp.WaitVisible(sel))
	return run(t, ctx, chromedp.Text(sel))
}

// screenshot takes a full-page PNG; with MANDATE_UPDATE_SCREENSHOTS=1 it
// is written to docs/NAME at the repository's root.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	buf := run(t, ctx, chromedp.FullScreenshot(100))
	cfg, err := png.DecodeConfig(bytes.NewReader(buf))
	if err != nil || cfg.Width < 1000 || cfg.Height < 400 {
		t.Fatalf("screenshot %s: %v %dx%d", name, err, cfg.Width, cfg.Height)
	}
	if os.Getenv("MANDATE_UPDATE_SCREENSHOTS") == "1" {
		if err := os.WriteFile(filepath.Join("..", "..", "docs", name), buf, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestInboxInBrowser is the story end to end, against a running
// server, in headless Chromium: an agent's check (mandate.v1 over gRPC) is
// escalated by a rule, the agent files a request over gRPC, the
// principal signs in through an OpenID provider, sees it, approves, and the
// agent's retry passes; a second request arrives live and is denied; a
// person without the permission cannot approve; forms without the CSRF
// token and GETs change nothing; revoking from "my agents" denies the
// agent's next check.
func TestInboxInBrowser(t *testing.T) {
	s := newSystem(t,
		"agent:research-bot#acts_for@user:alice",
		"agent:scribe#acts_for@user:alice",
		"doc:q3-plan#editor@user:alice", "doc:q3-plan#editor@agent:research-bot",
		"doc:budget#editor@user:alice", "doc:budget#editor@agent:research-bot",
		"doc:roadmap#editor@user:alice", "doc:roadmap#editor@agent:scribe",
		"doc:handbook#viewer@agent:scribe", "doc:handbook#viewer@user:alice",
	)
	// The rule holds the agent's edit, though the engine allows it.
	res := s.check(bot, "doc:q3-plan", "edit")
	if res.GetDecision() != pb.Decision_DECISION_APPROVAL_REQUIRED || res.GetApproval().GetRule() != "edits-need-consent" {
		t.Fatalf("the agent's edit was not escalated: %v", res)
	}
	plan := s.file(res, "Update the Q3 plan with the revised revenue figures from finance.", time.Hour)
	roadmap := s.file(s.check(obj("agent:scribe"), "doc:roadmap", "edit"), "Fix the typos flagged in the roadmap review.", 15*time.Minute)

	al := browser(t)
	s.signIn(t, al, "alice")
	if s.idp.Issued() != 1 {
		t.Fatalf("%d ID tokens issued", s.idp.Issued())
	}
	got := text(t, al, card(plan.ID))
	for _, want := range []string{"agent:research-bot", "edit", "doc:q3-plan", "user:alice", "T-42", "revised revenue figures", "edits-need-consent", "1h"} {
		if !strings.Contains(got, want) {
			t.Errorf("the card lacks %q:\n%s", want, got)
		}
	}
	do(t, al, chromedp.WaitVisible(chromedp.CSS(`#requests[data-connected="true"]`)))

	// A request filed while the page is open appears without a reload.
	budget := s.file(s.check(bot, "doc:budget", "edit"), "Move the travel budget line to Q4.", 30*time.Minute)
	if got := text(t, al, card(budget.ID)); !strings.Contains(got, "doc:budget") {
		t.Fatalf("the live card: %s", got)
	}
	if n := run(t, al, chromedp.Text(chromedp.ID("count"))); n != "3 pending" {
		t.Fatalf("count %q", n)
	}
	screenshot(t, al, "inbox.png")

	// Approve the plan for 30 minutes; the agent's retry passes.
	do(t, al,
		chromedp.SetValue(chromedp.CSS(`[id="dur-`+plan.ID+`"]`), "30m0s"),
		chromedp.SetValue(chromedp.CSS(`[id="note-`+plan.ID+`"]`), "Go ahead."),
		chromedp.Click(chromedp.CSS(`[id="req-`+plan.ID+`"] button.primary`)),
	)
	flash(t, al, "ok", "Approved")
	r := s.get(plan.ID)
	if r.Status != approval.Approved || r.Decider != alice || r.Note != "Go ahead." || r.GrantExpires.Sub(r.Decided).Round(time.Minute) != 30*time.Minute {
		t.Fatalf("approved as %+v", r)
	}
	if res := s.check(bot, "doc:q3-plan", "edit"); res.GetDecision() != pb.Decision_DECISION_ALLOWED || res.GetApproval().GetGrantId() != plan.ID {
		t.Fatalf("the agent's retry: %v", res)
	}

	// Deny the budget with a note; the agent stays refused.
	do(t, al,
		chromedp.SetValue(chromedp.CSS(`[id="note-`+budget.ID+`"]`), "Not before the board meeting."),
		chromedp.Click(chromedp.CSS(`[id="req-`+budget.ID+`"] button.danger`)),
	)
	flash(t, al, "ok", "Denied")
	if st := s.status(budget.ID); st != approval.Denied {
		t.Fatalf("budget request %s", st)
	}
	if res := s.check(bot, "doc:budget", "edit"); res.GetDecision() == pb.Decision_DECISION_ALLOWED {
		t.Fatal("a denied request allowed the agent")
	}
	if got := text(t, al, chromedp.CSS(`main`)); strings.Contains(got, "doc:budget") || !strings.Contains(got, "doc:roadmap") {
		t.Fatalf("the inbox after deciding:\n%s", got)
	}

	// CSRF: a post without the token is refused; a GET cannot approve.
	code := run(t, al, chromedp.Evaluate[int](`fetch("/ui/requests/`+roadmap.ID+`/approve", {method: "POST",
		headers: {"Content-Type": "application/x-www-form-urlencoded"}, body: "duration=15m0s"}).then(r => r.status)`, chromedp.EvalAwaitPromise))
	if code != http.StatusForbidden {
		t.Fatalf("a post without the CSRF token: %d", code)
	}
	resp := run(t, al, chromedp.NavigateResponse(s.proxy.URL+"/ui/requests/"+roadmap.ID+"/approve"))
	if resp.Status != http.StatusMethodNotAllowed {
		t.Fatalf("GET approve: %d", resp.Status)
	}
	if st := s.status(roadmap.ID); st != approval.Pending {
		t.Fatalf("the roadmap request was decided: %s", st)
	}

	// History shows both decisions.
	do(t, al, chromedp.Navigate(s.proxy.URL+"/ui/history"))
	if got := text(t, al, chromedp.CSS(`table.hist`)); !strings.Contains(got, "Not before the board meeting.") || !strings.Contains(got, "Go ahead.") {
		t.Fatalf("history:\n%s", got)
	}

	// Mallory holds nothing on doc:roadmap and is not the principal: the
	// inbox lists nothing, the request's page refuses, a forged post (with
	// her own valid token) is refused by the service, and so is the API.
	s.signOut(t, al)
	ma := al
	s.signIn(t, ma, "mallory")
	if got := text(t, ma, chromedp.CSS(`main`)); strings.Contains(got, "doc:roadmap") || !strings.Contains(got, "0 pending") {
		t.Fatalf("mallory's inbox:\n%s", got)
	}
	resp = run(t, ma, chromedp.NavigateResponse(s.proxy.URL+"/ui/requests/"+roadmap.ID))
	if got := text(t, ma, chromedp.CSS(`main`)); resp.Status != http.StatusForbidden || !strings.Contains(got, "You cannot decide this request") || strings.Contains(got, "typos") {
		t.Fatalf("mallory's view of the request (%d):\n%s", resp.Status, got)
	}
	do(t, ma, chromedp.Evaluate[chromedp.Void](`(() => {
		const f = document.createElement("form");
		f.method = "post"; f.action = "/ui/requests/`+roadmap.ID+`/approve";
		for (const [k, v] of [["csrf", document.querySelector('meta[name="csrf-token"]').content], ["duration", "15m0s"]]) {
			const i = document.createElement("input"); i.type = "hidden"; i.name = k; i.value = v; f.appendChild(i);
		}
		document.body.appendChild(f); f.submit();
	})()`))
	flash(t, ma, "err", "Refused: you may not decide this request")
	if _, err := s.srv.Approvals().Approve(s.ctx, roadmap.ID, approval.Decision{Approver: mallory}); !errors.Is(err, approval.ErrNotAllowed) {
		t.Fatalf("mallory through the service: %v", err)
	}
	// The API refuses a key that speaks for no person.
	if _, err := s.apps.Approve(s.ctx, &pb.ApproveRequest{Id: roadmap.ID}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("approve over gRPC with the agent platform's key: %v", err)
	}
	if st := s.status(roadmap.ID); st != approval.Pending {
		t.Fatalf("mallory decided the roadmap request: %s", st)
	}

	// Alice's platform mints the scribe a capability token for the
	// handbook, for this task.
	minted, err := s.toks.Mint(s.ctx, &pb.MintRequest{
		Holder: ref(obj("agent:scribe")), OnBehalfOf: ref(alice), Task: "T-42", Ttl: durationpb.New(time.Hour),
		Rights: []*pb.TokenRight{{ResourceType: "doc", ResourceId: "handbook", Permissions: []string{"view"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if res := s.check(obj("agent:scribe"), "doc:handbook", "view", minted.GetToken()); res.GetDecision() != pb.Decision_DECISION_ALLOWED {
		t.Fatalf("the scribe's token check: %v", res)
	}

	// My agents: both agents, their scopes, the token and the live grant.
	s.signOut(t, ma)
	s.signIn(t, al, "alice")
	do(t, al, chromedp.Navigate(s.proxy.URL+"/ui/agents"))
	got = text(t, al, chromedp.CSS(`main`))
	for _, want := range []string{"agent:research-bot", "agent:scribe", "doc:q3-plan", "doc:handbook", "until", minted.GetTokenId()[:12], "doc:handbook#view"} {
		if !strings.Contains(got, want) {
			t.Errorf("my agents lacks %q:\n%s", want, got)
		}
	}
	screenshot(t, al, "my-agents.png")

	// Revoke the grant: the agent's next check is held again.
	do(t, al, chromedp.Click(chromedp.CSS(`form[action="/ui/grants/`+plan.ID+`/revoke"] button`)))
	flash(t, al, "ok", "Grant revoked")
	if res := s.check(bot, "doc:q3-plan", "edit"); res.GetDecision() != pb.Decision_DECISION_APPROVAL_REQUIRED {
		t.Fatalf("after revoking the grant: %v", res)
	}
	// Revoke the token: the scribe's next check with it is denied.
	do(t, al, chromedp.Click(chromedp.CSS(`form[action="/ui/tokens/`+minted.GetTokenId()+`/revoke"] button`)))
	flash(t, al, "ok", "Token revoked")
	if res := s.check(obj("agent:scribe"), "doc:handbook", "view", minted.GetToken()); res.GetDecision() == pb.Decision_DECISION_ALLOWED {
		t.Fatalf("a revoked token allowed: %v", res)
	}
	if got := text(t, al, chromedp.CSS(`main`)); strings.Contains(got, minted.GetTokenId()[:12]) {
		t.Fatalf("my agents still lists the revoked token:\n%s", got)
	}
	// Remove the delegation: the agent acts for no one.
	if res := s.check(obj("agent:scribe"), "doc:handbook", "view"); res.GetDecision() != pb.Decision_DECISION_ALLOWED {
		t.Fatalf("scribe before: %v", res)
	}
	do(t, al, chromedp.Click(chromedp.CSS(`button[aria-label="Remove the delegation of agent:scribe"]`)))
	flash(t, al, "ok", "Delegation removed")
	if res := s.check(obj("agent:scribe"), "doc:handbook", "view"); res.GetDecision() != pb.Decision_DECISION_DENIED {
		t.Fatalf("scribe after its delegation was removed: %v", res)
	}
	if got := text(t, al, chromedp.CSS(`main`)); strings.Contains(got, "agent:scribe") {
		t.Fatalf("my agents still lists the scribe:\n%s", got)
	}
}
