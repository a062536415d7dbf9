package main

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/mandate-authz/mandate/server/inbox"
)

// uiOptions are serve's --ui-* flags: the web inbox under /ui/.
type uiOptions struct {
	oidcIssuer, oidcClientID, oidcSecret, oidcSecretFile string
	oidcSubjectClaim, oidcRedirectURL                    string
	trustedHeader, trustedProxies                        string
	subjectType                                          string
	secureCookies                                        bool
	sessionKeyFile                                       string
	sessionTTL                                           time.Duration
}

func addUIFlags(f *pflag.FlagSet, o *uiOptions) {
	f.StringVar(&o.oidcIssuer, "ui-oidc-issuer", "", "serve the web inbox under /ui/ on the HTTP listener, people signing in with this OpenID Connect provider (authorization code flow with PKCE); needs --ui-oidc-client-id and --ui-oidc-redirect-url")
	f.StringVar(&o.oidcClientID, "ui-oidc-client-id", "", "the inbox's client id at the OpenID provider")
	f.StringVar(&o.oidcSecret, "ui-oidc-client-secret", "", "the inbox's client secret (prefer MANDATE_UI_OIDC_CLIENT_SECRET or --ui-oidc-client-secret-file: the command line is visible to other users)")
	f.StringVar(&o.oidcSecretFile, "ui-oidc-client-secret-file", "", "file holding the inbox's client secret")
	f.StringVar(&o.oidcSubjectClaim, "ui-oidc-subject-claim", inbox.DefaultSubjectClaim, "ID token claim naming the person: user X is --ui-subject-type:X")
	f.StringVar(&o.oidcRedirectURL, "ui-oidc-redirect-url", "", "the inbox's callback as registered at the provider: https://HOST/ui/callback")
	f.StringVar(&o.trustedHeader, "ui-trusted-header", "", "serve the web inbox under /ui/ behind an authenticating proxy that names the person in this request header (e.g. X-Forwarded-User); honoured only from --ui-trusted-proxies")
	f.StringVar(&o.trustedProxies, "ui-trusted-proxies", "", "comma-separated addresses or CIDRs of the proxies whose --ui-trusted-header is believed (e.g. 10.0.0.5,127.0.0.1/32)")
	f.StringVar(&o.subjectType, "ui-subject-type", "user", "the schema type people are: the person signed in as X approves as TYPE:X")
	f.BoolVar(&o.secureCookies, "ui-secure-cookies", false, "mark the inbox's cookies Secure (automatic with --http-tls-cert-path; set it when a TLS proxy is in front)")
	f.StringVar(&o.sessionKeyFile, "ui-session-key-file", "", "file holding the 32-byte key (hex or base64) that encrypts session cookies; share it between replicas. Default: a key drawn at start (sessions end with the process)")
	f.DurationVar(&o.sessionTTL, "ui-session-ttl", inbox.DefaultSessionTTL, "how long an inbox session lasts")
}

// enabled reports whether any way of signing in to the inbox is set.
func (o *uiOptions) enabled() bool { return o.oidcIssuer != "" || o.trustedHeader != "" }

// config validates the --ui-* flags and builds the inbox's configuration;
// nil when the inbox is off. Secrets are read here and never echoed.
func (o *uiOptions) config(httpAddr string) (*inbox.Config, error) {
	if !o.enabled() {
		for name, v := range map[string]string{"--ui-oidc-client-id": o.oidcClientID, "--ui-oidc-client-secret": o.oidcSecret,
			"--ui-oidc-client-secret-file": o.oidcSecretFile, "--ui-oidc-redirect-url": o.oidcRedirectURL, "--ui-trusted-proxies": o.trustedProxies,
			"--ui-session-key-file": o.sessionKeyFile} {
			if v != "" {
				return nil, fmt.Errorf("%s is set but the web inbox is off: add --ui-oidc-issuer or --ui-trusted-header", name)
			}
		}
		return nil, nil
	}
	if httpAddr == "" {
		return nil, errors.New("the web inbox is served on the HTTP listener: --http-addr must not be empty")
	}
	cfg := &inbox.Config{SubjectType: o.subjectType, SecureCookies: o.secureCookies, SessionTTL: o.sessionTTL}
	if o.sessionTTL <= 0 {
		return nil, fmt.Errorf("--ui-session-ttl %v: expected a positive duration", o.sessionTTL)
	}
	if o.oidcIssuer != "" {
		secret := o.oidcSecret
		if o.oidcSecretFile != "" {
			if secret != "" {
				return nil, errors.New("--ui-oidc-client-secret and --ui-oidc-client-secret-file exclude each other")
			}
			b, err := os.ReadFile(o.oidcSecretFile)
			if err != nil {
				return nil, fmt.Errorf("--ui-oidc-client-secret-file: %w", err)
			}
			secret = strings.TrimSpace(string(b))
		}
		cfg.OIDC = &inbox.OIDC{Issuer: o.oidcIssuer, ClientID: o.oidcClientID, ClientSecret: secret, RedirectURL: o.oidcRedirectURL, SubjectClaim: o.oidcSubjectClaim}
		if o.oidcSubjectClaim == "" {
			return nil, errors.New("--ui-oidc-subject-claim is empty: name the ID token claim that holds the person's id (default sub)")
		}
	}
	if o.trustedHeader != "" {
		cfg.TrustedHeader = o.trustedHeader
		proxies, err := inbox.ParseProxies(o.trustedProxies)
		if err != nil {
			return nil, err
		}
		cfg.TrustedProxies = proxies
	}
	if o.sessionKeyFile != "" {
		key, err := readSessionKey(o.sessionKeyFile)
		if err != nil {
			return nil, err
		}
		cfg.SessionKey = key
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// readSessionKey reads a 32-byte key written as hex or base64.
func readSessionKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--ui-session-key-file: %w", err)
	}
	text := strings.TrimSpace(string(b))
	for _, decode := range []func(string) ([]byte, error){hex.DecodeString, base64.StdEncoding.DecodeString, base64.RawURLEncoding.DecodeString} {
		if key, err := decode(text); err == nil && len(key) == 32 {
			return key, nil
		}
	}
	return nil, fmt.Errorf("--ui-session-key-file %s: expected 32 bytes written as hex (64 characters) or base64, e.g. from: openssl rand -hex 32", path)
}
