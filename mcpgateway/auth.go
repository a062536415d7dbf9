package mcpgateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"

	"github.com/mandate-authz/mandate/store/rel"
)

// maxActDepth bounds the nested act claims read from a token: Mandate
// follows at most 8 acts_for links by default, so a longer claimed chain
// could never match.
const maxActDepth = 8

// Identity is who a verified token says is calling.
type Identity struct {
	// Principal is the person the token was issued for (sub).
	Principal rel.Object
	// Agent is the client presenting the token (client_id or azp).
	Agent rel.Object
	// Chain is the claimed delegation chain, from Agent through the actors
	// of nested act claims to Principal. The claim grants nothing: every
	// decision requires Mandate's live chain to be exactly this.
	Chain []rel.Object
	// Scopes are the token's scope claim, split.
	Scopes []string
	// TokenID is the jti claim, if any.
	TokenID string
	// tokenHash keys per-token state (the cache without a session); it is
	// a digest, never the token.
	tokenHash string
	expiry    time.Time
	// capability is the request's Mandate capability token ("" for none):
	// a bearer credential, passed to Mandate's checks and never logged.
	capability string
}

// key identifies the identity for binding sessions: the same person,
// client and chain.
func (id *Identity) key() string {
	var b strings.Builder
	for _, o := range id.Chain {
		b.WriteString(o.String())
		b.WriteByte('|')
	}
	return b.String()
}

// ChainStrings renders the claimed chain.
func (id *Identity) ChainStrings() []string {
	out := make([]string, len(id.Chain))
	for i, o := range id.Chain {
		out[i] = o.String()
	}
	return out
}

// authError is a refused token: status 401 (code invalid_token, or none
// when no token was sent) or 403 (insufficient_scope).
type authError struct {
	status      int
	code        string
	description string
	scope       []string
}

func (e *authError) Error() string { return e.description }

// authenticator verifies access tokens as the MCP authorization spec asks
// of a resource server.
type authenticator struct {
	verifier *oidc.IDTokenVerifier
	resource string
	skew     time.Duration
	mapping  *Mapping
	now      func() time.Time

	// verified caches the identities of tokens already verified, keyed by
	// the token's digest, so that a session's every request does not
	// verify the same signature again. An entry lives until the token's
	// exp; go-oidc does not notice a key withdrawn from the JWKS either.
	mu       sync.Mutex
	verified map[string]*Identity
}

// maxVerifiedTokens bounds the verified-token cache.
const maxVerifiedTokens = 10_000

// signingAlgs are the JWS algorithms accepted; "none" and HMAC never are.
var signingAlgs = []string{
	oidc.RS256, oidc.RS384, oidc.RS512, oidc.ES256, oidc.ES384, oidc.ES512,
	oidc.PS256, oidc.PS384, oidc.PS512, oidc.EdDSA,
}

// newAuthenticator discovers the issuer (OpenID Connect discovery) and
// verifies signatures with its JWKS. go-oidc refetches the key set when a
// token names a key ID it does not know, which is how rotation reaches the
// gateway without a restart.
func newAuthenticator(ctx context.Context, cfg *Config) (*authenticator, error) {
	if cfg.HTTPClient != nil {
		ctx = oidc.ClientContext(ctx, cfg.HTTPClient)
	}
	provider, err := oidc.NewProvider(ctx, cfg.Issuer)
	if err != nil {
		return nil, fmt.Errorf("issuer %s: OpenID Connect discovery: %w", cfg.Issuer, err)
	}
	v := provider.VerifierContext(ctx, &oidc.Config{
		ClientID:             cfg.Resource,
		SupportedSigningAlgs: signingAlgs,
		// exp and nbf are checked below with the configured skew: go-oidc
		// allows no skew on exp and five minutes on nbf.
		SkipExpiryCheck: true,
	})
	return &authenticator{verifier: v, resource: cfg.Resource, skew: cfg.ClockSkew, mapping: cfg.Mapping, now: time.Now, verified: map[string]*Identity{}}, nil
}

// tokenClaims are the claims the gateway reads beyond go-oidc's.
type tokenClaims struct {
	Subject  string          `json:"sub"`
	ClientID string          `json:"client_id"`
	AZP      string          `json:"azp"`
	Scope    string          `json:"scope"`
	JTI      string          `json:"jti"`
	NBF      json.Number     `json:"nbf"`
	Act      json.RawMessage `json:"act"`
}

type actClaim struct {
	Subject string          `json:"sub"`
	Act     json.RawMessage `json:"act"`
}

func invalidToken(format string, args ...any) *authError {
	return &authError{status: http.StatusUnauthorized, code: "invalid_token", description: fmt.Sprintf(format, args...)}
}

// authenticate verifies the request's bearer token and reads the identity
// it carries.
func (a *authenticator) authenticate(ctx context.Context, r *http.Request) (*Identity, error) {
	hs := r.Header.Values("Authorization")
	if len(hs) == 0 {
		return nil, &authError{status: http.StatusUnauthorized, description: "no bearer token: send Authorization: Bearer <access token>"}
	}
	scheme, raw, ok := strings.Cut(hs[0], " ")
	if len(hs) > 1 || !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(raw) == "" || strings.ContainsAny(strings.TrimSpace(raw), " \t") {
		return nil, invalidToken("expected exactly one Authorization: Bearer <access token> header")
	}
	raw = strings.TrimSpace(raw)
	sum := sha256.Sum256([]byte(raw))
	digest := hex.EncodeToString(sum[:16])
	a.mu.Lock()
	id := a.verified[digest]
	a.mu.Unlock()
	if id != nil {
		if a.now().After(id.expiry.Add(a.skew)) {
			return nil, invalidToken("the token expired at %s", id.expiry.UTC().Format(time.RFC3339))
		}
		return id, a.checkScopes(id)
	}
	id, err := a.verify(ctx, raw)
	if err != nil {
		return nil, err
	}
	id.tokenHash = digest
	a.mu.Lock()
	if len(a.verified) >= maxVerifiedTokens {
		clear(a.verified)
	}
	a.verified[digest] = id
	a.mu.Unlock()
	return id, a.checkScopes(id)
}

func (a *authenticator) checkScopes(id *Identity) error {
	if missing := missingScopes(id.Scopes, a.mapping.Scopes); len(missing) > 0 {
		return insufficientScope(a.mapping.Scopes)
	}
	return nil
}

// verify checks a token's signature, issuer, audience and times, and
// reads its identity.
func (a *authenticator) verify(ctx context.Context, raw string) (*Identity, error) {
	tok, err := a.verifier.Verify(ctx, raw)
	if err != nil {
		return nil, invalidToken("%s", describeVerifyError(err, a.resource))
	}
	now := a.now()
	if tok.Expiry.IsZero() {
		return nil, invalidToken("the token has no exp claim")
	}
	if now.After(tok.Expiry.Add(a.skew)) {
		return nil, invalidToken("the token expired at %s", tok.Expiry.UTC().Format(time.RFC3339))
	}
	var c tokenClaims
	if err := tok.Claims(&c); err != nil {
		return nil, invalidToken("unreadable claims: %v", err)
	}
	if c.NBF != "" {
		nbf, err := c.NBF.Float64()
		if err != nil {
			return nil, invalidToken("nbf is not a number")
		}
		if t := time.Unix(int64(nbf), 0); now.Add(a.skew).Before(t) {
			return nil, invalidToken("the token is not valid before %s", t.UTC().Format(time.RFC3339))
		}
	}
	id, err := a.identity(&c)
	if err != nil {
		return nil, err
	}
	id.expiry = tok.Expiry
	return id, nil
}

func insufficientScope(want []string) *authError {
	return &authError{status: http.StatusForbidden, code: "insufficient_scope", scope: want,
		description: "the token lacks scope " + strings.Join(want, " ")}
}

func missingScopes(have, want []string) []string {
	var out []string
	for _, s := range want {
		if !slices.Contains(have, s) {
			out = append(out, s)
		}
	}
	return out
}

// describeVerifyError names what failed without echoing the token.
func describeVerifyError(err error, resource string) string {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "expected audience"):
		return fmt.Sprintf("the token's audience (aud) is not this resource %s (RFC 8707)", resource)
	case strings.Contains(msg, "id token issued by a different provider"):
		return "the token's issuer (iss) is not this gateway's issuer"
	case strings.Contains(msg, "failed to verify signature"):
		return "the token's signature does not verify with the issuer's keys"
	case strings.Contains(msg, "malformed jwt"):
		return "the token is not a JWT"
	}
	return "the token does not verify"
}

// identity maps the claims onto Mandate subjects: sub is the principal,
// the client the agent, and nested act claims (RFC 8693, the outermost
// actor first) the agents in between. An outermost actor equal to the
// client is the client itself and is not repeated.
func (a *authenticator) identity(c *tokenClaims) (*Identity, error) {
	client := c.ClientID
	if client == "" {
		client = c.AZP
	}
	if c.Subject == "" {
		return nil, invalidToken("the token has no sub claim")
	}
	if client == "" {
		return nil, invalidToken("the token names no client (client_id or azp): the client is the agent checked")
	}
	principal := rel.Object{Type: a.mapping.PrincipalType, ID: c.Subject}
	agent := rel.Object{Type: a.mapping.AgentType, ID: client}
	for _, o := range []rel.Object{principal, agent} {
		if err := rel.ValidateObject(o); err != nil {
			return nil, invalidToken("%s is not a valid Mandate subject: %v", o.Type, err)
		}
	}
	chain := []rel.Object{agent}
	next := c.Act
	for depth := 0; len(next) > 0 && string(next) != "null"; depth++ {
		if depth == maxActDepth {
			return nil, invalidToken("the act claim nests deeper than %d actors", maxActDepth)
		}
		var act actClaim
		if err := json.Unmarshal(next, &act); err != nil || act.Subject == "" {
			return nil, invalidToken("act: expected {\"sub\": actor, \"act\": ...} (RFC 8693)")
		}
		o := rel.Object{Type: a.mapping.AgentType, ID: act.Subject}
		if err := rel.ValidateObject(o); err != nil {
			return nil, invalidToken("act.sub %q is not a valid agent ID: %v", act.Subject, err)
		}
		if !(depth == 0 && o == agent) {
			if slices.Contains(chain, o) {
				return nil, invalidToken("the act claim names %s twice", o)
			}
			chain = append(chain, o)
		}
		next = act.Act
	}
	chain = append(chain, principal)
	var sc []string
	if c.Scope != "" {
		sc = strings.Fields(c.Scope)
	}
	return &Identity{Principal: principal, Agent: agent, Chain: chain, Scopes: sc, TokenID: c.JTI}, nil
}

// metadataURL is where RFC 9728 puts a resource's metadata: the
// well-known prefix inserted before the resource's path.
func metadataURL(resource string) (full, path string, err error) {
	u, err := url.Parse(resource)
	if err != nil || u.Scheme == "" || u.Host == "" || u.Fragment != "" || u.RawQuery != "" {
		return "", "", fmt.Errorf("resource %q: expected an absolute URI without query or fragment (RFC 8707)", resource)
	}
	path = "/.well-known/oauth-protected-resource" + strings.TrimSuffix(u.EscapedPath(), "/")
	return u.Scheme + "://" + u.Host + path, path, nil
}

// challenge renders the WWW-Authenticate header of a refusal (RFC 6750 and
// RFC 9728 section 5.1).
func (e *authError) challenge(metadata string) string {
	params := []string{}
	if e.code != "" {
		params = append(params, fmt.Sprintf("error=%q", e.code), fmt.Sprintf("error_description=%q", quotable(e.description)))
	}
	if len(e.scope) > 0 {
		params = append(params, fmt.Sprintf("scope=%q", strings.Join(e.scope, " ")))
	}
	params = append(params, fmt.Sprintf("resource_metadata=%q", metadata))
	return "Bearer " + strings.Join(params, ", ")
}

// quotable keeps a description inside RFC 6750's allowed characters.
func quotable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e || r == '"' || r == '\\' {
			return '\''
		}
		return r
	}, s)
}
