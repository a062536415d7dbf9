package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/server/inbox/oidctest"
)

// TestServeUIFlagsRefused: bad --ui-* flags are refused with the flag's
// name before anything starts, and leave nothing behind.
func TestServeUIFlagsRefused(t *testing.T) {
	secretFile := filepath.Join(t.TempDir(), "secret")
	shortKey := filepath.Join(t.TempDir(), "key")
	os.WriteFile(shortKey, []byte("abcd"), 0o600)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--ui-trusted-header", "X-Forwarded-User"}, "--ui-trusted-proxies"},
		{[]string{"--ui-trusted-header", "X-Forwarded-User", "--ui-trusted-proxies", "proxy.local"}, `--ui-trusted-proxies "proxy.local"`},
		{[]string{"--ui-trusted-proxies", "127.0.0.1"}, "--ui-trusted-proxies is set but the web inbox is off"},
		{[]string{"--ui-oidc-issuer", "https://idp.example.com", "--ui-oidc-redirect-url", "https://m.example.com/ui/callback"}, "--ui-oidc-client-id is required"},
		{[]string{"--ui-oidc-issuer", "https://idp.example.com", "--ui-oidc-client-id", "c"}, "--ui-oidc-redirect-url"},
		{[]string{"--ui-oidc-issuer", "idp", "--ui-oidc-client-id", "c"}, "--ui-oidc-issuer"},
		{[]string{"--ui-oidc-issuer", "https://idp.example.com", "--ui-oidc-client-id", "c", "--ui-oidc-redirect-url", "https://m.example.com/ui/callback",
			"--ui-oidc-client-secret-file", secretFile}, "--ui-oidc-client-secret-file"},
		{[]string{"--ui-oidc-issuer", "https://idp.example.com", "--ui-trusted-header", "X-User", "--ui-trusted-proxies", "127.0.0.1"}, "exclude each other"},
		{[]string{"--ui-trusted-header", "X-User", "--ui-trusted-proxies", "127.0.0.1", "--ui-subject-type", ""}, "--ui-subject-type"},
		{[]string{"--ui-trusted-header", "X-User", "--ui-trusted-proxies", "127.0.0.1", "--ui-session-key-file", shortKey}, "expected 32 bytes"},
		{[]string{"--ui-trusted-header", "X-User", "--ui-trusted-proxies", "127.0.0.1", "--http-addr", ""}, "--http-addr must not be empty"},
	} {
		dir := t.TempDir()
		t.Chdir(dir)
		root := newRootCommand()
		root.SetArgs(append([]string{"serve", "--grpc-preshared-key", "k"}, c.args...))
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		err := root.ExecuteContext(context.Background())
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("serve %v: %v, want an error mentioning %q", c.args, err, c.want)
		}
		emptyDir(t, "serve "+strings.Join(c.args, " "), dir)
	}
}

// serveUI runs serve on the memory store with HTTP and the given flags; it
// returns the HTTP base URL and the logs.
func serveUI(t *testing.T, flags ...string) (string, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	root := newRootCommand()
	root.SetArgs(append([]string{"serve", "--datastore-engine", "memory", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--data-dir", t.TempDir(), "--grpc-preshared-key", "k", "--audit-sink", "none", "--grpc-shutdown-grace-period", "2s"}, flags...))
	root.SetOut(logs)
	root.SetErr(logs)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("serve did not stop within 15s")
		}
	})
	serving := regexp.MustCompile(`msg=serving grpc=\S+ http=(\S+)`)
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if m := serving.FindStringSubmatch(logs.String()); m != nil {
			return "http://" + m[1], logs
		}
		select {
		case err := <-done:
			t.Fatalf("serve stopped: %v; log:\n%s", err, logs.String())
		default:
		}
	}
	t.Fatalf("serve did not start; log:\n%s", logs.String())
	return "", nil
}

func get(t *testing.T, c *http.Client, url string, header ...string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestServeUITrustedHeader: serve with --ui-trusted-header serves the inbox
// to the person the header names, from the trusted proxy only; without the
// flags there is no /ui/.
func TestServeUITrustedHeader(t *testing.T) {
	base, _ := serveUI(t, "--ui-trusted-header", "X-Forwarded-User", "--ui-trusted-proxies", "127.0.0.1")
	if code, body := get(t, http.DefaultClient, base+"/ui/agents", "X-Forwarded-User", "alice"); code != http.StatusOK || !strings.Contains(body, `title="Signed in as user:alice"`) {
		t.Fatalf("/ui/agents as alice: %d\n%s", code, body)
	}
	if code, _ := get(t, http.DefaultClient, base+"/ui/"); code != http.StatusUnauthorized {
		t.Fatalf("/ui/ without the header: %d", code)
	}
	if code, _ := get(t, http.DefaultClient, base+"/ui/static/app.css"); code != http.StatusOK {
		t.Fatalf("the stylesheet: %d", code)
	}

	off, _ := serveUI(t)
	if code, _ := get(t, http.DefaultClient, off+"/ui/", "X-Forwarded-User", "alice"); code != http.StatusNotFound {
		t.Fatalf("/ui/ without --ui-* flags: %d, want 404", code)
	}
}

// TestServeUIOIDC: with --ui-oidc-* the inbox sends people to the provider
// with PKCE, and the client secret, given in the environment, is never
// logged.
func TestServeUIOIDC(t *testing.T) {
	const secret = "client-secret-7c1e5d"
	idp, err := oidctest.Start(oidctest.Config{ClientID: "mandate-ui", ClientSecret: secret, RedirectURL: "http://127.0.0.1:1/ui/callback"})
	if err != nil {
		t.Fatal(err)
	}
	defer idp.Close()
	t.Setenv("MANDATE_UI_OIDC_CLIENT_SECRET", secret)
	base, logs := serveUI(t, "--ui-oidc-issuer", idp.URL, "--ui-oidc-client-id", "mandate-ui", "--ui-oidc-redirect-url", "http://127.0.0.1:1/ui/callback", "--log-level", "debug")
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noRedirect.Get(base + "/ui/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/login?return=%2Fui%2F" {
		t.Fatalf("/ui/ signed out: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	resp, err = noRedirect.Get(base + "/ui/login")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if !strings.HasPrefix(loc, idp.URL+"/authorize?") || !strings.Contains(loc, "code_challenge_method=S256") || !strings.Contains(loc, "client_id=mandate-ui") {
		t.Fatalf("sign-in goes to %q", loc)
	}
	if strings.Contains(logs.String(), secret) {
		t.Fatalf("the client secret is in the log:\n%s", logs.String())
	}
}
