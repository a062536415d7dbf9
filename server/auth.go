package server

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// authenticator checks bearer preshared keys. It keeps only SHA-256 digests
// of the keys, so a key cannot leak through a dump of the server's state, and
// compares digests in constant time.
type authenticator struct {
	digests  [][sha256.Size]byte
	disabled bool
}

func newAuthenticator(keys []string, allowNone bool) (*authenticator, error) {
	a := &authenticator{disabled: allowNone && len(keys) == 0}
	for i, k := range keys {
		if strings.TrimSpace(k) == "" {
			return nil, fmt.Errorf("preshared key %d of %d is empty", i+1, len(keys))
		}
		a.digests = append(a.digests, sha256.Sum256([]byte(k)))
	}
	if len(a.digests) == 0 && !a.disabled {
		return nil, errors.New("at least one preshared key is required (--grpc-preshared-key or MANDATE_GRPC_PRESHARED_KEY)")
	}
	return a, nil
}

// publicServices need no key: health probes and reflection, which only
// describes the public API.
func isPublic(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/grpc.health.v1.Health/") ||
		strings.HasPrefix(fullMethod, "/grpc.reflection.")
}

// check authenticates a call from its "authorization: Bearer <key>"
// metadata. Its errors never echo what was sent.
func (a *authenticator) check(ctx context.Context, fullMethod string) error {
	if a.disabled || isPublic(fullMethod) {
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	values := md.Get("authorization")
	if len(values) == 0 {
		return status.Error(codes.Unauthenticated, "missing credentials: send the header \"authorization: Bearer <preshared key>\"")
	}
	scheme, key, ok := strings.Cut(strings.TrimSpace(values[0]), " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return status.Error(codes.Unauthenticated, "malformed authorization header: expected \"Bearer <preshared key>\"")
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(key)))
	match := 0
	for _, d := range a.digests {
		match |= subtle.ConstantTimeCompare(got[:], d[:])
	}
	if match != 1 {
		return status.Error(codes.Unauthenticated, "invalid preshared key")
	}
	return nil
}
