package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/mandate-authz/mandate/server/apikey"
	"github.com/mandate-authz/mandate/server/op"
)

// TransportLimits bound what one connection may hold and how slowly it may
// send, so that slow, idle or many clients (none of whom need a key to
// connect) cannot exhaust the server's file descriptors, goroutines or
// memory. Zero fields take DefaultTransportLimits' values.
type TransportLimits struct {
	// MaxConnections caps the open connections of each listener (gRPC and
	// HTTP each). A connection over the cap is closed as soon as it is
	// accepted and counted in mandate_connections_refused_total.
	MaxConnections int
	// HandshakeTimeout bounds how long a new connection may take to finish
	// its TLS handshake and send its first request headers (HTTP) or its
	// HTTP/2 preface and settings (gRPC).
	HandshakeTimeout time.Duration
	// BodyTimeout bounds how long a REST request body may take to arrive;
	// for an import, which is a stream, it bounds each wait for more.
	BodyTimeout time.Duration
	// IdleTimeout closes an HTTP keep-alive connection, or a gRPC connection
	// with no call in progress, after this long without a request.
	IdleTimeout time.Duration
	// MaxHeaderBytes caps the request headers of an HTTP request and of a
	// gRPC call.
	MaxHeaderBytes int
	// MaxConcurrentStreams caps the calls in progress on one gRPC
	// connection (HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS); further calls
	// wait at the client.
	MaxConcurrentStreams uint32
	// KeepaliveMinTime is the shortest interval between a client's
	// keepalive pings; a client pinging more often is disconnected
	// (GOAWAY too_many_pings).
	KeepaliveMinTime time.Duration
}

// DefaultTransportLimits are the limits `mandate serve` starts with.
func DefaultTransportLimits() TransportLimits {
	return TransportLimits{
		MaxConnections:       4096,
		HandshakeTimeout:     10 * time.Second,
		BodyTimeout:          30 * time.Second,
		IdleTimeout:          2 * time.Minute,
		MaxHeaderBytes:       64 << 10,
		MaxConcurrentStreams: 1024,
		KeepaliveMinTime:     10 * time.Second,
	}
}

// WithDefaults returns l with its zero fields set to the defaults.
func (l TransportLimits) WithDefaults() TransportLimits {
	d := DefaultTransportLimits()
	if l.MaxConnections <= 0 {
		l.MaxConnections = d.MaxConnections
	}
	if l.HandshakeTimeout <= 0 {
		l.HandshakeTimeout = d.HandshakeTimeout
	}
	if l.BodyTimeout <= 0 {
		l.BodyTimeout = d.BodyTimeout
	}
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = d.IdleTimeout
	}
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = d.MaxHeaderBytes
	}
	if l.MaxConcurrentStreams == 0 {
		l.MaxConcurrentStreams = d.MaxConcurrentStreams
	}
	if l.KeepaliveMinTime <= 0 {
		l.KeepaliveMinTime = d.KeepaliveMinTime
	}
	return l
}

// grpcTransportOptions applies the limits to the gRPC server. The server
// pings a connection quiet for a minute and drops it if the ping is not
// answered, so a vanished client does not hold a connection slot.
func (l TransportLimits) grpcTransportOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ConnectionTimeout(l.HandshakeTimeout),
		grpc.MaxConcurrentStreams(l.MaxConcurrentStreams),
		grpc.MaxHeaderListSize(uint32(l.MaxHeaderBytes)),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle: l.IdleTimeout,
			Time:              time.Minute,
			Timeout:           20 * time.Second,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime: l.KeepaliveMinTime,
			// Idle connections may ping; MaxConnectionIdle still closes
			// them.
			PermitWithoutStream: true,
		}),
	}
}

// connMetrics count each listener's connections.
type connMetrics struct {
	open    *prometheus.GaugeVec
	refused *prometheus.CounterVec
}

func newConnMetrics(reg prometheus.Registerer) *connMetrics {
	m := &connMetrics{
		open: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "mandate", Name: "connections_open",
			Help: "Open client connections by listener (grpc or http).",
		}, []string{"listener"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "mandate", Name: "connections_refused_total",
			Help: "Connections closed on accept because the listener was at its connection cap (--max-connections).",
		}, []string{"listener"}),
	}
	reg.MustRegister(m.open, m.refused)
	return m
}

// capListener closes connections accepted beyond max open ones at once,
// rather than leaving them queued: a client learns at once that the server
// is full, and the descriptors an attacker can make it hold are bounded.
type capListener struct {
	net.Listener
	slots   chan struct{}
	open    prometheus.Gauge
	refused prometheus.Counter
}

func newCapListener(l net.Listener, max int, name string, m *connMetrics) *capListener {
	return &capListener{Listener: l, slots: make(chan struct{}, max),
		open: m.open.WithLabelValues(name), refused: m.refused.WithLabelValues(name)}
}

func (l *capListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			l.open.Inc()
			return &slotConn{Conn: c, free: l.free}, nil
		default:
			l.refused.Inc()
			c.Close()
		}
	}
}

func (l *capListener) free() {
	l.open.Dec()
	<-l.slots
}

// slotConn gives its listener slot back when closed, once.
type slotConn struct {
	net.Conn
	once sync.Once
	free func()
}

func (c *slotConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.free)
	return err
}

// authTap authenticates a gRPC call as soon as its headers arrive, before
// its request message is read: a caller without a valid key cannot make the
// server receive (up to --max-message-size of) a body. The refusal is
// audited with the method and source only. The interceptor (begin) finds
// the identity in the context and does not authenticate again; scopes and
// per-key limits are still checked there.
func (s *Server) authTap(ctx context.Context, info *tap.Info) (context.Context, error) {
	id, key, err := s.auth.authenticate(ctx, info.FullMethodName)
	if err != nil {
		cctx, call := s.beginCall(ctx, info.FullMethodName)
		s.core.End(cctx, call, func() op.Request { return refusedOperation(info.FullMethodName) }, err)
		s.metrics.observe(info.FullMethodName, transportOf(ctx), status.Code(err), 0)
		return ctx, err
	}
	return context.WithValue(ctx, tappedKey{}, tapped{id: id, key: key}), nil
}

type tappedKey struct{}

// tapped is authTap's verdict on a call, carried to the interceptor.
type tapped struct {
	id  op.Identity
	key *apikey.Key
}

// bodyDeadline gives every HTTP request BodyTimeout to send its body
// (import: for each wait), and with it the server's own reading of what a
// handler left unread.
func (s *Server) bodyDeadline(h http.Handler) http.Handler {
	timeout := s.transport.BodyTimeout
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b := &deadlineBody{ReadCloser: r.Body, rc: http.NewResponseController(w), timeout: timeout, each: r.URL.Path == restImportPath}
		if !b.each {
			b.setDeadline(time.Now().Add(timeout))
		}
		r.Body = b
		h.ServeHTTP(w, r)
	})
}

// guardREST authenticates a REST call before anything reads its body. A
// call without a valid key goes on with an empty body, so that the gRPC
// server refuses it (and audits it) as it refuses any other; its own body
// is never read (not even drained after the answer: the read deadline is
// now) and the connection closes after the answer.
func (s *Server) guardREST(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, _, err := s.auth.authenticateHeader(r.Header.Values("Authorization")); err != nil {
			_ = http.NewResponseController(w).SetReadDeadline(time.Now())
			r.Body, r.ContentLength = http.NoBody, 0
			r.Header.Del("Content-Length")
			w.Header().Set("Connection", "close")
		}
		h.ServeHTTP(w, r)
	})
}

const restImportPath = "/v1/relationships/import"

// deadlineBody bounds the wait for a request body: as a whole, or for each
// read of a streamed one. Once the body is read to its end the deadline is
// lifted, so that the server's watch for the client going away (a read
// that starts at the body's end) does not end a long response, such as a
// REST Watch, at the deadline.
type deadlineBody struct {
	io.ReadCloser
	rc      *http.ResponseController
	timeout time.Duration
	each    bool
	done    bool
}

func (b *deadlineBody) setDeadline(t time.Time) {
	// Only a ResponseWriter that is no connection's (a test's) cannot take
	// a deadline; its body is not a client's.
	_ = b.rc.SetReadDeadline(t)
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	if b.each && !b.done {
		b.setDeadline(time.Now().Add(b.timeout))
	}
	n, err := b.ReadCloser.Read(p)
	switch {
	case b.done:
	case errors.Is(err, io.EOF):
		b.done = true
		b.setDeadline(time.Time{})
	case err != nil:
		// The deadline stays, so that the server does not wait for the
		// rest of the body either: it closes the connection.
		b.done = true
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			err = fmt.Errorf("the request body did not arrive within %s (--http-body-timeout): %w", b.timeout, err)
		}
	}
	return n, err
}
