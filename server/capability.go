package server

import (
	"context"
	"errors"
	"time"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server/capability"
	"github.com/mandate-authz/mandate/server/tokenapi"
	"github.com/mandate-authz/mandate/store"
)

// Capability tokens (see server/capability): with Config.CapabilityKeys
// set, the server checks requests carrying a token through the operation
// core, serves mandate.v1 TokenService, publishes the keys' public halves
// on the HTTP port (capability.PublicKeysPath), and keeps the revocation
// set current as a record set of the server's one follower (follow.go):
// the set fails closed while it lags (a check waits for it to reach the
// revision it answered at, then denies).

// capabilityTokens is what serving tokens needs.
type capabilityTokens struct {
	keys        *capability.KeySet
	checker     *capability.Checker
	revocations *capability.RevocationSet
	records     store.RecordStore
}

// newCapabilityTokens prepares tokens checked against keys; max-uses limits
// are counted in the store so that they hold across replicas.
func newCapabilityTokens(st store.Store, keys *capability.KeySet, wait time.Duration) (*capabilityTokens, error) {
	rs, ok := st.(store.RecordStore)
	if !ok {
		return nil, errors.New("server: capability tokens need a store that keeps records")
	}
	revs := capability.NewRevocationSet()
	return &capabilityTokens{
		keys: keys, revocations: revs, records: rs,
		checker: &capability.Checker{
			Keys: keys, Verifier: capability.NewVerifier(keys, capability.VerifierOptions{}),
			Revocations: revs, Uses: &capability.StoreUses{Records: rs}, RevocationWait: wait,
		},
	}, nil
}

// registerTokens registers TokenService on the gRPC server.
func (s *Server) registerTokens() {
	if s.tokens == nil {
		return
	}
	s.tokenSvc = tokenapi.New(s.core, s.token)
	pb.RegisterTokenServiceServer(s.grpc, s.tokenSvc)
}

// TokenService is the token service (nil when the server serves no
// tokens), for Go callers in the server: the web inbox lists an agent's
// tokens with its Tokens method and revokes them with RevokeTokens. Set
// once New returns.
func (s *Server) TokenService() *tokenapi.Service { return s.tokenSvc }

// tokenPruneInterval is how often a server deletes the minted-token
// registry's expired entries and the revocations of expired tokens.
const tokenPruneInterval = time.Minute

// pruneTokens deletes expired registry entries and revocations until ctx
// is done. Every replica prunes; deleting what another deleted is a no-op.
func (s *Server) pruneTokens(ctx context.Context) {
	t := time.NewTicker(tokenPruneInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		if n, err := capability.PruneMinted(ctx, s.tokens.records, now); err != nil && ctx.Err() == nil {
			s.log.Warn("pruning expired tokens from the registry failed; the next round retries", "error", err)
		} else if n > 0 {
			s.log.Debug("pruned expired tokens from the registry", "deleted", n)
		}
		if n, err := capability.PruneRevocations(ctx, s.tokens.records, now); err != nil && ctx.Err() == nil {
			s.log.Warn("pruning the revocations of expired tokens failed; the next round retries", "error", err)
		} else if n > 0 {
			s.log.Debug("pruned the revocations of expired tokens", "deleted", n)
		}
	}
}
