package server

// This file and the other authzed_*.go files serve SpiceDB's authzed.api.v1
// API (PermissionsService, SchemaService, WatchService) on the gRPC listener
// beside mandate.v1, so that zed and the authzed client libraries work
// against Mandate unchanged. They only translate: every call goes to the
// operation core (server/op) and the interceptors (auth, request timeout,
// metrics) as mandate.v1's do. What they add is SpiceDB's request shapes,
// its error codes for the same mistakes, and two things
// SpiceDB's API has no field for: an agent's principal (the
// mandate-on-behalf-of header) and the engine's delegation semantics, which
// apply whenever a check's subject is an agent type.

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/server/op"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// OnBehalfOfHeader is the gRPC metadata key that names, as "type:id", the
// principal an agent subject acts for in authzed.api.v1 CheckPermission,
// CheckBulkPermissions and LookupResources calls; SpiceDB's requests have no
// on_behalf_of field. It is needed only when the agent acts for several
// principals.
const OnBehalfOfHeader = "mandate-on-behalf-of"

// CapabilityHeader is the gRPC metadata header carrying a capability token
// in authzed.api.v1 CheckPermission and CheckBulkPermissions calls (every
// item of a bulk call is checked with it); SpiceDB's requests have no field
// for one. See op.CheckRequest.CapabilityToken.
const CapabilityHeader = "mandate-capability"

// authzedServiceNames are the authzed.api.v1 services served, for health.
var authzedServiceNames = []string{
	v1.PermissionsService_ServiceDesc.ServiceName,
	v1.SchemaService_ServiceDesc.ServiceName,
	v1.WatchService_ServiceDesc.ServiceName,
}

// registerAuthzed registers the authzed.api.v1 services. Methods not
// implemented (ReflectSchema, DiffSchema, the ExperimentalService, ...)
// answer Unimplemented through the embedded defaults.
func (s *Server) registerAuthzed(g grpc.ServiceRegistrar) {
	v1.RegisterPermissionsServiceServer(g, &authzedPermissions{s: s})
	v1.RegisterSchemaServiceServer(g, &authzedSchema{s: s})
	v1.RegisterWatchServiceServer(g, &authzedWatch{s: s})
}

// spiceDBErrorDomain is the domain of the ErrorInfo details SpiceDB attaches
// to its errors; clients match reasons under it.
const spiceDBErrorDomain = "authzed.com"

// authzedErr returns a status with code and message carrying SpiceDB's
// ErrorInfo reason, so that clients that switch on the reason keep working.
func authzedErr(code codes.Code, reason v1.ErrorReason, format string, args ...any) error {
	return authzedErrInfo(code, reason, nil, format, args...)
}

// authzedErrInfo is authzedErr with the ErrorInfo metadata SpiceDB sends
// for the reason (clients such as zed word their messages from it).
func authzedErrInfo(code codes.Code, reason v1.ErrorReason, metadata map[string]string, format string, args ...any) error {
	st := status.New(code, fmt.Sprintf(format, args...))
	if reason == v1.ErrorReason_ERROR_REASON_UNSPECIFIED {
		return st.Err()
	}
	withInfo, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason.String(), Domain: spiceDBErrorDomain, Metadata: metadata})
	if err != nil {
		return st.Err()
	}
	return withInfo.Err()
}

// validatable is a request with protoc-gen-validate rules; SpiceDB refuses
// requests that break them with InvalidArgument before anything else.
type validatable interface{ Validate() error }

// handwritten is a request with the checks authzed-go adds by hand (no
// wildcard resource IDs and the like).
type handwritten interface{ HandwrittenValidate() error }

// validateAuthzed applies the request-shape rules SpiceDB applies.
func validateAuthzed(req validatable) error {
	if err := req.Validate(); err != nil {
		return status.Errorf(codes.InvalidArgument, "invalid request: %v", err)
	}
	if h, ok := req.(handwritten); ok {
		if err := h.HandwrittenValidate(); err != nil {
			return status.Errorf(codes.InvalidArgument, "invalid request: %v", err)
		}
	}
	return nil
}

// authzedStatus converts an engine or store error into the status SpiceDB
// returns for the same mistake. Status errors pass through.
func authzedStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	is := func(targets ...error) bool {
		for _, t := range targets {
			if errors.Is(err, t) {
				return true
			}
		}
		return false
	}
	msg := err.Error()
	var se *schema.Error
	var limit *op.LimitError
	var ahead *op.TokenAheadError
	var full *op.HistoryFullError
	switch {
	case errors.As(err, &full):
		return historyFullStatus(full)
	case errors.As(err, &limit):
		return authzedLimitStatus(limit)
	case errors.As(err, &ahead):
		return status.Errorf(codes.OutOfRange, "invalid revision: %s names revision %d but the store is at %d", ahead.Field, ahead.Revision, ahead.Head)
	case is(op.ErrSchemaNotFound):
		return status.Error(codes.NotFound, "No schema has been defined; please call WriteSchema to start")
	case is(op.ErrUnavailable):
		return status.Error(codes.Unavailable, msg)
	case is(context.DeadlineExceeded, context.Canceled):
		return status.FromContextError(err).Err()
	case is(store.ErrAlreadyExists):
		return authzedErr(codes.AlreadyExists, v1.ErrorReason_ERROR_REASON_ATTEMPT_TO_RECREATE_RELATIONSHIP, "%s", msg)
	case is(engine.ErrMaxDepth):
		return authzedErr(codes.ResourceExhausted, v1.ErrorReason_ERROR_REASON_MAXIMUM_DEPTH_EXCEEDED, "%s", msg)
	case is(engine.ErrRevisionAhead):
		return status.Error(codes.Unavailable, msg)
	case is(engine.ErrRevisionGone, store.ErrRevisionGone, store.ErrFutureRevision):
		return status.Errorf(codes.OutOfRange, "invalid revision: %s (a revision stays readable for the retention window after a later write supersedes it, --revision-retention; use a recent ZedToken or fully_consistent)", msg)
	case is(engine.ErrAmbiguousAgent):
		return status.Errorf(codes.FailedPrecondition, "%s (send the principal as gRPC metadata %q, e.g. %s: user:alice)", msg, OnBehalfOfHeader, OnBehalfOfHeader)
	case is(engine.ErrUnknownType, engine.ErrNoSchema, store.ErrNoSchema):
		return authzedErr(codes.FailedPrecondition, v1.ErrorReason_ERROR_REASON_UNKNOWN_DEFINITION, "%s", msg)
	case is(engine.ErrUnknownRelation):
		return authzedErr(codes.FailedPrecondition, v1.ErrorReason_ERROR_REASON_UNKNOWN_RELATION_OR_PERMISSION, "%s", msg)
	case is(store.ErrPreconditionFailed):
		return authzedErr(codes.FailedPrecondition, v1.ErrorReason_ERROR_REASON_WRITE_OR_DELETE_PRECONDITION_FAILURE, "%s", msg)
	case is(store.ErrLimitExceeded):
		return authzedErr(codes.InvalidArgument, v1.ErrorReason_ERROR_REASON_TOO_MANY_RELATIONSHIPS_FOR_TRANSACTIONAL_DELETE, "%s", msg)
	case is(store.ErrSchemaOrphans):
		return authzedErr(codes.InvalidArgument, v1.ErrorReason_ERROR_REASON_SCHEMA_TYPE_ERROR, "%s", msg)
	case is(store.ErrInvalidSchema) || errors.As(err, &se):
		return authzedErr(codes.InvalidArgument, v1.ErrorReason_ERROR_REASON_SCHEMA_PARSE_ERROR, "%s", msg)
	case is(engine.ErrInvalidContext):
		return authzedErr(codes.InvalidArgument, v1.ErrorReason_ERROR_REASON_CAVEAT_PARAMETER_TYPE_ERROR, "%s", msg)
	case is(store.ErrTooManyMutations):
		return authzedErr(codes.InvalidArgument, v1.ErrorReason_ERROR_REASON_TOO_MANY_UPDATES_IN_REQUEST, "%s", msg)
	case is(engine.ErrInvalidOnBehalfOf, store.ErrInvalidRelationship):
		return status.Error(codes.InvalidArgument, msg)
	}
	return toStatus(err)
}

// authzedLimitStatus words a limit error as SpiceDB does.
func authzedLimitStatus(e *op.LimitError) error {
	switch e.Limit {
	case op.LimitCheckBulkItems:
		return authzedErr(codes.InvalidArgument, v1.ErrorReason_ERROR_REASON_TOO_MANY_CHECKS_IN_REQUEST,
			"check count of %d is greater than maximum allowed of %d (--max-check-bulk-items)", e.Got, e.Max)
	case op.LimitWriteUpdates:
		return authzedErr(codes.InvalidArgument, v1.ErrorReason_ERROR_REASON_TOO_MANY_UPDATES_IN_REQUEST,
			"too many updates (%d) for WriteRelationships call (maximum: %d, --write-relationships-max-updates-per-call); consider using ImportBulkRelationships API instead", e.Got, e.Max)
	case op.LimitPreconditions:
		return authzedErr(codes.InvalidArgument, v1.ErrorReason_ERROR_REASON_TOO_MANY_PRECONDITIONS_IN_REQUEST,
			"precondition count of %d is greater than maximum allowed of %d (--update-relationships-max-preconditions-per-call)", e.Got, e.Max)
	case op.LimitLookup:
		return limitError(e.Got, e.Max, "--max-lookup-limit")
	case op.LimitRead:
		return limitError(e.Got, e.Max, "--max-read-relationships-limit")
	case op.LimitDelete:
		return limitError(e.Got, e.Max, "--max-delete-relationships-limit")
	case op.LimitBulkBatch:
		return limitError(e.Got, e.Max, "--max-bulk-relationships-batch")
	}
	return status.Error(codes.InvalidArgument, e.Error())
}

// limitError is SpiceDB's answer to a limit over the server's maximum.
func limitError(limit, max int, flag string) error {
	return authzedErr(codes.InvalidArgument, v1.ErrorReason_ERROR_REASON_EXCEEDS_MAXIMUM_ALLOWABLE_LIMIT,
		"provided limit %d is greater than maximum allowed of %d (%s)", limit, max, flag)
}

// classifyAuthzed names an error's outcome as authzed.api.v1 returns it,
// for audit events.
func classifyAuthzed(err error) (string, string) {
	st := status.Convert(authzedStatus(err))
	return st.Code().String(), st.Message()
}

// classifyWriteError gives a write the store refused SpiceDB's code: a name
// the schema lacks is FailedPrecondition, other invalid relationships
// InvalidArgument. Naming costs nothing on writes that succeed.
func (s *Server) classifyWriteError(ctx context.Context, err error, muts []store.Mutation) error {
	if errors.Is(err, store.ErrInvalidRelationship) || errors.Is(err, store.ErrNoSchema) {
		if sch, serr := s.core.HeadSchema(ctx); serr == nil {
			for _, m := range muts {
				if nerr := checkRelationshipNames(sch, m.Rel); nerr != nil {
					return nerr
				}
			}
		}
	}
	return authzedStatus(err)
}

// checkTypeAndRelation reports a type or relation the schema lacks with
// SpiceDB's FailedPrecondition. relation may be "" (the object itself).
func checkTypeAndRelation(sch *schema.Schema, typ, relation string) error {
	if sch == nil || sch.Definition(typ) == nil {
		return authzedErr(codes.FailedPrecondition, v1.ErrorReason_ERROR_REASON_UNKNOWN_DEFINITION, "object definition `%s` not found", typ)
	}
	if relation != "" && sch.Relation(typ, relation) == nil {
		return authzedErr(codes.FailedPrecondition, v1.ErrorReason_ERROR_REASON_UNKNOWN_RELATION_OR_PERMISSION, "relation/permission `%s` not found under definition `%s`", relation, typ)
	}
	return nil
}

// checkRelationshipNames reports the names of a relationship to be written
// that the schema lacks, as SpiceDB does before the store validates the rest.
func checkRelationshipNames(sch *schema.Schema, r rel.Relationship) error {
	if err := checkTypeAndRelation(sch, r.Resource.Type, r.Relation); err != nil {
		return err
	}
	// An unknown caveat is an invalid subject type to SpiceDB, which checks
	// the relation's allowed types first: InvalidArgument, from the store.
	return checkTypeAndRelation(sch, r.Subject.Type, r.Subject.Relation)
}

// --- consistency and tokens ---

// consistencyFromV1 parses SpiceDB's consistency requirement. A
// well-formed ZedToken issued by a different Mandate store is foreign: as
// SpiceDB's default (--mismatch-zed-token-behavior=full-consistency),
// at_least_as_fresh then reads fully consistent; an exact snapshot cannot
// be served from it.
func (s *Server) consistencyFromV1(c *v1.Consistency) (op.Consistency, error) {
	switch r := c.GetRequirement().(type) {
	case *v1.Consistency_FullyConsistent:
		if r.FullyConsistent {
			return op.Consistency{Mode: op.FullyConsistent}, nil
		}
	case *v1.Consistency_AtLeastAsFresh:
		return s.zedTokenConsistency(op.AtLeastAsFresh, "consistency.at_least_as_fresh", r.AtLeastAsFresh)
	case *v1.Consistency_AtExactSnapshot:
		cons, err := s.zedTokenConsistency(op.AtExactSnapshot, "consistency.at_exact_snapshot", r.AtExactSnapshot)
		if err == nil && cons.Foreign {
			return op.Consistency{}, status.Error(codes.InvalidArgument, "consistency.at_exact_snapshot: the ZedToken was issued by a different Mandate store; an exact snapshot needs a token from this one")
		}
		return cons, err
	}
	return op.Consistency{}, nil
}

// zedTokenConsistency decodes a ZedToken; Foreign marks a well-formed token
// of another store.
func (s *Server) zedTokenConsistency(mode op.Mode, field string, t *v1.ZedToken) (op.Consistency, error) {
	rev, err := s.inst.decodeToken(field, t.GetToken())
	if err != nil {
		if foreignToken(t.GetToken()) {
			return op.Consistency{Mode: mode, Field: field, Foreign: true}, nil
		}
		return op.Consistency{}, status.Errorf(codes.InvalidArgument, "invalid revision requested: %s", status.Convert(err).Message())
	}
	return op.Consistency{Mode: mode, Revision: rev, Field: field}, nil
}

// foreignToken reports whether text is a well-formed revision token of some
// other store instance: it decodes under the instance it names.
func foreignToken(text string) bool {
	raw, err := base64.RawURLEncoding.DecodeString(text)
	if err != nil || len(raw) < headerLen {
		return false
	}
	var other instanceID
	copy(other[:], raw[2:headerLen])
	_, err = other.decodeToken("token", text)
	return err == nil
}

func (s *Server) zedToken(rev store.Revision) *v1.ZedToken {
	return &v1.ZedToken{Token: s.inst.encodeToken(rev)}
}

// onBehalfOf reads the principal from the mandate-on-behalf-of header; nil
// when absent.
// capabilityToken reads CapabilityHeader ("" when it is not sent).
func capabilityToken(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	values := md.Get(CapabilityHeader)
	switch len(values) {
	case 0:
		return "", nil
	case 1:
		if values[0] == "" {
			return "", status.Errorf(codes.InvalidArgument, "metadata %s: empty; send a capability token or leave the header out", CapabilityHeader)
		}
		return values[0], nil
	}
	return "", status.Errorf(codes.InvalidArgument, "metadata %s: sent %d times; send one capability token", CapabilityHeader, len(values))
}

func onBehalfOf(ctx context.Context) (*rel.Object, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	values := md.Get(OnBehalfOfHeader)
	if len(values) == 0 {
		return nil, nil
	}
	if len(values) > 1 {
		return nil, status.Errorf(codes.InvalidArgument, "metadata %s: sent %d times; name one principal", OnBehalfOfHeader, len(values))
	}
	typ, id, ok := strings.Cut(strings.TrimSpace(values[0]), ":")
	o := rel.Object{Type: typ, ID: id}
	if !ok {
		return nil, status.Errorf(codes.InvalidArgument, "metadata %s: %q: expected type:id, e.g. user:alice", OnBehalfOfHeader, clip(values[0]))
	}
	if err := rel.ValidateObject(o); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "metadata %s: %v", OnBehalfOfHeader, err)
	}
	return &o, nil
}
