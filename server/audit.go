package server

// Auditing: every call of both APIs is audited by the operation core
// (server/op), which builds each event from the engine's and the store's
// results. This file gives the core each call's description (request ID,
// caller, source, transport) and describes the calls refused before they
// reached it.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

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

// requestIDs draws request IDs: a random per-process prefix and a counter,
// unique without a random draw per request.
type requestIDs struct {
	prefix string
	n      atomic.Uint64
}

func newRequestIDs() *requestIDs {
	var b [6]byte
	rand.Read(b[:])
	return &requestIDs{prefix: hex.EncodeToString(b[:])}
}

func (r *requestIDs) next() string {
	var b strings.Builder
	b.Grow(len(r.prefix) + 14)
	b.WriteString(r.prefix)
	b.WriteByte('-')
	var num [13]byte
	b.Write(strconv.AppendUint(num[:0], r.n.Add(1), 36))
	return b.String()
}

// validRequestID accepts a client's ID: short printable ASCII, so that it
// cannot forge log or trail structure.
func validRequestID(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// beginCall starts a call in the core with its request ID, source and
// transport, and the error wording of the API it came through (nothing to
// start when nothing is audited). It reads
// single metadata keys rather than copying the whole metadata: it runs on
// every call.
func (s *Server) beginCall(ctx context.Context, method string) (context.Context, *op.Call) {
	if s.cfg.Audit == nil {
		return ctx, nil
	}
	info := op.CallInfo{Transport: transportOf(ctx), Classify: classifyMandate}
	if v := metadata.ValueFromIncomingContext(ctx, RequestIDHeader); len(v) > 0 && validRequestID(v[0]) {
		info.RequestID = v[0]
	} else {
		info.RequestID = s.reqIDs.next()
	}
	if info.Transport == "rest" {
		// The gateway appends the HTTP client's address to X-Forwarded-For;
		// earlier entries are the client's own claims.
		if v := metadata.ValueFromIncomingContext(ctx, "x-forwarded-for"); len(v) > 0 {
			last := v[len(v)-1]
			if i := strings.LastIndexByte(last, ','); i >= 0 {
				last = last[i+1:]
			}
			info.Source = strings.TrimSpace(last)
		}
	} else if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		info.Source = p.Addr.String()
	}
	if isAuthzed(method) {
		info.Transport += "-authzed"
		info.Classify = classifyAuthzed
	}
	return s.core.Begin(ctx, info)
}

// auditHeaderMatcher forwards a REST client's X-Request-Id to the gRPC
// server, besides grpc-gateway's defaults.
func auditHeaderMatcher(key string) (string, bool) {
	if strings.EqualFold(key, RequestIDHeader) {
		return RequestIDHeader, true
	}
	return runtime.DefaultHeaderMatcher(key)
}

// isAuthzed tells SpiceDB's authzed.api.v1 methods.
func isAuthzed(method string) bool { return strings.HasPrefix(method, "/authzed.api.v1.") }

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
