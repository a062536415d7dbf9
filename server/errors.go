package server

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/server/audit"
	"github.com/mandate-authz/mandate/server/capability"
	"github.com/mandate-authz/mandate/server/op"
	"github.com/mandate-authz/mandate/store"
)

// toStatus converts any error a mandate.v1 handler meets into a gRPC status
// error whose message says what went wrong. Status errors pass through
// unchanged.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var limit *op.LimitError
	var ahead *op.TokenAheadError
	var imp *op.ImportError
	var full *op.HistoryFullError
	switch {
	case errors.As(err, &full):
		return historyFullStatus(full)
	case errors.As(err, &limit):
		return limitStatus(limit)
	case errors.As(err, &ahead):
		return status.Error(codes.InvalidArgument, ahead.Error())
	case errors.As(err, &imp):
		committed := fmt.Sprintf("; %d relationships from %d earlier batches were committed", imp.Committed, imp.Batches)
		return status.Errorf(codeOf(imp.Err), "batch %d: %v%s", imp.Batch, imp.Err, committed)
	case errors.Is(err, op.ErrSchemaNotFound):
		return status.Error(codes.NotFound, "no schema has been written")
	}
	return status.Error(codeOf(err), err.Error())
}

// limitStatus words a limit error in mandate.v1's terms, naming the field
// and the flag that sets the limit.
func limitStatus(e *op.LimitError) error {
	over := func(field, flag string) error {
		return invalid(field, "%d is over the server's maximum of %d (%s)", e.Got, e.Max, flag)
	}
	switch e.Limit {
	case op.LimitCheckBulkItems:
		return invalid("items", "%d checks, at most %d per CheckBulk (--max-check-bulk-items)", e.Got, e.Max)
	case op.LimitWriteUpdates:
		return invalid("updates", "%d updates, at most %d per call (--write-relationships-max-updates-per-call)", e.Got, e.Max)
	case op.LimitPreconditions:
		return status.Errorf(codes.InvalidArgument, "optional_preconditions: %d preconditions, at most %d per call", e.Got, e.Max)
	case op.LimitLookup:
		return over("optional_limit", "--max-lookup-limit")
	case op.LimitRead:
		return over("optional_limit", "--max-read-relationships-limit")
	case op.LimitDelete:
		return over("optional_limit", "--max-delete-relationships-limit")
	case op.LimitBulkBatch:
		return over("optional_batch_size", "--max-bulk-relationships-batch")
	case op.LimitContextual:
		return invalid("contextual_relationships", "%d relationships, at most %d per request (--max-contextual-relationships)", e.Got, e.Max)
	}
	return status.Error(codes.InvalidArgument, e.Error())
}

// codeOf maps the engine's, the store's and the core's sentinel errors to
// gRPC codes. Naming something the schema does not define is the caller's
// mistake (InvalidArgument); a request the current state cannot serve is
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
	case is(op.ErrTokensOff):
		return codes.Unimplemented
	case is(capability.ErrNotHeld):
		return codes.PermissionDenied
	case is(context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case is(context.Canceled):
		return codes.Canceled
	case is(op.ErrUnavailable, engine.ErrRevisionAhead):
		return codes.Unavailable
	case is(store.ErrAlreadyExists):
		return codes.AlreadyExists
	case is(engine.ErrMaxDepth):
		return codes.ResourceExhausted
	case is(engine.ErrNoSchema, store.ErrNoSchema, store.ErrSchemaOrphans, store.ErrPreconditionFailed,
		store.ErrLimitExceeded, engine.ErrRevisionGone, store.ErrRevisionGone, op.ErrAuditOff, audit.ErrNotQueryable):
		return codes.FailedPrecondition
	case is(engine.ErrUnknownType, engine.ErrUnknownRelation, engine.ErrInvalidContext, engine.ErrInvalidContextual,
		engine.ErrInvalidOnBehalfOf, engine.ErrAmbiguousAgent, op.ErrInvalidTokenCheck, op.ErrInvalidTokenRequest, store.ErrInvalidSchema,
		store.ErrInvalidRelationship, store.ErrFutureRevision, store.ErrTooManyMutations):
		return codes.InvalidArgument
	case errors.As(err, &se):
		return codes.InvalidArgument
	case op.StoreUnreachable(err):
		return codes.Unavailable
	}
	return codes.Internal
}

// classifyMandate names an error's outcome as mandate.v1 returns it, for
// audit events.
func classifyMandate(err error) (string, string) {
	st := status.Convert(toStatus(err))
	return st.Code().String(), st.Message()
}
