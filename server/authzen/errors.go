package authzen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/server/op"
	"github.com/mandate-authz/mandate/store"
)

// Error is an AuthZEN error answer (AuthZEN 1.0, Transport: 400, 401,
// 403, 500), its body {"error": {"status", "code", "message"}}. A request
// error's message starts with the JSON member it is about.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Message }

func badRequest(member, format string, args ...any) *Error {
	msg := fmt.Sprintf(format, args...)
	if member != "" {
		msg = member + ": " + msg
	}
	return &Error{Status: http.StatusBadRequest, Code: "bad_request", Message: msg}
}

// errUnknownAction marks an action the resource's type has no permission
// for: a denial, not an error (a PEP may ask about any action).
var errUnknownAction = errors.New("unknown_action: the resource's type has no such permission")

// unknownAction is a denial for an unknown action, audited as such.
type unknownAction struct{ answer any }

// auditErr is the error a call's audit records: a refused unknown action
// is recorded as such though it is answered with a denial.
func auditErr(err error, resp any) error {
	if _, ok := resp.(unknownAction); ok && err == nil {
		return errUnknownAction
	}
	return err
}

// toError words any error in AuthZEN's terms. Naming something the schema
// does not define, bad caveat context and limits are the caller's
// mistakes (400); what the PDP cannot serve now is 503; the rest is 500.
func toError(ctx context.Context, err error) *Error {
	var ae *Error
	if errors.As(err, &ae) {
		return ae
	}
	var limit *op.LimitError
	if errors.As(err, &limit) {
		switch limit.Limit {
		case op.LimitCheckBulkItems:
			return badRequest("evaluations", "%d evaluations, at most %d per request (--max-check-bulk-items)", limit.Got, limit.Max)
		case op.LimitContextual:
			return badRequest("", "the mapping's relationships made more than %d contextual relationships from the request, at most %d per request (--max-contextual-relationships)", limit.Max, limit.Max)
		}
		return badRequest("", "%v", limit)
	}
	is := func(targets ...error) bool {
		for _, t := range targets {
			if errors.Is(err, t) {
				return true
			}
		}
		return false
	}
	switch {
	case is(context.DeadlineExceeded) && ctx.Err() != nil:
		return &Error{Status: http.StatusServiceUnavailable, Code: "deadline_exceeded", Message: "request deadline exceeded: " + err.Error()}
	case is(op.ErrUnavailable, engine.ErrRevisionAhead) || op.StoreUnreachable(err):
		return &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: err.Error()}
	case is(engine.ErrNoSchema, store.ErrNoSchema, op.ErrSchemaNotFound):
		return &Error{Status: http.StatusInternalServerError, Code: "no_schema", Message: "the PDP has no schema: write one with mandate schema write"}
	case is(engine.ErrInvalidContext):
		return badRequest("context", "%v", err)
	case is(op.ErrTokensOff):
		return badRequest("context."+ContextCapabilityToken, "this PDP does not verify capability tokens (start mandate serve with capability keys)")
	case is(op.ErrInvalidTokenCheck):
		return badRequest("context."+ContextCapabilityToken, "%v", err)
	case is(engine.ErrInvalidContextual):
		return badRequest("", "%v (made by the mapping's relationships from the request)", err)
	case is(engine.ErrUnknownType, engine.ErrUnknownRelation, engine.ErrInvalidOnBehalfOf, engine.ErrAmbiguousAgent):
		return badRequest("", "%v", err)
	case is(engine.ErrMaxDepth):
		return &Error{Status: http.StatusBadRequest, Code: "too_deep", Message: err.Error()}
	}
	return &Error{Status: http.StatusInternalServerError, Code: "internal", Message: "internal error"}
}

// classify names an error's outcome in the audit trail as the caller saw it.
func classify(err error) (string, string) {
	if errors.Is(err, errUnknownAction) {
		return "unknown_action", err.Error()
	}
	e := toError(context.Background(), err)
	if e.Code == "internal" {
		return e.Code, err.Error()
	}
	return e.Code, e.Message
}

func writeError(w http.ResponseWriter, e *Error) int {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.Status)
	json.NewEncoder(w).Encode(errorBody{Error: errorDetail(*e)})
	return e.Status
}
