package server

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/store"
)

// toStatus converts any error a handler meets into a gRPC status error whose
// message says what went wrong. Status errors pass through unchanged.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codeOf(err), err.Error())
}

// codeOf maps the engine's and the store's sentinel errors to gRPC codes.
// Naming something the schema does not define is the caller's mistake
// (InvalidArgument); a request the current state cannot serve is
// FailedPrecondition.
func codeOf(err error) codes.Code {
	if s, ok := status.FromError(err); ok {
		return s.Code()
	}
	var se *schema.Error
	is := func(targets ...error) bool {
		for _, t := range targets {
			if errors.Is(err, t) {
				return true
			}
		}
		return false
	}
	switch {
	case is(context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case is(context.Canceled):
		return codes.Canceled
	case is(store.ErrAlreadyExists):
		return codes.AlreadyExists
	case is(engine.ErrMaxDepth):
		return codes.ResourceExhausted
	case is(engine.ErrRevisionAhead):
		return codes.Unavailable
	case is(engine.ErrNoSchema, store.ErrNoSchema, store.ErrSchemaOrphans, store.ErrPreconditionFailed,
		store.ErrLimitExceeded, engine.ErrRevisionGone, store.ErrRevisionGone):
		return codes.FailedPrecondition
	case is(engine.ErrUnknownType, engine.ErrUnknownRelation, engine.ErrInvalidContext,
		engine.ErrInvalidOnBehalfOf, engine.ErrAmbiguousAgent, store.ErrInvalidSchema,
		store.ErrInvalidRelationship, store.ErrFutureRevision, store.ErrTooManyMutations):
		return codes.InvalidArgument
	case errors.As(err, &se):
		return codes.InvalidArgument
	case storeUnreachable(err):
		return codes.Unavailable
	}
	return codes.Internal
}

// storeUnreachable reports an error from losing the store's database rather
// than from the request: a network error, a connection cut mid-reply, a
// driver error raised before anything was sent (SafeToRetry, as pgx reports
// a closed connection), or the database refusing work while it shuts down
// or starts (SQLSTATE class 08 and 57P01-57P03). Clients may retry these;
// a write cut off mid-commit may or may not have committed.
func storeUnreachable(err error) bool {
	var netErr net.Error
	if errors.As(err, &netErr) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return true
	}
	var retry interface{ SafeToRetry() bool }
	if errors.As(err, &retry) && retry.SafeToRetry() {
		return true
	}
	var sql interface{ SQLState() string }
	if errors.As(err, &sql) {
		code := sql.SQLState()
		return strings.HasPrefix(code, "08") || code == "57P01" || code == "57P02" || code == "57P03"
	}
	return false
}
