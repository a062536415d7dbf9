package inbox

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Cookie names. The __Host- prefix (Secure, Path=/, no Domain) is used
// when cookies are Secure, so no sibling host can set them.
const (
	sessionCookie = "mandate_ui"
	loginCookie   = "mandate_ui_login"
)

// session is what the session cookie holds, encrypted.
type session struct {
	// Subject is the person's id (of Config.SubjectType).
	Subject string `json:"sub"`
	// CSRF is the token every form of this session must carry.
	CSRF string `json:"csrf"`
	// Via is how the person signed in: oidc or header.
	Via     string    `json:"via"`
	Expires time.Time `json:"exp"`
}

// login is what the login cookie holds between the redirect to the
// provider and the callback.
type login struct {
	State    string    `json:"state"`
	Nonce    string    `json:"nonce"`
	Verifier string    `json:"verifier"`
	Return   string    `json:"return"`
	Expires  time.Time `json:"exp"`
}

// sealer encrypts and authenticates cookie values (AES-256-GCM); the
// cookie's name is the additional data, so a value cannot be moved from
// one cookie to another.
type sealer struct {
	aead cipher.AEAD
}

func newSealer(key []byte) (*sealer, error) {
	if key == nil {
		key = make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, fmt.Errorf("inbox: drawing a session key: %w", err)
		}
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("inbox: session key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("inbox: session key: %w", err)
	}
	return &sealer{aead: aead}, nil
}

func (s *sealer) seal(name string, v any) (string, error) {
	plain, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(s.aead.Seal(nonce, nonce, plain, []byte(name))), nil
}

var errBadCookie = errors.New("cookie is not valid")

func (s *sealer) open(name, value string, v any) error {
	raw, err := base64.RawURLEncoding.DecodeString(value)
	if err != nil || len(raw) < s.aead.NonceSize() {
		return errBadCookie
	}
	plain, err := s.aead.Open(nil, raw[:s.aead.NonceSize()], raw[s.aead.NonceSize():], []byte(name))
	if err != nil {
		return errBadCookie
	}
	if json.Unmarshal(plain, v) != nil {
		return errBadCookie
	}
	return nil
}

func (in *Inbox) cookieName(base string) string {
	if in.cfg.SecureCookies {
		return "__Host-" + base
	}
	return base
}

func (in *Inbox) setCookie(w http.ResponseWriter, base string, v any, ttl time.Duration) error {
	name := in.cookieName(base)
	val, err := in.cookies.seal(name, v)
	if err != nil {
		return err
	}
	http.SetCookie(w, &http.Cookie{
		Name: name, Value: val, Path: "/", MaxAge: int(ttl / time.Second),
		HttpOnly: true, Secure: in.cfg.SecureCookies, SameSite: http.SameSiteLaxMode,
	})
	return nil
}

func (in *Inbox) clearCookie(w http.ResponseWriter, base string) {
	http.SetCookie(w, &http.Cookie{
		Name: in.cookieName(base), Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, Secure: in.cfg.SecureCookies, SameSite: http.SameSiteLaxMode,
	})
}

func (in *Inbox) readCookie(r *http.Request, base string, v any) error {
	name := in.cookieName(base)
	c, err := r.Cookie(name)
	if err != nil {
		return err
	}
	return in.cookies.open(name, c.Value, v)
}

func (in *Inbox) newSession(subject, via string) session {
	return session{Subject: subject, CSRF: randomString(), Via: via, Expires: time.Now().Add(in.cfg.SessionTTL)}
}

// randomString is 32 random bytes, URL-safe.
func randomString() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic("inbox: the system's random source failed: " + err.Error())
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func equalTokens(a, b string) bool {
	return a != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}
