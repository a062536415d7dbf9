package server

// Auditing: every call of both APIs is audited by the operation core
// (server/op), which builds each event from the engine's and the store's
// results. The interceptors (middleware.go) give the core each call's
// description; refused.go describes the calls refused before they reached
// it. This file sets the Auditor up.

import (
	"context"
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mandate-authz/mandate/server/audit"
	"github.com/mandate-authz/mandate/server/op"
)

// Auditor receives the server's audit events and answers queries over
// them; *audit.Log is the implementation. Record is called on the request
// path: it must be quick, and returns an error only when the event could
// not be accepted (a read then fails rather than go unaudited).
type Auditor interface {
	op.Auditor
	Query(ctx context.Context, q audit.Query) (audit.Page, error)
	Flush(ctx context.Context) error
}

// RequestIDHeader is the metadata key (and HTTP header) of a request's ID:
// a client may send one (up to 128 printable ASCII characters) to find its
// calls in the trail; otherwise the server assigns one. (It is not echoed
// back: a client that wants to correlate sends its own.)
const RequestIDHeader = "x-request-id"

// setupAudit names the preshared keys for the trail and registers the
// Auditor's metrics (when it has any) with the server's.
func (s *Server) setupAudit() error {
	if err := s.auth.setNames(s.cfg.PresharedKeyNames); err != nil {
		return err
	}
	s.reqIDs = newRequestIDs()
	if c, ok := s.cfg.Audit.(prometheus.Collector); ok {
		if err := s.metrics.reg.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				return fmt.Errorf("registering the audit metrics: %w", err)
			}
		}
	}
	return nil
}

// flushAudit writes out the events of the calls shutdown waited for. The
// Auditor's owner closes it after Run.
func (s *Server) flushAudit() {
	if s.cfg.Audit == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownGracePeriod)
	defer cancel()
	if err := s.cfg.Audit.Flush(ctx); err != nil && !errors.Is(err, audit.ErrClosed) {
		s.log.Error("flushing the audit trail at shutdown", "error", err)
	}
}
