package server

import (
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
	pb.RegisterTokenServiceServer(s.grpc, tokenapi.New(s.tokens.checker, capability.ForEngine(s.eng), s.tokens.records, s.token))
}
