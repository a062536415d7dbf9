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
// on the HTTP port (capability.PublicKeysPath), and follows the store's
// revocation records in a loop of its own beside the engine's follower:
// the engine takes no records, and the revocation set fails closed while
// it lags (a check waits for it to reach the revision it answered at).

// capabilityTokens is what serving tokens needs.
type capabilityTokens struct {
	keys        *capability.KeySet
	checker     *capability.Checker
	revocations *capability.RevocationSet
	records     store.RecordStore
	source      capability.RevocationSource
}

// revocationSource reads a store's records and change stream.
type revocationSource struct {
	store.RecordStore
	store.Store
}

func (r revocationSource) ReadRecords(ctx context.Context, kind string) ([]store.Record, store.Revision, error) {
	return r.RecordStore.ReadRecords(ctx, kind)
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
		keys: keys, revocations: revs, records: rs, source: revocationSource{rs, st},
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
	pb.RegisterTokenServiceServer(s.grpc, tokenapi.New(s.tokens.checker, capability.ForEngine(s.eng), s.tokens.records, s.token))
}

// followRevocations keeps the revocation set following the store until ctx
// is done, retrying failures with the engine follower's backoff.
func (s *Server) followRevocations(ctx context.Context) {
	delay := followRetryMin
	for {
		err := capability.Follow(ctx, s.tokens.source, s.tokens.revocations)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = errors.New("the store's change stream ended")
		}
		wait := jitter(delay)
		s.log.Error("cannot follow capability token revocations; checks with tokens fail closed until it can", "error", err,
			"revocations_revision", uint64(s.tokens.revocations.Revision()), "retry_in", wait.String())
		if !sleep(ctx, wait) {
			return
		}
		delay = min(delay*2, followRetryMax)
	}
}
