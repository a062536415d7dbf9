package mcpgateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/auth"
	"github.com/modelcontextprotocol/go-sdk/oauthex"
	"google.golang.org/grpc"

	"github.com/mandate-authz/mandate/store/rel"
)

// Defaults of Config's limits.
const (
	DefaultMaxBodyBytes = 1 << 20
	DefaultClockSkew    = 30 * time.Second
	DefaultCheckTimeout = 5 * time.Second
	DefaultCacheEntries = 100_000
	DefaultMaxSessions  = 10_000
	DefaultSessionIdle  = time.Hour
)

// CapabilityHeader carries a Mandate capability token. The gateway never
// forwards it upstream: it passes it to Mandate's checks (capability_token),
// where Mandate verifies it and binds it to its holder, which must be the
// calling agent; the token's principal must be the OAuth token's. Calls
// made with it are never answered from the decision cache, so a revoked
// token denies the very next call.
const CapabilityHeader = "Mandate-Capability"

// Config configures a Gateway.
type Config struct {
	// Resource is the gateway's canonical URI (RFC 8707), e.g.
	// https://mcp.example.com/mcp: tokens must name it in aud, and the MCP
	// endpoint is served at its path.
	Resource string
	// Issuer is the OAuth/OIDC issuer whose tokens are accepted; its
	// discovery document names the JWKS.
	Issuer string
	// Mapping says what each call is checked against.
	Mapping *Mapping
	// Mandate is a connection to Mandate's gRPC API (with its key).
	Mandate grpc.ClientConnInterface
	// MaxBodyBytes bounds a request body (default 1 MiB).
	MaxBodyBytes int64
	// ClockSkew is the tolerance on exp and nbf (default 30s; negative: none).
	ClockSkew time.Duration
	// CheckTimeout bounds each call to Mandate (default 5s).
	CheckTimeout time.Duration
	// CacheTTL enables the decision cache (0, the default: every decision
	// is a Mandate check, so every one is in Mandate's audit trail).
	// Entries are dropped on any change Mandate's Watch stream reports and
	// whenever that stream is down; the TTL bounds how long a
	// relationship's own expiration or a schema change can go unnoticed.
	CacheTTL     time.Duration
	CacheEntries int
	// MaxSessions and SessionIdle bound the sessions the gateway tracks.
	MaxSessions int
	SessionIdle time.Duration
	// ApprovalURL is the base of Mandate's web inbox (e.g.
	// https://mandate.example.com/ui/): a call held for a person's approval
	// sends a client that declared URL elicitation to the request's page
	// there. Empty: held calls are answered with the approval request in
	// the denial's data only.
	ApprovalURL string
	// HTTPClient fetches the issuer's discovery document and keys.
	HTTPClient *http.Client
	Logger     *slog.Logger
}

// Gateway is the MCP authorization layer: an OAuth resource server that
// checks every call with Mandate. Middleware wraps an MCP server's handler
// in-process; NewProxy builds the handler to wrap for a remote one.
type Gateway struct {
	cfg      Config
	auth     *authenticator
	dec      *decider
	sessions *sessionTable
	filer    *filer
	prm      http.Handler
	prmURL   string
	prmPath  string
	mcpPath  string
	log      *slog.Logger
	stop     context.CancelFunc
	done     chan struct{}
}

// New validates cfg, discovers the issuer and, with the cache on, starts
// following Mandate's Watch stream. Close stops it.
func New(ctx context.Context, cfg Config) (*Gateway, error) {
	if cfg.Mapping == nil {
		return nil, errors.New("mcpgateway: a mapping is required")
	}
	if cfg.Mandate == nil {
		return nil, errors.New("mcpgateway: a connection to Mandate is required")
	}
	if cfg.Issuer == "" {
		return nil, errors.New("mcpgateway: an issuer is required")
	}
	full, path, err := metadataURL(cfg.Resource)
	if err != nil {
		return nil, fmt.Errorf("mcpgateway: %w", err)
	}
	u, _ := url.Parse(cfg.Resource)
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	switch {
	case cfg.ClockSkew == 0:
		cfg.ClockSkew = DefaultClockSkew
	case cfg.ClockSkew < 0:
		cfg.ClockSkew = 0
	}
	if cfg.CheckTimeout <= 0 {
		cfg.CheckTimeout = DefaultCheckTimeout
	}
	if cfg.CacheEntries <= 0 {
		cfg.CacheEntries = DefaultCacheEntries
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = DefaultMaxSessions
	}
	if cfg.SessionIdle <= 0 {
		cfg.SessionIdle = DefaultSessionIdle
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	var inbox *url.URL
	if cfg.ApprovalURL != "" {
		iu, err := url.Parse(cfg.ApprovalURL)
		if err != nil || (iu.Scheme != "http" && iu.Scheme != "https") || iu.Host == "" {
			return nil, fmt.Errorf("mcpgateway: approval URL %q: expected the http(s) URL of Mandate's inbox, such as https://mandate.example.com/ui/", cfg.ApprovalURL)
		}
		inbox = iu
	}
	a, err := newAuthenticator(ctx, &cfg)
	if err != nil {
		return nil, fmt.Errorf("mcpgateway: %w", err)
	}
	scopes := append([]string(nil), cfg.Mapping.Scopes...)
	for _, r := range cfg.Mapping.Tools {
		scopes = append(scopes, r.Scopes...)
	}
	g := &Gateway{
		cfg:      cfg,
		auth:     a,
		dec:      newDecider(cfg.Mandate, cfg.CacheTTL, cfg.CacheEntries, cfg.Logger),
		sessions: newSessionTable(cfg.MaxSessions, cfg.SessionIdle),
		filer:    newFiler(cfg.Mandate, inbox),
		prmURL:   full,
		prmPath:  path,
		mcpPath:  u.EscapedPath(),
		log:      cfg.Logger,
		done:     make(chan struct{}),
	}
	if g.mcpPath == "" {
		g.mcpPath = "/"
	}
	g.prm = auth.ProtectedResourceMetadataHandler(&oauthex.ProtectedResourceMetadata{
		Resource:               cfg.Resource,
		AuthorizationServers:   []string{cfg.Issuer},
		ScopesSupported:        dedupe(scopes),
		BearerMethodsSupported: []string{"header"},
		ResourceName:           "MCP server behind the Mandate gateway",
	})
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	g.stop = cancel
	if cfg.CacheTTL > 0 {
		go func() { defer close(g.done); g.dec.watch(wctx) }()
	} else {
		close(g.done)
	}
	return g, nil
}

// Close stops following Mandate's Watch stream.
func (g *Gateway) Close() {
	g.stop()
	<-g.done
}

// CacheStats reports decision cache hits and misses.
func (g *Gateway) CacheStats() (hits, misses uint64) {
	return g.dec.hits.Load(), g.dec.misses.Load()
}

// CacheReady reports whether decisions are being cached: the cache is on
// and Mandate's Watch stream is being followed.
func (g *Gateway) CacheReady() bool { return g.cfg.CacheTTL > 0 && g.dec.healthy.Load() }

// MetadataURL is where the gateway serves its Protected Resource Metadata.
func (g *Gateway) MetadataURL() string { return g.prmURL }

func dedupe(in []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// NewProxy forwards MCP requests to the Streamable HTTP endpoint upstream
// (its URL exactly), streaming responses as they come.
func NewProxy(upstream *url.URL, log *slog.Logger) http.Handler {
	// Keep a connection per concurrent client: the default transport keeps
	// two idle per host, so more sessions would dial the upstream per call.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 256
	return &httputil.ReverseProxy{
		Transport:  tr,
		BufferPool: &copyBuffers{},
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL = &url.URL{Scheme: upstream.Scheme, Host: upstream.Host, Path: upstream.Path, RawPath: upstream.RawPath, RawQuery: upstream.RawQuery}
			pr.Out.Host = upstream.Host
			pr.SetXForwarded()
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if log != nil {
				log.Error("upstream MCP server unreachable", "error", err)
			}
			writeRPCError(w, nil, &rpcError{status: http.StatusBadGateway, code: -32603, message: "the upstream MCP server is unreachable"})
		},
	}
}

// copyBuffers reuses the proxy's response copy buffers: without it every
// call allocated 32 KiB, most of the gateway's own garbage per call.
type copyBuffers struct{ pool sync.Pool }

func (p *copyBuffers) Get() []byte {
	if b, ok := p.pool.Get().(*[]byte); ok {
		return *b
	}
	return make([]byte, 32<<10)
}

func (p *copyBuffers) Put(b []byte) { p.pool.Put(&b) }

type identityKey struct{}

// IdentityFromContext returns the verified identity of the request the
// gateway passed to the wrapped handler.
func IdentityFromContext(ctx context.Context) (*Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(*Identity)
	return id, ok
}

// Middleware checks every request before next sees it: next receives only
// authenticated, authorized requests, without the client's token, and
// list responses pass back through the filter.
func (g *Gateway) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.serve(w, r, next)
	})
}

func (g *Gateway) serve(w http.ResponseWriter, r *http.Request, next http.Handler) {
	if r.URL.Path == g.prmPath || r.URL.Path == "/.well-known/oauth-protected-resource" {
		g.prm.ServeHTTP(w, r)
		return
	}
	if r.URL.Path != g.mcpPath {
		http.Error(w, fmt.Sprintf("not found: the MCP endpoint is %s", g.mcpPath), http.StatusNotFound)
		return
	}
	id, err := g.auth.authenticate(r.Context(), r)
	if err != nil {
		g.refuseAuth(w, err)
		return
	}
	// The client's token and capability are for this gateway and Mandate,
	// never for the MCP server.
	r.Header.Del("Authorization")
	capTokens := r.Header.Values(CapabilityHeader)
	r.Header.Del(CapabilityHeader)
	r.Header.Del("Accept-Encoding") // list responses must be readable to filter
	switch {
	case len(capTokens) > 1:
		writeRPCError(w, nil, badRequest(CodeInvalidRequest, "%s: given %d times, expected at most one token", CapabilityHeader, len(capTokens)))
		return
	case len(capTokens) == 1 && strings.TrimSpace(capTokens[0]) == "":
		writeRPCError(w, nil, badRequest(CodeInvalidRequest, "%s: empty, expected a capability token", CapabilityHeader))
		return
	case len(capTokens) == 1:
		// Per request: the identity may be shared by the caller's other
		// requests.
		withCap := *id
		withCap.capability = strings.TrimSpace(capTokens[0])
		id = &withCap
	}
	r = r.WithContext(context.WithValue(r.Context(), identityKey{}, id))
	switch r.Method {
	case http.MethodPost:
		g.post(w, r, id, next)
	case http.MethodGet, http.MethodDelete:
		sess, _, rerr := g.session(r, id)
		if rerr != nil {
			writeRPCError(w, nil, rerr)
			return
		}
		if r.Method == http.MethodDelete {
			next.ServeHTTP(w, r)
			g.sessions.drop(sess)
			return
		}
		if sess == "" {
			next.ServeHTTP(w, r)
			return
		}
		// A GET stream may replay responses to earlier requests (Last-Event-ID
		// resumption): list responses among them are filtered too.
		tap := &responseTap{w: w, match: g.sessions.listMethod(sess), filter: g.listFilter(r.Context(), id)}
		next.ServeHTTP(tap, r)
		tap.finish()
	default:
		w.Header().Set("Allow", "GET, POST, DELETE")
		http.Error(w, "method not allowed: MCP's Streamable HTTP uses GET, POST and DELETE", http.StatusMethodNotAllowed)
	}
}

func (g *Gateway) refuseAuth(w http.ResponseWriter, err error) {
	var ae *authError
	if !errors.As(err, &ae) {
		ae = invalidToken("%v", err)
	}
	w.Header().Set("WWW-Authenticate", ae.challenge(g.prmURL))
	writeRPCError(w, nil, &rpcError{status: ae.status, code: CodeInvalidRequest, message: ae.description})
}

// session reads the request's Mcp-Session-Id: a session must have been
// opened through the gateway by the same identity. The scope keys the
// decision cache: the session, else the token.
func (g *Gateway) session(r *http.Request, id *Identity) (sess, scope string, _ *rpcError) {
	sess = r.Header.Get("Mcp-Session-Id")
	if sess == "" {
		return "", "token:" + id.tokenHash, nil
	}
	if !g.sessions.owns(sess, id.key()) {
		return "", "", &rpcError{status: http.StatusNotFound, code: CodeSessionNotFound,
			message: "session not found for this caller: start a new session with initialize"}
	}
	return sess, "session:" + sess, nil
}

// passThrough are the methods forwarded once the caller is authenticated,
// without a check of their own; anything not named here or checked is
// refused, so a method added to MCP later is closed until it is mapped.
var passThrough = map[string]bool{
	"initialize": true, "ping": true, "server/discover": true, "subscriptions/listen": true,
	"resources/templates/list": true, "resources/unsubscribe": true, "logging/setLevel": true,
}

var listed = map[string]string{"tools/list": "tools", "prompts/list": "prompts", "resources/list": "resources"}

func (g *Gateway) post(w http.ResponseWriter, r *http.Request, id *Identity, next http.Handler) {
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct != "application/json" {
		writeRPCError(w, nil, &rpcError{status: http.StatusUnsupportedMediaType, code: CodeInvalidRequest, message: "Content-Type must be application/json"})
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, g.cfg.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeRPCError(w, nil, &rpcError{status: http.StatusRequestEntityTooLarge, code: CodeInvalidRequest,
				message: fmt.Sprintf("request body larger than the gateway's limit of %d bytes", mbe.Limit)})
			return
		}
		writeRPCError(w, nil, badRequest(CodeInvalidRequest, "reading the request body: %v", err))
		return
	}
	msg, err := parseMessage(body)
	if err != nil {
		writeRPCError(w, nil, err.(*rpcError))
		return
	}
	if rerr := checkStandardHeaders(r.Header, msg); rerr != nil {
		writeRPCError(w, msg.ID, rerr)
		return
	}
	sess, scope, rerr := g.session(r, id)
	if rerr != nil {
		writeRPCError(w, msg.ID, rerr)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	if msg.Method != "" && !msg.isRequest() {
		// A notification runs nothing the client waits for, but a server may
		// still act on one named like a request: only notifications/* pass.
		if !strings.HasPrefix(msg.Method, "notifications/") {
			writeRPCError(w, nil, badRequest(CodeInvalidRequest, "%q without an id: only notifications/* may be sent as notifications", msg.Method))
			return
		}
	}
	if !msg.isRequest() {
		next.ServeHTTP(w, r) // notifications, and responses to the server's requests
		return
	}
	switch {
	case msg.Method == "initialize":
		elicitURL := declaresURLElicitation(msg.Params)
		tap := &responseTap{w: w, onHeader: func(h http.Header) {
			if s := h.Get("Mcp-Session-Id"); s != "" {
				g.sessions.bind(s, id.key(), elicitURL)
			}
		}}
		next.ServeHTTP(tap, r)
		tap.finish()
	case listed[msg.Method] != "":
		g.sessions.noteList(sess, msg.ID, msg.Method)
		ids := string(msg.ID)
		tap := &responseTap{w: w, filter: g.listFilter(r.Context(), id), match: func(rid json.RawMessage) (string, bool) {
			return msg.Method, string(rid) == ids
		}}
		next.ServeHTTP(tap, r)
		tap.finish()
	case passThrough[msg.Method]:
		next.ServeHTTP(w, r)
	default:
		if err := g.authorize(r.Context(), id, sess, scope, msg); err != nil {
			var ae *authError
			if errors.As(err, &ae) {
				w.Header().Set("WWW-Authenticate", ae.challenge(g.prmURL))
				writeRPCError(w, msg.ID, &rpcError{status: ae.status, code: CodeInvalidRequest, message: ae.description})
				return
			}
			writeRPCError(w, msg.ID, err.(*rpcError))
			return
		}
		next.ServeHTTP(w, r)
	}
}

// checkStandardHeaders enforces revision 2026-07-28: Mcp-Method (and, for
// calls naming a tool, prompt or resource, Mcp-Name) must be present and
// equal the body, else 400 with the spec's header mismatch error. Routing
// and the gateway's own decision must never read different calls.
func checkStandardHeaders(h http.Header, msg *message) *rpcError {
	if v := h.Get("Mcp-Protocol-Version"); v == "" || v < "2026-07-28" || msg.Method == "" {
		return nil
	}
	mismatch := func(format string, args ...any) *rpcError {
		return badRequest(CodeHeaderMismatch, format, args...)
	}
	got := h.Get("Mcp-Method")
	if got == "" {
		return mismatch("missing required Mcp-Method header")
	}
	if got != msg.Method {
		return mismatch("header mismatch: Mcp-Method header value %q does not match body value %q", got, msg.Method)
	}
	switch msg.Method {
	case "tools/call", "prompts/get", "resources/read":
		name, err := callName(msg)
		if err != nil {
			return err
		}
		got := h.Get("Mcp-Name")
		if got == "" {
			return mismatch("missing required Mcp-Name header for method %q", msg.Method)
		}
		if got != name {
			return mismatch("header mismatch: Mcp-Name header value %q does not match body value %q", got, name)
		}
	}
	return nil
}

// callParams are the parameters of the checked methods.
type callParams struct {
	Name      string                     `json:"name"`
	URI       string                     `json:"uri"`
	Arguments map[string]json.RawMessage `json:"arguments"`
}

func parseCallParams(msg *message) (*callParams, *rpcError) {
	var p callParams
	if len(msg.Params) == 0 {
		return nil, badRequest(CodeInvalidParams, "%s: params are required", msg.Method)
	}
	if err := json.Unmarshal(msg.Params, &p); err != nil {
		return nil, badRequest(CodeInvalidParams, "%s: params: %v", msg.Method, err)
	}
	return &p, nil
}

// callName is the tool or prompt name, or the resource URI, of a call.
func callName(msg *message) (string, *rpcError) {
	p, err := parseCallParams(msg)
	if err != nil {
		return "", err
	}
	if msg.Method == "resources/read" || msg.Method == "resources/subscribe" {
		return p.URI, nil
	}
	return p.Name, nil
}

// authorize decides a tools/call, prompts/get, resources/read or
// resources/subscribe; every other method reaching it is refused. A call
// carrying a capability token is decided with it (decider.check).
func (g *Gateway) authorize(ctx context.Context, id *Identity, sess, scope string, msg *message) error {
	switch msg.Method {
	case "tools/call", "prompts/get":
		return g.authorizeNamed(ctx, id, sess, scope, msg)
	case "resources/read", "resources/subscribe":
		return g.authorizeResource(ctx, id, sess, scope, msg)
	}
	return &rpcError{code: CodeMethodNotFound, message: fmt.Sprintf("method %q is not allowed through the gateway", msg.Method)}
}

func invalidParams(format string, args ...any) *rpcError {
	return &rpcError{code: CodeInvalidParams, message: fmt.Sprintf(format, args...)}
}

// authorizeNamed decides a tools/call or prompts/get by its name and
// arguments.
func (g *Gateway) authorizeNamed(ctx context.Context, id *Identity, sess, scope string, msg *message) error {
	p, perr := parseCallParams(msg)
	if perr != nil {
		perr.status = 0
		return perr
	}
	rules, kind := g.cfg.Mapping.Tools, "tool"
	if msg.Method == "prompts/get" {
		rules, kind = g.cfg.Mapping.Prompts, "prompt"
	}
	if p.Name == "" {
		return invalidParams("%s: params.name is required", msg.Method)
	}
	r := rules[p.Name]
	if r == nil {
		return invalidParams("unknown %s %q: %v", kind, p.Name, errNoRule)
	}
	obj, err := r.Check.Resolve(p.Arguments, r.Patterns)
	if err != nil {
		return invalidParams("%s %q: %v", kind, p.Name, err)
	}
	return g.decide(ctx, id, sess, scope, msg, p.Name, r.Scopes, obj, r.Check.Permission)
}

// authorizeResource decides a resources/read or resources/subscribe by its
// URI.
func (g *Gateway) authorizeResource(ctx context.Context, id *Identity, sess, scope string, msg *message) error {
	p, perr := parseCallParams(msg)
	if perr != nil {
		perr.status = 0
		return perr
	}
	if p.URI == "" {
		return invalidParams("%s: params.uri is required", msg.Method)
	}
	r, uriArgs := g.cfg.Mapping.MatchResource(p.URI)
	if r == nil {
		return invalidParams("unknown resource %q: %v", p.URI, errNoRule)
	}
	obj, err := r.Check.Resolve(uriArgs, r.Patterns)
	if err != nil {
		return invalidParams("resource %q: %v", p.URI, err)
	}
	return g.decide(ctx, id, sess, scope, msg, p.URI, r.Scopes, obj, r.Check.Permission)
}

func (g *Gateway) decide(ctx context.Context, id *Identity, sess, scope string, msg *message, name string, scopes []string, obj rel.Object, perm string) error {
	if len(missingScopes(id.Scopes, scopes)) > 0 {
		return insufficientScope(scopes)
	}
	ctx, cancel := context.WithTimeout(ctx, g.cfg.CheckTimeout)
	defer cancel()
	info := callInfo{method: msg.Method, name: name, session: sess}
	dec, err := g.dec.check(ctx, id, scope, checkItem{object: obj, permission: perm, info: info})
	if err != nil {
		g.log.Error("mcp call not decided: refused", "method", msg.Method, "name", name, "error", err)
		return &rpcError{code: CodeUnavailable, message: "the call could not be authorized (Mandate unavailable): refused"}
	}
	if dec.Allowed {
		return nil
	}
	denied := &rpcError{code: CodeDenied, message: fmt.Sprintf("denied by Mandate: %s may not %s %s on behalf of %s (%s)", id.Agent, perm, obj, id.Principal, dec.Reason),
		data: denial{Reason: dec.Reason, Resource: dec.Resource, Permission: dec.Permission, Chain: dec.Chain, ClaimedChain: id.ChainStrings(),
			FailedAt: dec.FailedAt, Missing: dec.Missing, ResolvableByApproval: dec.ResolvableByApproval, Revision: dec.Revision}}
	if dec.Held() {
		if g.redeem(ctx, id, scope, checkItem{object: obj, permission: perm, info: info}, dec) {
			return nil
		}
		return g.held(ctx, id, dec, info, g.elicitationOf(msg, sess), denied)
	}
	return denied
}

// denial is the data of a CodeDenied error.
type denial struct {
	Reason               string   `json:"reason"`
	Resource             string   `json:"resource"`
	Permission           string   `json:"permission"`
	Chain                []string `json:"chain,omitempty"`
	ClaimedChain         []string `json:"claimed_chain"`
	FailedAt             int      `json:"failed_at"`
	Missing              []string `json:"missing_parameters,omitempty"`
	ResolvableByApproval bool     `json:"resolvable_by_approval,omitempty"`
	Revision             string   `json:"revision,omitempty"`
	// Approval is the approval request filed for a held call.
	Approval *approvalData `json:"approval,omitempty"`
}

// listFilter keeps the listed items the caller may use, decided with one
// CheckBulk; items the mapping does not cover are dropped.
func (g *Gateway) listFilter(ctx context.Context, id *Identity) func(method string, result json.RawMessage) (json.RawMessage, error) {
	return func(method string, result json.RawMessage) (json.RawMessage, error) {
		key := listed[method]
		var res map[string]json.RawMessage
		if err := json.Unmarshal(result, &res); err != nil {
			return nil, fmt.Errorf("%s result: %w", method, err)
		}
		var items []json.RawMessage
		if raw, ok := res[key]; ok {
			if err := json.Unmarshal(raw, &items); err != nil {
				return nil, fmt.Errorf("%s result: %s: %w", method, key, err)
			}
		}
		var checks []checkItem
		var index []int
		for i, raw := range items {
			var it struct {
				Name string `json:"name"`
				URI  string `json:"uri"`
			}
			if json.Unmarshal(raw, &it) != nil {
				continue
			}
			var target *Target
			var obj rel.Object
			var scopes []string
			switch key {
			case "tools", "prompts":
				rules := g.cfg.Mapping.Tools
				if key == "prompts" {
					rules = g.cfg.Mapping.Prompts
				}
				r := rules[it.Name]
				if r == nil {
					continue
				}
				target, scopes = r.List, r.Scopes
				var err error
				if obj, err = target.Resolve(nil, nil); err != nil {
					continue
				}
			case "resources":
				r, args := g.cfg.Mapping.MatchResource(it.URI)
				if r == nil {
					continue
				}
				var err error
				if obj, err = r.Check.Resolve(args, r.Patterns); err != nil {
					continue
				}
				target, scopes = &r.Check, r.Scopes
			}
			if len(missingScopes(id.Scopes, scopes)) > 0 {
				continue
			}
			name := it.Name
			if key == "resources" {
				name = it.URI
			}
			checks = append(checks, checkItem{object: obj, permission: target.Permission, info: callInfo{method: method, name: name}})
			index = append(index, i)
		}
		cctx, cancel := context.WithTimeout(ctx, g.cfg.CheckTimeout)
		defer cancel()
		decs, err := g.dec.checkBulk(cctx, id, checks)
		if err != nil {
			return nil, err
		}
		kept := make([]json.RawMessage, 0, len(checks))
		for j, d := range decs {
			if d.Allowed {
				kept = append(kept, items[index[j]])
			}
		}
		b, err := json.Marshal(kept)
		if err != nil {
			return nil, err
		}
		res[key] = b
		// The list is this caller's: no intermediary may serve it to others
		// (revision 2026-07-28 caching; absent would mean public).
		res["cacheScope"] = json.RawMessage(`"private"`)
		return json.Marshal(res)
	}
}
