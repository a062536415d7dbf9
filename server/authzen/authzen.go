// Package authzen serves the OpenID AuthZEN 1.0 Authorization API
// (evaluation, evaluations, the subject, resource and action searches and
// the PDP metadata) as a thin facade over the operation core (server/op):
// it converts AuthZEN's JSON into core requests through a declarative
// Mapping, and the core's answers and errors back into AuthZEN's shapes.
// Authentication, request IDs and metrics are the server's, handed in
// through Config, so an AuthZEN call is authenticated, limited, counted and
// audited like every other API's.
package authzen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"runtime/debug"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mandate-authz/mandate/server/op"
)

// Paths of the API, relative to the server's root.
const (
	PathEvaluation     = "/access/v1/evaluation"
	PathEvaluations    = "/access/v1/evaluations"
	PathSearchSubject  = "/access/v1/search/subject"
	PathSearchResource = "/access/v1/search/resource"
	PathSearchAction   = "/access/v1/search/action"
	PathMetadata       = "/.well-known/authzen-configuration"
)

// RequestIDHeader is echoed on every answer.
const RequestIDHeader = "X-Request-ID"

// Transport names AuthZEN calls in metrics and the audit trail.
const Transport = "authzen"

// Config builds a Handler.
type Config struct {
	Core *op.Core
	// Mapping links AuthZEN names to the schema's; nil maps every name
	// onto itself.
	Mapping *Mapping
	// Authenticate resolves the caller from the request's Authorization
	// header; its error is answered 401 with the error's text (403 for
	// PermissionDenied, 429 for ResourceExhausted). release, never nil, is
	// called when the call ends: a key's concurrency slot is held until then.
	Authenticate func(r *http.Request) (id op.Identity, release func(), err error)
	// RequestID returns the client's X-Request-ID when acceptable, or one
	// the server draws.
	RequestID func(r *http.Request) string
	// Observe counts a finished call: its path, HTTP status and duration.
	Observe func(path string, status int, d time.Duration)
	// Audited starts an audited call in the core for every request.
	Audited bool
	Log     *slog.Logger
	// BasePath is the path of the PDP identifier ("" or "/a/b"): the
	// endpoints are served under it, and the metadata at the well-known
	// path with it appended, as AuthZEN 1.0's metadata section forms the
	// well-known URL from an identifier with a path.
	BasePath string
}

var basePath = regexp.MustCompile(`^(/[A-Za-z0-9._~\-]+)*$`)

// CheckBasePath validates a PDP base path.
func CheckBasePath(p string) error {
	if !basePath.MatchString(p) {
		return fmt.Errorf("AuthZEN base path %q: expected \"\" or /segment[/segment...] (letters, digits and ._~-), without a trailing slash", p)
	}
	return nil
}

// Patterns are the ServeMux patterns the handler serves, to mount it.
func (h *Handler) Patterns() []string {
	return []string{h.cfg.BasePath + "/access/v1/", "GET " + PathMetadata + h.cfg.BasePath}
}

// Handler serves the AuthZEN API.
type Handler struct {
	cfg Config
	m   *Mapping
	mux *http.ServeMux
}

// New builds the handler.
func New(cfg Config) (*Handler, error) {
	if cfg.Core == nil || cfg.Authenticate == nil {
		return nil, errors.New("authzen: a core and an authenticator are required")
	}
	if err := CheckBasePath(cfg.BasePath); err != nil {
		return nil, err
	}
	base := cfg.BasePath
	if cfg.RequestID == nil {
		cfg.RequestID = func(r *http.Request) string { return r.Header.Get(RequestIDHeader) }
	}
	if cfg.Observe == nil {
		cfg.Observe = func(string, int, time.Duration) {}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	h := &Handler{cfg: cfg, m: cfg.Mapping, mux: http.NewServeMux()}
	if h.m == nil {
		h.m = &Mapping{}
	}
	h.mux.Handle("POST "+base+PathEvaluation, h.endpoint(PathEvaluation, op.CheckRequest{}, h.evaluation))
	h.mux.Handle("POST "+base+PathEvaluations, h.endpoint(PathEvaluations, op.CheckBulkRequest{}, h.evaluations))
	h.mux.Handle("POST "+base+PathSearchSubject, h.endpoint(PathSearchSubject, op.LookupSubjectsRequest{}, h.searchSubject))
	h.mux.Handle("POST "+base+PathSearchResource, h.endpoint(PathSearchResource, op.LookupResourcesRequest{}, h.searchResource))
	h.mux.Handle("POST "+base+PathSearchAction, h.endpoint(PathSearchAction, op.CheckBulkRequest{}, h.searchAction))
	h.mux.HandleFunc("GET "+PathMetadata+base, h.metadata)
	h.mux.HandleFunc(base+"/access/v1/", func(w http.ResponseWriter, r *http.Request) {
		status := http.StatusNotFound
		msg := fmt.Sprintf("%s is not an AuthZEN 1.0 endpoint (evaluation, evaluations, search/subject, search/resource, search/action)", r.URL.Path)
		if r.Method != http.MethodPost {
			status, msg = http.StatusMethodNotAllowed, fmt.Sprintf("%s takes POST, not %s", r.URL.Path, r.Method)
			w.Header().Set("Allow", http.MethodPost)
		}
		w.Header().Set(RequestIDHeader, cfg.RequestID(r))
		writeError(w, &Error{Status: status, Code: "not_found", Message: msg})
	})
	return h, nil
}

// ServeHTTP serves the API's paths.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// operation runs one parsed call; it sets *parsed to what of the request
// it understood, for the audit of a call refused before the core ran.
type operation func(ctx context.Context, body []byte, parsed *op.Request) (any, error)

func (h *Handler) endpoint(path string, refused op.Request, run operation) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		status := http.StatusOK
		w.Header().Set(RequestIDHeader, h.cfg.RequestID(r))
		defer func() {
			if rec := recover(); rec != nil {
				h.cfg.Log.Error("panic serving an AuthZEN request", "path", path, "panic", fmt.Sprint(rec), "stack", string(debug.Stack()))
				status = writeError(w, &Error{Status: http.StatusInternalServerError, Code: "internal", Message: "internal error serving " + path})
			}
			h.cfg.Observe(path, status, time.Since(start))
		}()
		ctx := r.Context()
		id, release, err := h.cfg.Authenticate(r)
		defer release()
		if err != nil {
			err = authError(err)
		} else {
			ctx = op.WithIdentity(ctx, id)
		}
		ctx, cancel := context.WithTimeout(ctx, h.cfg.Core.Limits().RequestTimeout)
		defer cancel()
		var call *op.Call
		if h.cfg.Audited {
			ctx, call = h.cfg.Core.Begin(ctx, op.CallInfo{
				RequestID: w.Header().Get(RequestIDHeader), Source: r.RemoteAddr, Transport: Transport, Classify: classify,
			})
		}
		parsed := refused
		var resp any
		if err == nil {
			var body []byte
			if body, err = h.readBody(w, r); err == nil {
				resp, err = run(ctx, body, &parsed)
			}
		}
		h.cfg.Core.End(ctx, call, func() op.Request { return parsed }, auditErr(err, resp))
		if err != nil {
			if status = writeError(w, toError(ctx, err)); status >= 500 {
				h.cfg.Log.Error("AuthZEN request failed", "path", path, "error", err)
			}
			return
		}
		if u, ok := resp.(unknownAction); ok {
			resp = u.answer
		}
		writeJSON(w, http.StatusOK, resp)
	})
}

// readBody reads the request body within the server's message size.
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	limit := int64(h.cfg.Core.Limits().MaxMessageBytes)
	if r.ContentLength > limit {
		return nil, &Error{Status: http.StatusRequestEntityTooLarge, Code: "too_large",
			Message: fmt.Sprintf("request body of %d bytes exceeds the limit of %d bytes (--max-message-size)", r.ContentLength, limit)}
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return nil, &Error{Status: http.StatusRequestEntityTooLarge, Code: "too_large",
			Message: fmt.Sprintf("request body exceeds the limit of %d bytes (--max-message-size)", limit)}
	}
	if err != nil {
		return nil, badRequest("", "reading the request body: %v", err)
	}
	return b, nil
}

// decode parses a JSON body into v, naming the member a type error is at.
func decode(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return badRequest("", "the request body is empty: expected a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		var se *json.SyntaxError
		switch {
		case errors.As(err, &te) && te.Field != "":
			return badRequest(te.Field, "expected %s, got a JSON %s", jsonKind(te.Type.Kind().String()), te.Value)
		case errors.As(err, &te):
			return badRequest("", "expected a JSON object, got a JSON %s", te.Value)
		case errors.As(err, &se):
			return badRequest("", "malformed JSON at byte %d: %v", se.Offset, err)
		}
		return badRequest("", "malformed JSON: %v", err)
	}
	if dec.More() {
		return badRequest("", "the body holds more than one JSON value")
	}
	return nil
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "a string"
	case "bool":
		return "a boolean"
	case "map", "struct", "ptr":
		return "an object"
	case "slice":
		return "an array"
	case "int", "float64":
		return "a number"
	}
	return goKind
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// metadata answers the PDP metadata (AuthZEN 1.0, Policy Decision Point
// Metadata): the endpoints, absolute, on the address the client used.
func (h *Handler) metadata(w http.ResponseWriter, r *http.Request) {
	w.Header().Set(RequestIDHeader, h.cfg.RequestID(r))
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	base := scheme + "://" + r.Host + h.cfg.BasePath
	writeJSON(w, http.StatusOK, map[string]string{
		"policy_decision_point":       base,
		"access_evaluation_endpoint":  base + PathEvaluation,
		"access_evaluations_endpoint": base + PathEvaluations,
		"search_subject_endpoint":     base + PathSearchSubject,
		"search_resource_endpoint":    base + PathSearchResource,
		"search_action_endpoint":      base + PathSearchAction,
	})
}

// authError words a refused caller: 403 for a key without the scope, 429
// for one over its limits, else 401.
func authError(err error) *Error {
	msg := status.Convert(err).Message()
	switch status.Code(err) {
	case codes.PermissionDenied:
		return &Error{Status: http.StatusForbidden, Code: "forbidden", Message: msg}
	case codes.ResourceExhausted:
		return &Error{Status: http.StatusTooManyRequests, Code: "too_many_requests", Message: msg}
	}
	return &Error{Status: http.StatusUnauthorized, Code: "unauthenticated", Message: msg}
}
