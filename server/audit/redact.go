package audit

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Redactor replaces the values of configured context keys with keyed
// hashes before an event is written.
//
// The hash is HMAC-SHA-256 under a secret kept outside the trail, not a
// (salted) SHA-256: task context values are often guessable (an amount, an
// email, a ticket number), and an unkeyed hash of a guessable value is
// reversed by hashing the guesses; a per-record salt would stop that only by
// also stopping investigators from correlating equal values across records.
// With an HMAC, equal values give equal digests (so "every event of task
// T-17" is still a query) while only holders of the secret can test a guess.
// The digest is "hmac-sha256:<key id>:<first 128 bits, hex>"; the key id (a
// hash of the secret) says which secret to test against after a rotation.
type Redactor struct {
	keys   map[string]bool
	secret []byte
	keyID  string
}

// SecretSize is the size of a generated redaction secret.
const SecretSize = 32

// NewRedactor redacts the values of keys, at any depth of a context, with
// secret. With no keys it redacts nothing and needs no secret.
func NewRedactor(keys []string, secret []byte) (*Redactor, error) {
	r := &Redactor{keys: map[string]bool{}}
	for i, k := range keys {
		k = strings.TrimSpace(k)
		if k == "" {
			return nil, fmt.Errorf("redaction key %d of %d is empty", i+1, len(keys))
		}
		r.keys[k] = true
	}
	if len(r.keys) == 0 {
		return r, nil
	}
	if len(secret) < 16 {
		return nil, fmt.Errorf("redaction secret: %d bytes, at least 16 are required", len(secret))
	}
	r.secret = append([]byte(nil), secret...)
	id := sha256.Sum256(append([]byte("mandate-audit-redaction-key:"), secret...))
	r.keyID = hex.EncodeToString(id[:4])
	return r, nil
}

// LoadOrCreateSecret reads a redaction secret from path, creating the file
// with SecretSize random bytes (mode 0600) when it does not exist.
func LoadOrCreateSecret(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		if len(b) < 16 {
			return nil, fmt.Errorf("audit redaction secret %s: %d bytes, at least 16 are required", path, len(b))
		}
		return b, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading the audit redaction secret: %w", err)
	}
	secret := make([]byte, SecretSize)
	if _, err := rand.Read(secret); err != nil {
		return nil, fmt.Errorf("drawing an audit redaction secret: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("creating the directory of the audit redaction secret: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("creating the audit redaction secret: %w", err)
	}
	if _, err := f.Write(secret); err != nil {
		f.Close()
		return nil, fmt.Errorf("writing the audit redaction secret %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("writing the audit redaction secret %s: %w", path, err)
	}
	return secret, nil
}

// Active reports whether the redactor redacts anything.
func (r *Redactor) Active() bool { return r != nil && len(r.keys) > 0 }

// Apply returns ctx with the values of redacted keys replaced, at any depth.
// It copies what it changes and never modifies ctx.
func (r *Redactor) Apply(ctx map[string]any) map[string]any {
	if !r.Active() || len(ctx) == 0 {
		return ctx
	}
	out, _ := r.apply(ctx).(map[string]any)
	return out
}

func (r *Redactor) apply(v any) any {
	switch x := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, val := range x {
			if r.keys[k] {
				out[k] = r.Digest(val)
			} else {
				out[k] = r.apply(val)
			}
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, val := range x {
			out[i] = r.apply(val)
		}
		return out
	}
	return v
}

// Digest returns the redacted form of a value: the HMAC of its JSON
// encoding (map keys sorted, so equal values give equal digests).
func (r *Redactor) Digest(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		b = fmt.Appendf(nil, "%v", v)
	}
	m := hmac.New(sha256.New, r.secret)
	m.Write(b)
	return "hmac-sha256:" + r.keyID + ":" + hex.EncodeToString(m.Sum(nil)[:16])
}
