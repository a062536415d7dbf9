// Package inbox is the approver's web inbox served under /ui/ on the HTTP
// port: the approval requests a signed-in person may decide, approve (for a
// chosen duration, optionally single-use) or deny with a note, live updates
// over Server-Sent Events, the history of decided requests, and "my agents":
// every agent acting for the person, with its direct grants, its capability
// tokens and its approval grants, each revocable with one click.
//
// People sign in with OpenID Connect (authorization code flow with PKCE,
// github.com/coreos/go-oidc) or are named by a trusted authenticating proxy
// in a request header, honoured only from configured source addresses. The
// session lives in an encrypted, authenticated cookie; every form carries a
// CSRF token tied to the session, and no GET changes anything.
//
// The inbox decides nothing itself: approvals go through the approval
// service (which checks whether the person may decide), relationships
// through the operation core (server/op), tokens through the token
// service. Each is a small interface defined here.
package inbox

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"iter"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/server/approval"
	"github.com/mandate-authz/mandate/server/op"
	"github.com/mandate-authz/mandate/store/rel"
)

// Prefix is the path the inbox is served under.
const Prefix = "/ui/"

// Approvals is what the inbox needs of the approval service
// (*approval.Service).
type Approvals interface {
	Get(ctx context.Context, id string) (approval.Request, error)
	List(ctx context.Context, f approval.Filter) ([]approval.Request, error)
	Approve(ctx context.Context, id string, d approval.Decision) (approval.Request, error)
	Deny(ctx context.Context, id string, d approval.Decision) (approval.Request, error)
	Revoke(ctx context.Context, id string, by rel.Object) (approval.Request, error)
	Watch(ctx context.Context, f approval.Filter) iter.Seq2[approval.Request, error]
}

// Relationships is what the inbox needs of the operation core (*op.Core):
// the schema (which types are agents), reading an agent's relationships and
// deleting a delegation link.
type Relationships interface {
	HeadSchema(ctx context.Context) (*schema.Schema, error)
	Read(ctx context.Context, req op.ReadRequest) (op.ReadResult, error)
	DeleteMatching(ctx context.Context, req op.DeleteRequest) (op.DeleteResult, error)
	Begin(ctx context.Context, info op.CallInfo) (context.Context, *op.Call)
}

// OIDC configures sign-in with an OpenID Connect provider.
type OIDC struct {
	// Issuer is the provider's issuer URL (discovery at
	// Issuer/.well-known/openid-configuration).
	Issuer       string
	ClientID     string
	ClientSecret string
	// RedirectURL is this inbox's callback as registered with the
	// provider: https://host/ui/callback.
	RedirectURL string
	// SubjectClaim names the ID token claim that holds the person's id
	// (default "sub").
	SubjectClaim string
	// Scopes requested besides openid (default profile, email).
	Scopes []string
}

// Config configures the inbox. Exactly one of OIDC and TrustedHeader is
// set.
type Config struct {
	OIDC *OIDC
	// TrustedHeader names the request header an authenticating proxy sets
	// to the person's id; it is honoured only from TrustedProxies.
	TrustedHeader  string
	TrustedProxies []netip.Prefix
	// SubjectType is the schema type people are (e.g. user): the person
	// with id X is SubjectType:X.
	SubjectType string
	// SessionKey (32 bytes) encrypts session cookies; nil draws one at
	// start (sessions then end with the process, and replicas behind one
	// address need the same key).
	SessionKey []byte
	// SessionTTL bounds a session (default 8h).
	SessionTTL time.Duration
	// SecureCookies marks cookies Secure; set it when the inbox is served
	// over TLS, directly or by a proxy.
	SecureCookies bool
	// MaxGrantDuration is the longest grant an approver may choose (the
	// approval service's maximum); DefaultGrantDuration its default.
	MaxGrantDuration     time.Duration
	DefaultGrantDuration time.Duration
	// Log receives what an operator must see; never secrets.
	Log *slog.Logger
}

// Deps are the services the inbox is a facade over. Approvals and Tokens
// may be nil: the pages then say that those are not served. Revocations
// is needed with Tokens.
type Deps struct {
	Core        Relationships
	Approvals   Approvals
	Tokens      Tokens
	Revocations Revocations
}

// Defaults.
const (
	DefaultSessionTTL   = 8 * time.Hour
	DefaultSubjectClaim = "sub"
)

// Validate checks the configuration and names the field at fault.
func (c *Config) Validate() error {
	switch {
	case c.OIDC == nil && c.TrustedHeader == "":
		return errors.New("inbox: set an OIDC issuer (--ui-oidc-issuer) or a trusted header (--ui-trusted-header)")
	case c.OIDC != nil && c.TrustedHeader != "":
		return errors.New("inbox: --ui-oidc-issuer and --ui-trusted-header exclude each other: choose one way to sign in")
	}
	if c.SubjectType == "" {
		return errors.New("inbox: --ui-subject-type is required: the schema type people are (e.g. user)")
	}
	if err := rel.ValidateObject(rel.Object{Type: c.SubjectType, ID: "x"}); err != nil {
		return fmt.Errorf("inbox: --ui-subject-type %q: %w", c.SubjectType, err)
	}
	if c.TrustedHeader != "" {
		if len(c.TrustedProxies) == 0 {
			return errors.New("inbox: --ui-trusted-header needs --ui-trusted-proxies: the proxy addresses (CIDR) it is honoured from")
		}
		if http.CanonicalHeaderKey(c.TrustedHeader) == "" || strings.ContainsAny(c.TrustedHeader, " :\t") {
			return fmt.Errorf("inbox: --ui-trusted-header %q: expected an HTTP header name", c.TrustedHeader)
		}
	}
	if o := c.OIDC; o != nil {
		if err := o.validate(); err != nil {
			return err
		}
	}
	if c.SessionKey != nil && len(c.SessionKey) != 32 {
		return fmt.Errorf("inbox: the session key is %d bytes, expected 32", len(c.SessionKey))
	}
	if c.MaxGrantDuration < 0 || c.DefaultGrantDuration < 0 || c.SessionTTL < 0 {
		return errors.New("inbox: durations must not be negative")
	}
	return nil
}

// ParseProxies parses a comma-separated list of CIDRs or addresses.
func ParseProxies(list string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range strings.Split(list, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("--ui-trusted-proxies %q: expected a CIDR (10.0.0.0/8) or an address", s)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Inbox serves the web inbox. Mount Handler under Prefix.
type Inbox struct {
	cfg     Config
	deps    Deps
	log     *slog.Logger
	cookies *sealer
	oidc    *oidcClient
	pages   *template.Template
	mux     *http.ServeMux
}

// New builds the inbox. OIDC discovery happens at the first sign-in, so a
// provider that is briefly down does not stop the server.
func New(cfg Config, deps Deps) (*Inbox, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Core == nil {
		return nil, errors.New("inbox: the operation core is required")
	}
	if deps.Tokens != nil && deps.Revocations == nil {
		return nil, errors.New("inbox: listing tokens needs the revocations in force")
	}
	if cfg.SessionTTL == 0 {
		cfg.SessionTTL = DefaultSessionTTL
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	sealer, err := newSealer(cfg.SessionKey)
	if err != nil {
		return nil, err
	}
	pages, err := template.New("").Funcs(funcs).ParseFS(templateFS, "templates/*.html")
	if err != nil {
		return nil, fmt.Errorf("inbox: parsing templates: %w", err)
	}
	in := &Inbox{cfg: cfg, deps: deps, log: log, cookies: sealer, pages: pages}
	if cfg.OIDC != nil {
		in.oidc = newOIDCClient(*cfg.OIDC)
	}
	in.routes()
	return in, nil
}

// Handler serves every path under Prefix.
func (in *Inbox) Handler() http.Handler { return in.mux }

func (in *Inbox) routes() {
	m := http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static")
	m.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", cacheStatic(http.FileServerFS(static))))
	m.HandleFunc("GET /ui/login", in.login)
	m.HandleFunc("GET /ui/callback", in.callback)
	m.HandleFunc("POST /ui/logout", in.person(in.csrf(in.logout)))
	m.HandleFunc("GET /ui/{$}", in.person(in.inboxPage))
	m.HandleFunc("GET /ui/history", in.person(in.historyPage))
	m.HandleFunc("GET /ui/agents", in.person(in.agentsPage))
	m.HandleFunc("GET /ui/requests/{id}", in.person(in.requestPage))
	m.HandleFunc("GET /ui/events", in.person(in.events))
	m.HandleFunc("POST /ui/requests/{id}/approve", in.person(in.csrf(in.approve)))
	m.HandleFunc("POST /ui/requests/{id}/deny", in.person(in.csrf(in.deny)))
	m.HandleFunc("POST /ui/grants/{id}/revoke", in.person(in.csrf(in.revokeGrant)))
	m.HandleFunc("POST /ui/tokens/{id}/revoke", in.person(in.csrf(in.revokeToken)))
	m.HandleFunc("POST /ui/agents/unlink", in.person(in.csrf(in.unlink)))
	in.mux = m
}

func cacheStatic(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=300")
		h.ServeHTTP(w, r)
	})
}
