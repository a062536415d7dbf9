package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	authzedv1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server/apikey"
	"github.com/mandate-authz/mandate/server/op"
)

// longRunning methods are exempt from the request timeout: they last as long
// as the client wants (Watch) or as the data is large (import, export).
func longRunning(fullMethod string) bool {
	switch fullMethod {
	case pb.RelationshipService_Watch_FullMethodName,
		pb.RelationshipService_ImportRelationships_FullMethodName,
		pb.RelationshipService_ExportRelationships_FullMethodName,
		authzedv1.WatchService_Watch_FullMethodName,
		authzedv1.PermissionsService_ImportBulkRelationships_FullMethodName,
		authzedv1.PermissionsService_ExportBulkRelationships_FullMethodName:
		return true
	}
	return false
}

// transportOf tells REST calls, which arrive through the in-process pipe,
// from direct gRPC calls.
func transportOf(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil && p.Addr.Network() == "bufconn" {
		return "rest"
	}
	return "grpc"
}

// begin authenticates a call, puts the caller's identity in its context
// and applies the request timeout. The returned cancel must be called when
// the call ends.
func (s *Server) begin(ctx context.Context, fullMethod string) (context.Context, context.CancelFunc, error) {
	var (
		id  op.Identity
		key *apikey.Key
		err error
	)
	if t, ok := ctx.Value(tappedKey{}).(tapped); ok {
		id, key = t.id, t.key // authTap authenticated the call already
	} else if id, key, err = s.auth.authenticate(ctx, fullMethod); err != nil {
		return ctx, func() {}, err
	}
	ctx = op.WithIdentity(ctx, id)
	release := func() {}
	if key != nil {
		// A keys-file key: may it call fullMethod, within its limits? The
		// identity is in the context already, so a refusal is audited with
		// the key's name.
		if release, err = authorize(key, fullMethod); err != nil {
			return ctx, func() {}, err
		}
	}
	if isPublic(fullMethod) || longRunning(fullMethod) {
		return ctx, release, nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.lim.RequestTimeout)
	return ctx, func() { cancel(); release() }, nil
}

// finish turns a handler's error into a status with a clear message, logs
// what the operator must see, and records metrics.
func (s *Server) finish(ctx context.Context, fullMethod string, start time.Time, recovered any, err error) error {
	if recovered != nil {
		s.log.Error("panic serving a request", "method", fullMethod, "panic", fmt.Sprint(recovered), "stack", string(debug.Stack()))
		err = status.Errorf(codes.Internal, "internal error serving %s", fullMethod)
	}
	err = toStatus(err)
	code := status.Code(err)
	switch code {
	case codes.DeadlineExceeded:
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			err = status.Errorf(codes.DeadlineExceeded, "request deadline exceeded (the server allows at most %s per request; the client's deadline may be shorter): %s",
				s.lim.RequestTimeout, status.Convert(err).Message())
		}
	case codes.Internal, codes.Unknown:
		s.log.Error("request failed", "method", fullMethod, "error", status.Convert(err).Message())
	}
	transport := transportOf(ctx)
	d := time.Since(start)
	s.metrics.observe(fullMethod, transport, code, d)
	s.log.Debug("request", "method", fullMethod, "transport", transport, "code", code.String(), "duration", d)
	return err
}

func (s *Server) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	start := time.Now()
	defer func() {
		err = s.finish(ctx, info.FullMethod, start, recover(), err)
		if err != nil {
			resp = nil
		}
	}()
	ctx, cancel, err := s.begin(ctx, info.FullMethod)
	defer cancel()
	ctx, call := s.beginCall(ctx, info.FullMethod)
	if err == nil {
		resp, err = handler(ctx, req)
	}
	s.core.End(ctx, call, func() op.Request { return refusedRequest(ctx, info.FullMethod, req) }, err)
	return resp, err
}

// ctxStream overrides a stream's context and keeps its first message,
// which describes the call if it is refused.
type ctxStream struct {
	grpc.ServerStream
	ctx   context.Context
	first any
}

func (c *ctxStream) Context() context.Context { return c.ctx }

func (c *ctxStream) RecvMsg(m any) error {
	err := c.ServerStream.RecvMsg(m)
	if err == nil && c.first == nil {
		c.first = m
	}
	return err
}

func (s *Server) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	start := time.Now()
	ctx := ss.Context()
	defer func() { err = s.finish(ctx, info.FullMethod, start, recover(), err) }()
	ctx, cancel, err := s.begin(ctx, info.FullMethod)
	defer cancel()
	ctx, call := s.beginCall(ctx, info.FullMethod)
	w := &ctxStream{ServerStream: ss, ctx: ctx}
	if err == nil {
		err = handler(srv, w)
	}
	s.core.End(ctx, call, func() op.Request { return refusedRequest(ctx, info.FullMethod, w.first) }, err)
	return err
}

// limitBody bounds REST request bodies by the message size limit, answering
// 413 up front when the declared length is over it. Import bodies are a
// stream of messages, each bounded on its way to the gRPC server instead.
func (s *Server) limitBody(h http.Handler) http.Handler {
	limit := int64(s.lim.MaxMessageBytes)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/relationships/import" {
			h.ServeHTTP(w, r)
			return
		}
		if r.ContentLength > limit {
			writeHTTPError(w, http.StatusRequestEntityTooLarge, codes.ResourceExhausted,
				fmt.Sprintf("request body of %d bytes exceeds the limit of %d bytes (--max-message-size)", r.ContentLength, limit))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, limit)
		h.ServeHTTP(w, r)
	})
}

// writeHTTPError writes an error in the same JSON shape grpc-gateway uses.
func writeHTTPError(w http.ResponseWriter, httpStatus int, code codes.Code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(httpStatus)
	json.NewEncoder(w).Encode(map[string]any{"code": int(code), "message": msg, "details": []any{}})
}

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

// restRoutingError answers a request whose path exists under another HTTP
// method with 405 and an Allow header (the gateway's default is 501, as if
// the route did not exist). Every mandate.v1 REST route is a POST
// (proto/mandate/v1/mandate.http.yaml; TestRESTWrongMethod checks the
// OpenAPI document agrees).
func restRoutingError(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, httpStatus int) {
	if httpStatus != http.StatusMethodNotAllowed {
		runtime.DefaultRoutingErrorHandler(ctx, mux, m, w, r, httpStatus)
		return
	}
	w.Header().Set("Allow", http.MethodPost)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusMethodNotAllowed)
	body, _ := json.Marshal(map[string]any{"code": int(codes.InvalidArgument),
		"message": fmt.Sprintf("%s %s: method not allowed; this route takes %s", r.Method, r.URL.Path, http.MethodPost)})
	w.Write(body)
}
