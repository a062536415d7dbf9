package apikey

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"
	"golang.org/x/time/rate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// keyPrefix starts every generated key, so a leaked one is recognisable
// (secret scanners, logs) as Mandate's.
const keyPrefix = "mandate_"

// Generate returns a new random key and the hash the keys file stores.
func Generate() (key, hash string, err error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", fmt.Errorf("generating a key: %w", err)
	}
	key = keyPrefix + base64.RawURLEncoding.EncodeToString(b[:])
	return key, Hash(key), nil
}

// Hash is the form a key is stored in: "sha256:" and the hex SHA-256 of
// the key. Generated keys carry 256 random bits, so an unsalted fast hash
// cannot be reversed by guessing.
func Hash(key string) string {
	sum := sha256.Sum256([]byte(key))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// fileKey is one entry of the keys file.
type fileKey struct {
	Name   string   `yaml:"name"`
	Hash   string   `yaml:"hash"`
	Scopes []string `yaml:"scopes"`
	// Rate is calls per second (0: unlimited), Burst the calls allowed at
	// once above it (default: Rate rounded up), Concurrency the calls in
	// flight at once (0: unlimited).
	Rate        float64 `yaml:"rate"`
	Burst       int     `yaml:"burst"`
	Concurrency int     `yaml:"concurrency"`
}

type keysFile struct {
	Keys []fileKey `yaml:"keys"`
}

// Key is one named key of a keys file.
type Key struct {
	Name   string
	Scopes []Scope
	digest [sha256.Size]byte
	rate   *rate.Limiter // nil: unlimited
	slots  chan struct{} // nil: unlimited
}

// Acquire admits one call under the key's rate and concurrency limits,
// returning the function that ends it, or RESOURCE_EXHAUSTED naming the
// limit.
func (k *Key) Acquire() (release func(), err error) {
	if k.rate != nil {
		now := time.Now()
		if r := k.rate.ReserveN(now, 1); r.DelayFrom(now) > 0 {
			wait := r.DelayFrom(now)
			r.CancelAt(now)
			return nil, retryLater(wait, "key %q is over its rate limit of %g calls per second; retry in %v", k.Name, float64(k.rate.Limit()), wait.Round(time.Millisecond))
		}
	}
	if k.slots == nil {
		return func() {}, nil
	}
	select {
	case k.slots <- struct{}{}:
		return func() { <-k.slots }, nil
	default:
		return nil, retryLater(time.Second, "key %q already has %d calls in flight, its concurrency limit", k.Name, cap(k.slots))
	}
}

// retryLater is RESOURCE_EXHAUSTED with a google.rpc.RetryInfo saying when
// to retry; the REST gateway answers it with 429 and Retry-After.
func retryLater(after time.Duration, format string, args ...any) error {
	st := status.Newf(codes.ResourceExhausted, format, args...)
	if with, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(after)}); err == nil {
		st = with
	}
	return st.Err()
}

// Authorize returns nil when the key may call fullMethod, else
// PERMISSION_DENIED naming the scope it lacks.
func (k *Key) Authorize(fullMethod string) error {
	need, _ := ScopeFor(fullMethod)
	if Allows(k.Scopes, need) {
		return nil
	}
	return status.Errorf(codes.PermissionDenied, "key %q lacks the %q scope that %s needs (it has: %s)", k.Name, need, fullMethod, joinScopes(k.Scopes))
}

// parse reads a keys file's contents. Errors name the entry and field and
// never echo a hash.
func parse(data []byte) ([]*Key, error) {
	var f keysFile
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) { // an empty file has no keys
		return nil, fmt.Errorf("keys file: %w", err)
	}
	names := map[string]bool{}
	digests := map[[sha256.Size]byte]string{}
	var keys []*Key
	for i, fk := range f.Keys {
		where := fmt.Sprintf("keys file: entry %d", i+1)
		if fk.Name == "" || len(fk.Name) > 64 || strings.IndexFunc(fk.Name, func(r rune) bool { return r < 0x21 || r > 0x7e }) >= 0 {
			return nil, fmt.Errorf("%s: name: expected 1 to 64 printable ASCII characters without spaces", where)
		}
		where += fmt.Sprintf(" (%s)", fk.Name)
		if names[fk.Name] {
			return nil, fmt.Errorf("%s: name is given twice; each key needs its own", where)
		}
		names[fk.Name] = true
		hexDigest, ok := strings.CutPrefix(fk.Hash, "sha256:")
		raw, err := hex.DecodeString(hexDigest)
		if !ok || err != nil || len(raw) != sha256.Size {
			return nil, fmt.Errorf("%s: hash: expected sha256: and 64 hex digits, as mandate key generate prints", where)
		}
		k := &Key{Name: fk.Name}
		copy(k.digest[:], raw)
		if other, dup := digests[k.digest]; dup {
			return nil, fmt.Errorf("%s: hash: the same key as %q", where, other)
		}
		digests[k.digest] = fk.Name
		if len(fk.Scopes) == 0 {
			return nil, fmt.Errorf("%s: scopes: expected at least one of %s", where, joinScopes(Scopes))
		}
		for _, s := range fk.Scopes {
			sc, err := ParseScope(s)
			if err != nil {
				return nil, fmt.Errorf("%s: scopes: %w", where, err)
			}
			k.Scopes = append(k.Scopes, sc)
		}
		if fk.Rate < 0 || fk.Burst < 0 || fk.Concurrency < 0 {
			return nil, fmt.Errorf("%s: rate, burst and concurrency: expected no negative number", where)
		}
		if fk.Rate > 0 {
			burst := fk.Burst
			if burst == 0 {
				burst = max(1, int(fk.Rate+0.999))
			}
			k.rate = rate.NewLimiter(rate.Limit(fk.Rate), burst)
		}
		if fk.Concurrency > 0 {
			k.slots = make(chan struct{}, fk.Concurrency)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// Keyring is the current contents of a keys file. Reload swaps them in at
// once, so calls in flight keep the key they were admitted with.
type Keyring struct {
	path string
	mu   sync.RWMutex
	keys []*Key
	mod  time.Time
	size int64
}

// Open reads the keys file at path.
func Open(path string) (*Keyring, error) {
	r := &Keyring{path: path}
	if err := r.Reload(); err != nil {
		return nil, err
	}
	return r, nil
}

// Reload reads the file again (call it on SIGHUP). On an error the previous
// keys stay in force. Limits start afresh with the new keys.
func (r *Keyring) Reload() error {
	fi, err := os.Stat(r.path)
	if err != nil {
		return fmt.Errorf("keys file: %w", err)
	}
	data, err := os.ReadFile(r.path)
	if err != nil {
		return fmt.Errorf("keys file: %w", err)
	}
	keys, err := parse(data)
	if err != nil {
		return fmt.Errorf("%s: %w", r.path, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.keys, r.mod, r.size = keys, fi.ModTime(), fi.Size()
	return nil
}

// Watch reloads the file whenever it changes (polled every interval) until
// ctx ends, reporting each failed reload to onErr.
func (r *Keyring) Watch(ctx context.Context, interval time.Duration, onErr func(error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fi, err := os.Stat(r.path)
		r.mu.RLock()
		changed := err != nil || !fi.ModTime().Equal(r.mod) || fi.Size() != r.size
		r.mu.RUnlock()
		if !changed {
			continue
		}
		if err := r.Reload(); err != nil && onErr != nil {
			onErr(err)
		}
	}
}

// Lookup returns the key whose hash matches key. Every stored digest is
// compared in constant time, so timing does not tell which nearly matched.
func (r *Keyring) Lookup(key string) (*Key, bool) {
	got := sha256.Sum256([]byte(key))
	r.mu.RLock()
	defer r.mu.RUnlock()
	var found *Key
	for _, k := range r.keys {
		if subtle.ConstantTimeCompare(got[:], k.digest[:]) == 1 {
			found = k
		}
	}
	return found, found != nil
}
