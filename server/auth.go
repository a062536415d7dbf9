package server

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/mandate-authz/mandate/server/apikey"
	"github.com/mandate-authz/mandate/server/op"
)

// authenticator checks bearer preshared keys. It keeps only SHA-256 digests
// of the keys, so a key cannot leak through a dump of the server's state, and
// compares digests in constant time.
type authenticator struct {
	digests  [][sha256.Size]byte
	disabled bool
	// names[i] names digests[i] in the audit trail (never the key itself).
	names []string
	// scoped holds the keys file's scoped keys; nil without one. Preshared
	// keys hold every scope.
	scoped *apikey.Keyring
}

func newAuthenticator(keys []string, scoped *apikey.Keyring, allowNone bool) (*authenticator, error) {
	a := &authenticator{disabled: allowNone && len(keys) == 0 && scoped == nil, scoped: scoped}
	for i, k := range keys {
		if strings.TrimSpace(k) == "" {
			return nil, fmt.Errorf("preshared key %d of %d is empty", i+1, len(keys))
		}
		a.digests = append(a.digests, sha256.Sum256([]byte(k)))
	}
	if len(a.digests) == 0 && !a.disabled && scoped == nil {
		return nil, errors.New("at least one preshared key is required (--grpc-preshared-key or MANDATE_GRPC_PRESHARED_KEY, or a --keys-file)")
	}
	return a, nil
}

// publicServices need no key: health probes and reflection, which only
// describes the public API.
func isPublic(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/grpc.health.v1.Health/") ||
		strings.HasPrefix(fullMethod, "/grpc.reflection.")
}

// authenticate resolves a call's caller (and, for a keys-file key, the
// key, whose scopes and limits the caller must then check with authorize) from its "authorization: Bearer
// <key>" metadata, once: the key is hashed and compared here and nowhere
// else, and the identity (the key's name) travels in the context. Public
// methods and a server without keys resolve to the anonymous identity. Its
// errors never echo what was sent.
func (a *authenticator) authenticate(ctx context.Context, fullMethod string) (op.Identity, *apikey.Key, error) {
	if a.disabled || isPublic(fullMethod) {
		return op.Identity{Name: "anonymous"}, nil, nil
	}
	// ValueFromIncomingContext reads the one key without copying the
	// whole metadata map, once per call.
	return a.authenticateHeader(metadata.ValueFromIncomingContext(ctx, "authorization"))
}

// authenticateHeader resolves a caller from the values of its
// authorization header (gRPC metadata or HTTP), for a method that needs a
// key.
func (a *authenticator) authenticateHeader(values []string) (op.Identity, *apikey.Key, error) {
	if a.disabled {
		return op.Identity{Name: "anonymous"}, nil, nil
	}
	if len(values) == 0 {
		return op.Identity{}, nil, status.Error(codes.Unauthenticated, "missing credentials: send the header \"authorization: Bearer <preshared key>\"")
	}
	scheme, key, ok := strings.Cut(strings.TrimSpace(values[0]), " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return op.Identity{}, nil, status.Error(codes.Unauthenticated, "malformed authorization header: expected \"Bearer <preshared key>\"")
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(key)))
	match := -1
	for i, d := range a.digests {
		// Every digest is compared, so the time taken does not tell which
		// key matched.
		if subtle.ConstantTimeCompare(got[:], d[:]) == 1 {
			match = i
		}
	}
	if match >= 0 {
		return op.Identity{Name: a.names[match]}, nil, nil
	}
	if a.scoped != nil {
		if k, ok := a.scoped.Lookup(strings.TrimSpace(key)); ok {
			return op.Identity{Name: k.Name, Person: k.Person}, k, nil
		}
	}
	return op.Identity{}, nil, status.Error(codes.Unauthenticated, "invalid preshared key")
}

// authorize admits a call of a scoped key to fullMethod: PERMISSION_DENIED
// naming the scope it lacks, or RESOURCE_EXHAUSTED over its limits. The
// returned release ends the call's share of the key's concurrency.
func authorize(key *apikey.Key, fullMethod string) (release func(), err error) {
	if err := key.Authorize(fullMethod); err != nil {
		return func() {}, err
	}
	return key.Acquire()
}

// setNames names the keys for the audit trail, by position: names[i] is the
// i-th key's. Without names the keys are key-1, key-2, ... in the order
// given. Keys may contain any character, so names come in their own list
// rather than in a name:key syntax; and no fingerprint of a key is ever
// shown, since a short hash of a weak key can be tested against guesses.
func (a *authenticator) setNames(names []string) error {
	if len(names) == 0 {
		a.names = make([]string, len(a.digests))
		for i := range a.names {
			a.names[i] = "key-" + strconv.Itoa(i+1)
		}
		return nil
	}
	if len(names) != len(a.digests) {
		return fmt.Errorf("preshared key names: %d names for %d keys; give one --grpc-preshared-key-name per --grpc-preshared-key, in the same order", len(names), len(a.digests))
	}
	seen := map[string]bool{}
	for i, n := range names {
		if n == "" || len(n) > 64 || strings.IndexFunc(n, func(r rune) bool { return r < 0x21 || r > 0x7e }) >= 0 {
			return fmt.Errorf("preshared key name %d of %d (%q): expected 1 to 64 printable ASCII characters without spaces", i+1, len(names), n)
		}
		if seen[n] {
			return fmt.Errorf("preshared key name %q is given twice: each key needs its own name", n)
		}
		seen[n] = true
	}
	a.names = append([]string(nil), names...)
	return nil
}
