package server

import (
	"net/http"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/mandate-authz/mandate/server/authzen"
	"github.com/mandate-authz/mandate/server/op"
)

// mountAuthZEN serves the AuthZEN 1.0 API (server/authzen) on the HTTP
// mux with this server's authentication (the same preshared keys; none
// needed, and any Authorization header ignored, when they are off),
// request IDs, metrics and audit. The PDP metadata is public, like
// /openapi.json.
func (s *Server) mountAuthZEN(mux *http.ServeMux) error {
	h, err := authzen.New(authzen.Config{
		Core:    s.core,
		Mapping: s.cfg.AuthZEN,
		Authenticate: func(r *http.Request) (op.Identity, func(), error) {
			id, key, err := s.auth.authenticateHeader(r.Header.Values("Authorization"))
			if err != nil || key == nil {
				return id, func() {}, err
			}
			// A scoped key needs the check scope and is held to its rate
			// and its concurrency limit, which counts AuthZEN calls beside
			// gRPC and REST ones until the call ends.
			release, err := authorize(key, r.URL.Path)
			if err != nil || release == nil {
				return id, func() {}, err
			}
			return id, release, nil
		},
		RequestID: func(r *http.Request) string {
			if id := r.Header.Get(RequestIDHeader); validRequestID(id) {
				return id
			}
			return s.reqIDs.next()
		},
		Observe: func(path string, status int, d time.Duration) {
			s.metrics.observe(path, authzen.Transport, httpCode(status), d)
		},
		Audited:  s.cfg.Audit != nil,
		Log:      s.log,
		BasePath: s.cfg.AuthZENBasePath,
	})
	if err != nil {
		return err
	}
	for _, p := range h.Patterns() {
		mux.Handle(p, h)
	}
	return nil
}

// httpCode names an HTTP status by the gRPC code the metrics label calls
// with, so that one label set covers every API.
func httpCode(status int) codes.Code {
	switch status {
	case http.StatusOK:
		return codes.OK
	case http.StatusBadRequest:
		return codes.InvalidArgument
	case http.StatusUnauthorized:
		return codes.Unauthenticated
	case http.StatusForbidden:
		return codes.PermissionDenied
	case http.StatusNotFound, http.StatusMethodNotAllowed:
		return codes.Unimplemented
	case http.StatusRequestEntityTooLarge:
		return codes.ResourceExhausted
	case http.StatusServiceUnavailable:
		return codes.Unavailable
	}
	return codes.Internal
}
