package capability

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"
)

// KeyDir is the directory under a server's data directory that holds its
// root keys, one file per key.
const KeyDir = "capability-keys"

// keyIDPattern keeps key ids usable as file names and in descriptors.
var keyIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// Key is one Ed25519 root key. A key without a private half verifies but
// cannot mint.
type Key struct {
	ID      string
	Public  ed25519.PublicKey
	Private ed25519.PrivateKey // nil: verify only
	// Created orders keys: the newest key with a private half signs.
	Created time.Time
}

// GenerateKey draws a new root key.
func GenerateKey(id string, now time.Time) (Key, error) {
	if !keyIDPattern.MatchString(id) {
		return Key{}, fmt.Errorf("key id %q: expected 1-64 letters, digits, '-' or '_'", id)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return Key{}, fmt.Errorf("generating key %s: %w", id, err)
	}
	return Key{ID: id, Public: pub, Private: priv, Created: now}, nil
}

// KeySet is the set of root keys a server mints with and verifies against.
// Keys rotate: Add a new key and it signs from then on while older keys
// keep verifying the tokens they signed until Retire removes them. Safe for
// concurrent use.
type KeySet struct {
	mu   sync.RWMutex
	keys map[string]Key
}

// NewKeySet returns a key set holding keys.
func NewKeySet(keys ...Key) (*KeySet, error) {
	ks := &KeySet{keys: make(map[string]Key)}
	for _, k := range keys {
		if err := ks.Add(k); err != nil {
			return nil, err
		}
	}
	return ks, nil
}

// Add adds a key; a key with a private half newer than the current signer
// becomes the signer.
func (ks *KeySet) Add(k Key) error {
	if !keyIDPattern.MatchString(k.ID) {
		return fmt.Errorf("key id %q: expected 1-64 letters, digits, '-' or '_'", k.ID)
	}
	if len(k.Public) != ed25519.PublicKeySize {
		return fmt.Errorf("key %s: public key has %d bytes, expected %d", k.ID, len(k.Public), ed25519.PublicKeySize)
	}
	if k.Private != nil {
		if len(k.Private) != ed25519.PrivateKeySize {
			return fmt.Errorf("key %s: private key has %d bytes, expected %d", k.ID, len(k.Private), ed25519.PrivateKeySize)
		}
		if !k.Public.Equal(k.Private.Public()) {
			return fmt.Errorf("key %s: public key does not match the private key", k.ID)
		}
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if _, dup := ks.keys[k.ID]; dup {
		return fmt.Errorf("key %s: a key with this id is already in the set", k.ID)
	}
	ks.keys[k.ID] = k
	return nil
}

// Retire removes a key: tokens it signed no longer verify, and cached
// verifications of them are not served again.
func (ks *KeySet) Retire(id string) error {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if _, ok := ks.keys[id]; !ok {
		return fmt.Errorf("retire key %s: %w", id, ErrUnknownKey)
	}
	delete(ks.keys, id)
	return nil
}

// Public returns the public key with id.
func (ks *KeySet) Public(id string) (ed25519.PublicKey, bool) {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	k, ok := ks.keys[id]
	return k.Public, ok
}

// Signer returns the newest key with a private half.
func (ks *KeySet) Signer() (Key, error) {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	var best Key
	for _, k := range ks.keys {
		if k.Private != nil && (best.ID == "" || k.Created.After(best.Created) || (k.Created.Equal(best.Created) && k.ID > best.ID)) {
			best = k
		}
	}
	if best.ID == "" {
		return Key{}, errors.New("no root key with a private half: this key set can verify tokens but not mint them")
	}
	return best, nil
}

// PublicKeys lists every key's id and public half, newest first, for
// publishing to services that verify offline.
func (ks *KeySet) PublicKeys() []Key {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	out := make([]Key, 0, len(ks.keys))
	for _, k := range ks.keys {
		out = append(out, Key{ID: k.ID, Public: k.Public, Created: k.Created})
	}
	slices.SortFunc(out, func(a, b Key) int { return b.Created.Compare(a.Created) })
	return out
}

// LoadKeyDir reads every key in dir: <id>.key files hold a PKCS #8 PEM
// private key (the file's modification time orders keys), <id>.pub files a
// PKIX PEM public key that only verifies. When dir holds no key and create
// is set, it generates one named after the current time and saves it.
func LoadKeyDir(dir string, create bool, now time.Time) (*KeySet, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) && create {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("creating key directory: %w", err)
		}
		entries, err = nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading key directory: %w", err)
	}
	ks := &KeySet{keys: make(map[string]Key)}
	for _, e := range entries {
		name := e.Name()
		id, ext := strings.TrimSuffix(name, filepath.Ext(name)), filepath.Ext(name)
		if e.IsDir() || (ext != ".key" && ext != ".pub") {
			continue
		}
		path := filepath.Join(dir, name)
		k, err := readKeyFile(path, id, ext == ".key")
		if err != nil {
			return nil, err
		}
		if err := ks.Add(k); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	if len(ks.keys) == 0 && create {
		k, err := GenerateKey("k"+now.UTC().Format("20060102T150405"), now)
		if err != nil {
			return nil, err
		}
		if err := SaveKey(dir, k); err != nil {
			return nil, err
		}
		if err := ks.Add(k); err != nil {
			return nil, err
		}
	}
	return ks, nil
}

func readKeyFile(path, id string, private bool) (Key, error) {
	info, err := os.Stat(path)
	if err != nil {
		return Key{}, fmt.Errorf("reading key: %w", err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return Key{}, fmt.Errorf("reading key: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return Key{}, fmt.Errorf("%s: expected a PEM block", path)
	}
	k := Key{ID: id, Created: info.ModTime()}
	if private {
		parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return Key{}, fmt.Errorf("%s: %w", path, err)
		}
		priv, ok := parsed.(ed25519.PrivateKey)
		if !ok {
			return Key{}, fmt.Errorf("%s: expected an Ed25519 private key, found %T", path, parsed)
		}
		k.Private, k.Public = priv, priv.Public().(ed25519.PublicKey)
		return k, nil
	}
	parsed, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return Key{}, fmt.Errorf("%s: %w", path, err)
	}
	pub, ok := parsed.(ed25519.PublicKey)
	if !ok {
		return Key{}, fmt.Errorf("%s: expected an Ed25519 public key, found %T", path, parsed)
	}
	k.Public = pub
	return k, nil
}

// SaveKey writes k into dir as <id>.key (private, mode 0600) or <id>.pub.
func SaveKey(dir string, k Key) error {
	var block *pem.Block
	name := k.ID + ".pub"
	if k.Private != nil {
		der, err := x509.MarshalPKCS8PrivateKey(k.Private)
		if err != nil {
			return fmt.Errorf("encoding key %s: %w", k.ID, err)
		}
		block, name = &pem.Block{Type: "PRIVATE KEY", Bytes: der}, k.ID+".key"
	} else {
		der, err := x509.MarshalPKIXPublicKey(k.Public)
		if err != nil {
			return fmt.Errorf("encoding key %s: %w", k.ID, err)
		}
		block = &pem.Block{Type: "PUBLIC KEY", Bytes: der}
	}
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("saving key: %w", err)
	}
	if err := pem.Encode(f, block); err != nil {
		f.Close()
		return fmt.Errorf("saving key %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("saving key %s: %w", path, err)
	}
	return f.Close()
}
