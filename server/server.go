// Package server serves Mandate's mandate.v1 API over gRPC and, through
// grpc-gateway, as REST/JSON under /v1. It is a thin layer over a store.Store
// (the durable truth, which every write goes to) and an *engine.Engine (the
// in-memory index every check and lookup reads), which it keeps following
// the store's change stream.
//
// Besides the API it serves grpc.health.v1 and gRPC reflection on the gRPC
// listener and /healthz, /readyz, /metrics (Prometheus) and /openapi.json on
// the HTTP listener. Every API call needs a bearer preshared key.
package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/test/bufconn"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/feed"
	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server/apikey"
	"github.com/mandate-authz/mandate/server/approval"
	"github.com/mandate-authz/mandate/server/authzen"
	"github.com/mandate-authz/mandate/server/capability"
	"github.com/mandate-authz/mandate/server/escalation"
	"github.com/mandate-authz/mandate/server/inbox"
	"github.com/mandate-authz/mandate/server/op"
	"github.com/mandate-authz/mandate/server/tokenapi"
	"github.com/mandate-authz/mandate/store"
)

// Limits bound what one request may ask for (see op.Limits). Requests over
// a limit fail with InvalidArgument (ResourceExhausted for message size; 413
// on REST) and a message naming the limit.
type Limits = op.Limits

// DefaultLimits are the limits `mandate serve` starts with.
func DefaultLimits() Limits { return op.DefaultLimits() }

// Config configures a Server.
type Config struct {
	// GRPCAddr and HTTPAddr are the listen addresses (":0" picks a port);
	// an empty HTTPAddr disables the HTTP listener.
	GRPCAddr string
	HTTPAddr string
	// PresharedKeys are the bearer keys accepted; at least one is required
	// unless AllowUnauthenticated is set.
	PresharedKeys []string
	// Keys, when set, admits the scoped keys of a keys file besides the
	// preshared keys (which hold every scope); see server/apikey. Its
	// owner reloads it.
	Keys *apikey.Keyring
	// PresharedKeyNames name the keys, by position, in the audit trail
	// (default key-1, key-2, ...); see audit.go.
	PresharedKeyNames []string
	// Audit receives an audit event for every call (see audit.go); nil
	// audits nothing. Run flushes it at shutdown; its owner closes it.
	Audit Auditor
	// AllowUnauthenticated serves without keys (tests and local tools only).
	AllowUnauthenticated bool
	// TLS certificate and key files for each listener; both or neither.
	// They are reloaded when they change (see tlsconfig.go).
	GRPCTLSCertPath, GRPCTLSKeyPath string
	HTTPTLSCertPath, HTTPTLSKeyPath string
	// GRPCTLSClientCAPath and HTTPTLSClientCAPath, when set, make the
	// listener require client certificates signed by those CAs (mTLS).
	GRPCTLSClientCAPath, HTTPTLSClientCAPath string
	// ShutdownGracePeriod bounds how long shutdown waits for in-flight
	// requests before cutting them off.
	ShutdownGracePeriod time.Duration
	// StoreName identifies the store across restarts and replicas, so that
	// revision tokens stay valid there; empty draws a random identity, which
	// suits a memory store (tokens from an earlier process are refused).
	StoreName string
	// Limits; zero fields take DefaultLimits' values.
	Limits Limits
	// Transport bounds connections, streams and slow clients on both
	// listeners; zero fields take DefaultTransportLimits' values. See
	// transport.go.
	Transport TransportLimits
	// Logger receives request and lifecycle logs; nil discards them. Keys
	// and request payloads are never logged.
	Logger *slog.Logger
	// RevisionRetention is how long a revision stays readable after a later
	// write supersedes it (at_exact_snapshot, cursors, Watch from its
	// token); older history is released. Zero takes
	// DefaultRevisionRetention. See retention.go.
	RevisionRetention time.Duration
	// MaxRevisionWait bounds how long a read waits for the engine to apply
	// the revision its consistency needs (and for the store's head, for
	// fully_consistent) before failing with Unavailable; zero takes
	// DefaultMaxRevisionWait. See consistency.go and follow.go.
	MaxRevisionWait time.Duration
	// AuthZEN maps AuthZEN 1.0 names onto the schema's for the AuthZEN API
	// on the HTTP listener; nil maps every name onto itself. See
	// authzen.go.
	AuthZEN *authzen.Mapping
	// AuthZENBasePath is the path of the AuthZEN PDP's identifier ("" or
	// /a/b): endpoints under it, metadata at the well-known path plus it.
	AuthZENBasePath string
	// CapabilityKeys are the root keys capability tokens are minted with
	// and verified against; nil serves no tokens (checks carrying one are
	// refused). See capability.go.
	CapabilityKeys *capability.KeySet
	// UI, when set, serves the web inbox under /ui/ on the HTTP listener;
	// see ui.go and server/inbox.
	UI *inbox.Config
	// Escalation decides which allowed agent checks need a person's
	// approval (nil: none do; grants still resolve denials only the agent's
	// own grant is missing for). Approvals bounds requests and grants. See
	// approval.go.
	Escalation *escalation.Escalator
	Approvals  ApprovalConfig
	// RecordSets are kept current by the server's follower from the
	// store's change stream (see follow.go); the store must keep records.
	// More can be added with RegisterRecordSet before Run.
	RecordSets []feed.RecordSet
}

// Server serves the API. Create it with New, run it with Run.
type Server struct {
	cfg       Config
	lim       Limits
	transport TransportLimits
	st        store.Store
	eng       *engine.Engine
	inst      instanceID
	log       *slog.Logger
	metrics   *metrics
	auth      *authenticator
	reqIDs    *requestIDs
	// core runs every operation of every API; see server/op.
	core *op.Core
	// retention decides which history to release; see retention.go.
	retention *retention
	// tokens serves capability tokens; nil when off. See capability.go.
	tokens   *capabilityTokens
	tokenSvc *tokenapi.Service
	// approvals keeps approval requests and grants; nil when the store
	// keeps no records. See approval.go.
	approvals *approval.Service
	// recordSets are fed by the follower through records (follow.go);
	// running (under stateMu) fixes them.
	recordSets []feed.RecordSet
	records    *feed.Records
	running    bool

	grpc    grpcServer
	health  *health.Server
	http    *http.Server
	grpcLis net.Listener
	httpLis net.Listener
	inproc  *bufconn.Listener
	gwConn  *grpc.ClientConn

	ready    atomic.Bool
	stateMu  sync.Mutex // orders readiness changes against shutdown
	shutting bool
	stopping chan struct{}
	runOnce  sync.Once
}

// New validates cfg, binds the listeners and prepares the server; Run
// serves. The engine should be empty: Run loads the store into it.
func New(st store.Store, eng *engine.Engine, cfg Config) (*Server, error) {
	if st == nil || eng == nil {
		return nil, errors.New("server: a store and an engine are required")
	}
	lim := cfg.Limits.WithDefaults()
	if cfg.ShutdownGracePeriod <= 0 {
		cfg.ShutdownGracePeriod = 30 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	auth, err := newAuthenticator(cfg.PresharedKeys, cfg.Keys, cfg.AllowUnauthenticated)
	if err != nil {
		return nil, err
	}
	inst, err := newInstanceID(cfg.StoreName)
	if err != nil {
		return nil, err
	}
	ret, err := newRetention(cfg.RevisionRetention)
	if err != nil {
		return nil, err
	}
	if lim.MaxHistoryVersions < 0 {
		return nil, fmt.Errorf("max history versions %d: expected 0 (no limit) or more (--max-history-versions)", lim.MaxHistoryVersions)
	}
	// A write refused for history may succeed after the next release.
	lim.HistoryRetryAfter = ret.interval
	if cfg.MaxRevisionWait, err = maxRevisionWait(cfg.MaxRevisionWait); err != nil {
		return nil, err
	}
	s := &Server{
		cfg: cfg, lim: lim, st: st, eng: eng, inst: inst, log: log, auth: auth, retention: ret,
		transport: cfg.Transport.WithDefaults(),
		metrics:   newMetrics(),
		stopping:  make(chan struct{}),
	}
	if err := s.setupAudit(); err != nil {
		return nil, err
	}
	var auditor op.Auditor
	if cfg.Audit != nil {
		auditor = cfg.Audit
	}
	var checker *capability.Checker
	if cfg.CapabilityKeys != nil {
		if s.tokens, err = newCapabilityTokens(st, cfg.CapabilityKeys, cfg.MaxRevisionWait); err != nil {
			return nil, err
		}
		checker = s.tokens.checker
		s.recordSets = append(s.recordSets, s.tokens.revocations)
	}
	for _, rs := range cfg.RecordSets {
		if err := s.RegisterRecordSet(rs); err != nil {
			return nil, err
		}
	}
	if s.core, err = op.New(op.Config{
		Engine: eng, Store: st, Auditor: auditor, Limits: lim, MaxRevisionWait: cfg.MaxRevisionWait,
		Decided: s.metrics.decision, Classify: classifyMandate, Log: log, Tokens: checker,
	}); err != nil {
		return nil, err
	}
	if err := s.newApprovals(); err != nil {
		return nil, err
	}
	if err := s.listen(); err != nil {
		s.closeListeners()
		return nil, err
	}
	if err := s.buildGRPC(); err != nil {
		s.closeListeners()
		return nil, err
	}
	if err := s.buildHTTP(); err != nil {
		s.closeListeners()
		return nil, err
	}
	return s, nil
}

func (s *Server) listen() error {
	var err error
	if s.grpcLis, err = net.Listen("tcp", s.cfg.GRPCAddr); err != nil {
		return fmt.Errorf("gRPC listener on %q: %w", s.cfg.GRPCAddr, err)
	}
	if s.cfg.HTTPAddr != "" {
		if s.httpLis, err = net.Listen("tcp", s.cfg.HTTPAddr); err != nil {
			return fmt.Errorf("HTTP listener on %q: %w", s.cfg.HTTPAddr, err)
		}
	}
	// Each listener has its own connection cap, so clients exhausting one
	// do not take the other down with it.
	cm := newConnMetrics(s.metrics.reg)
	s.grpcLis = newCapListener(s.grpcLis, s.transport.MaxConnections, "grpc", cm)
	if s.httpLis != nil {
		s.httpLis = newCapListener(s.httpLis, s.transport.MaxConnections, "http", cm)
	}
	// The REST gateway reaches the gRPC server through an in-process pipe,
	// so REST calls pass the same interceptors (auth, limits, metrics) and
	// support streaming, whatever TLS the gRPC listener uses.
	s.inproc = bufconn.Listen(1 << 20)
	return nil
}

func (s *Server) closeListeners() {
	for _, l := range []net.Listener{s.grpcLis, s.httpLis} {
		if l != nil {
			l.Close()
		}
	}
	if s.inproc != nil {
		s.inproc.Close()
	}
}

func (s *Server) buildGRPC() error {
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(s.lim.MaxMessageBytes),
		grpc.ForceServerCodecV2(newCodec()),
		grpc.ChainUnaryInterceptor(s.unaryInterceptor, s.retentionUnary, serverVersionUnary),
		grpc.ChainStreamInterceptor(decodeStreams, s.streamInterceptor, s.retentionStream, serverVersionStream),
		grpc.InTapHandle(s.authTap),
	}
	opts = append(opts, s.transport.grpcTransportOptions()...)
	tlsCfg, err := NewTLSConfig("gRPC", TLSFiles{s.cfg.GRPCTLSCertPath, s.cfg.GRPCTLSKeyPath, s.cfg.GRPCTLSClientCAPath}, s.log)
	if err != nil {
		return err
	}
	if tlsCfg != nil {
		opts = append(opts, grpc.Creds(pipeExempt{credentials.NewTLS(tlsCfg)}))
	}
	s.grpc = grpcServer{grpc.NewServer(opts...)}
	pb.RegisterPermissionServiceServer(s.grpc, &permissionService{s: s})
	pb.RegisterRelationshipServiceServer(s.grpc, &relationshipService{s: s})
	pb.RegisterSchemaServiceServer(s.grpc, &schemaService{s: s})
	pb.RegisterAuditServiceServer(s.grpc, &auditService{s: s})
	s.registerAuthzed(s.grpc)
	s.registerTokens()
	s.registerApprovals(s.grpc)
	s.health = health.NewServer()
	// Not serving until the engine has caught up with the store.
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	for _, svc := range append([]string{pb.PermissionService_ServiceDesc.ServiceName, pb.RelationshipService_ServiceDesc.ServiceName, pb.SchemaService_ServiceDesc.ServiceName}, authzedServiceNames...) {
		s.health.SetServingStatus(svc, healthpb.HealthCheckResponse_NOT_SERVING)
	}
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	return nil
}

// pipeExempt is TLS for network connections and plaintext for the
// in-process pipe from the REST gateway, which never leaves the process (and
// whose HTTP side has its own TLS).
type pipeExempt struct {
	credentials.TransportCredentials
}

func (c pipeExempt) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if conn.LocalAddr().Network() == "bufconn" {
		return insecure.NewCredentials().ServerHandshake(conn)
	}
	return c.TransportCredentials.ServerHandshake(conn)
}

func (c pipeExempt) Clone() credentials.TransportCredentials {
	return pipeExempt{c.TransportCredentials.Clone()}
}

func (s *Server) setServing(serving bool) {
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	if s.shutting {
		// A late catch-up must not turn a stopping server ready again.
		return
	}
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if serving {
		st = healthpb.HealthCheckResponse_SERVING
	}
	s.ready.Store(serving)
	s.health.SetServingStatus("", st)
	for _, svc := range append([]string{pb.PermissionService_ServiceDesc.ServiceName, pb.RelationshipService_ServiceDesc.ServiceName, pb.SchemaService_ServiceDesc.ServiceName}, authzedServiceNames...) {
		s.health.SetServingStatus(svc, st)
	}
}

// GRPCAddr returns the address the gRPC listener is bound to.
func (s *Server) GRPCAddr() net.Addr { return s.grpcLis.Addr() }

// HTTPAddr returns the address the HTTP listener is bound to, or nil.
func (s *Server) HTTPAddr() net.Addr {
	if s.httpLis == nil {
		return nil
	}
	return s.httpLis.Addr()
}

// Ready reports whether the engine has caught up with the store, is
// following it, and the server is not shutting down.
func (s *Server) Ready() bool { return s.ready.Load() }

// Run loads the store into the engine, follows its changes and serves until
// ctx is done; then it shuts down gracefully: health turns NOT_SERVING,
// Watch streams end, and in-flight requests get up to the grace period to
// finish. It returns nil after a clean shutdown, or the error that stopped
// the server (a listener failing). Losing the store is not fatal: the
// server reports not ready until it follows the store again (follow.go).
func (s *Server) Run(ctx context.Context) error {
	ran := false
	s.runOnce.Do(func() { ran = true })
	if !ran {
		return errors.New("server: Run called twice")
	}
	followCtx, stopFollow := context.WithCancel(context.Background())
	defer stopFollow()
	// fatal receives the first error that must stop the server; later ones
	// are dropped rather than block their goroutine.
	fatal := make(chan error, 1)
	report := func(err error) {
		select {
		case fatal <- err:
		default:
		}
	}

	s.startRecords()
	var background sync.WaitGroup
	background.Add(2)
	go func() {
		defer background.Done()
		s.releaseHistory(followCtx)
	}()
	go func() {
		defer background.Done()
		s.follow(followCtx)
	}()
	if s.approvals != nil {
		background.Add(1)
		go func() {
			defer background.Done()
			s.approvals.RunSweeper(followCtx, s.cfg.Approvals.sweepInterval())
		}()
	}
	if s.tokens != nil {
		background.Go(func() { s.pruneTokens(followCtx) })
	}

	var serving sync.WaitGroup
	serve := func(name string, f func() error) {
		serving.Add(1)
		go func() {
			defer serving.Done()
			if err := f(); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, grpc.ErrServerStopped) {
				report(fmt.Errorf("%s: %w", name, err))
			}
		}()
	}
	serve("gRPC listener", func() error { return s.grpc.Serve(s.grpcLis) })
	serve("in-process gRPC listener", func() error { return s.grpc.Serve(s.inproc) })
	if s.http != nil {
		serve("HTTP listener", func() error {
			if s.http.TLSConfig != nil {
				return s.http.ServeTLS(s.httpLis, "", "")
			}
			return s.http.Serve(s.httpLis)
		})
	}
	s.log.Info("serving", "grpc", s.GRPCAddr().String(), "http", addrString(s.HTTPAddr()))

	var runErr error
	select {
	case <-ctx.Done():
		s.log.Info("shutting down", "grace_period", s.cfg.ShutdownGracePeriod.String())
	case runErr = <-fatal:
		s.log.Error("stopping", "error", runErr)
	}
	s.shutdown()
	s.flushAudit()
	// The engine follows the store until in-flight requests are done, since
	// they may be waiting for a revision.
	stopFollow()
	serving.Wait()
	background.Wait()
	return runErr
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// shutdown stops accepting work and waits up to the grace period for what is
// in flight. REST requests go first because they call the gRPC server.
func (s *Server) shutdown() {
	s.setServing(false)
	s.stateMu.Lock()
	s.shutting = true
	s.stateMu.Unlock()
	s.health.Shutdown()
	close(s.stopping)
	deadline := time.Now().Add(s.cfg.ShutdownGracePeriod)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if s.http != nil {
		if err := s.http.Shutdown(ctx); err != nil {
			s.log.Warn("HTTP shutdown cut off in-flight requests", "error", err)
			s.http.Close()
		}
	}
	done := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		s.log.Warn("gRPC shutdown grace period over; cutting off in-flight calls")
		s.grpc.Stop()
		<-done
	}
	if s.gwConn != nil {
		s.gwConn.Close()
	}
}

func (s *Server) buildHTTP() error {
	if s.httpLis == nil {
		return nil
	}
	tlsCfg, err := NewTLSConfig("HTTP", TLSFiles{s.cfg.HTTPTLSCertPath, s.cfg.HTTPTLSKeyPath, s.cfg.HTTPTLSClientCAPath}, s.log)
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient("passthrough:///mandate-in-process",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return s.inproc.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<31-1), grpc.MaxCallSendMsgSize(s.lim.MaxMessageBytes)),
	)
	if err != nil {
		return fmt.Errorf("connecting the REST gateway to the gRPC server: %w", err)
	}
	s.gwConn = conn
	gw, err := newGateway(context.Background(), conn)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/", s.guardREST(s.limitBody(oneJSONValue(gw))))
	mux.HandleFunc("GET /openapi.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(pb.OpenAPIDocument())
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !s.Ready() {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "not ready: loading the store, cannot reach it, or shutting down\n")
			return
		}
		io.WriteString(w, "ready\n")
	})
	mux.Handle("GET /metrics", s.metrics.handler())
	if err := s.mountAuthZEN(mux); err != nil {
		return err
	}
	if err := s.mountUI(mux); err != nil {
		return err
	}
	if s.tokens != nil {
		mux.Handle("GET "+capability.PublicKeysPath, capability.PublicKeysHandler(s.tokens.keys))
	}
	s.http = &http.Server{
		Handler:           s.bodyDeadline(mux),
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: s.transport.HandshakeTimeout, // and the TLS handshake
		IdleTimeout:       s.transport.IdleTimeout,
		MaxHeaderBytes:    s.transport.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	return nil
}

// newGateway builds the grpc-gateway mux for every service. Unknown JSON
// fields are refused so that a misspelt field is an error, not a silently
// different request.
func newGateway(ctx context.Context, conn *grpc.ClientConn) (http.Handler, error) {
	marshaler := &runtime.JSONPb{}
	marshaler.UnmarshalOptions.DiscardUnknown = false
	// The default error handler maps gRPC codes to HTTP statuses and sets
	// WWW-Authenticate on Unauthenticated.
	gw := runtime.NewServeMux(runtime.WithMarshalerOption(runtime.MIMEWildcard, marshaler), runtime.WithIncomingHeaderMatcher(auditHeaderMatcher),
		runtime.WithRoutingErrorHandler(restRoutingError), runtime.WithErrorHandler(restError))
	for name, register := range map[string]func(context.Context, *runtime.ServeMux, *grpc.ClientConn) error{
		"PermissionService":   pb.RegisterPermissionServiceHandler,
		"RelationshipService": pb.RegisterRelationshipServiceHandler,
		"SchemaService":       pb.RegisterSchemaServiceHandler,
		"AuditService":        pb.RegisterAuditServiceHandler,
		// Unimplemented unless the server serves tokens.
		"TokenService": pb.RegisterTokenServiceHandler,
		// Unimplemented unless the store keeps records.
		"ApprovalService": pb.RegisterApprovalServiceHandler,
	} {
		if err := register(ctx, gw, conn); err != nil {
			return nil, fmt.Errorf("registering the REST gateway for %s: %w", name, err)
		}
	}
	return gw, nil
}
