package server

// Auditing: every mandate.v1 call (and every CheckBulk item and relationship
// update) becomes an audit event, built here from the request and the
// response by a gRPC interceptor, so that the handlers stay as they are and
// every return path, errors included, is audited alike. REST calls pass the
// same interceptor through the in-process gateway connection; SpiceDB's
// authzed.api.v1 calls are audited in audit_authzed.go.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server/audit"
	"github.com/mandate-authz/mandate/store"
)

// Auditor receives the server's audit events and answers queries over
// them; *audit.Log is the implementation. Record is called on the request
// path: it must be quick, and returns an error only when the event could
// not be accepted (the request then fails rather than go unaudited).
type Auditor interface {
	Record(ctx context.Context, ev *audit.Event) error
	Query(ctx context.Context, q audit.Query) (audit.Page, error)
	Flush(ctx context.Context) error
}

// RequestIDHeader is the metadata key (and HTTP header) of a request's ID:
// a client may send one (up to 128 printable ASCII characters) to find its
// calls in the trail; otherwise the server assigns one. (It is not echoed
// back: a client that wants to correlate sends its own.)
const RequestIDHeader = "x-request-id"

// auditMeta is what every event of one call shares.
type auditMeta struct {
	requestID, caller, source, transport string
}

func (m auditMeta) event(op audit.Operation) *audit.Event {
	return &audit.Event{
		Time:      time.Now().UTC(),
		RequestID: m.requestID,
		Caller:    m.caller,
		Source:    m.source,
		Transport: m.transport,
		Operation: op,
	}
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

// auditMetaOf collects a call's request ID, caller and source. It reads
// single metadata keys rather than copying the whole metadata: it runs on
// every call.
func (s *Server) auditMetaOf(ctx context.Context) auditMeta {
	m := auditMeta{transport: transportOf(ctx), caller: s.auth.callerName(metadata.ValueFromIncomingContext(ctx, "authorization"))}
	if v := metadata.ValueFromIncomingContext(ctx, RequestIDHeader); len(v) > 0 && validRequestID(v[0]) {
		m.requestID = v[0]
	} else {
		m.requestID = s.reqIDs.next()
	}
	if m.transport == "rest" {
		// The gateway appends the HTTP client's address to X-Forwarded-For;
		// earlier entries are the client's own claims.
		if v := metadata.ValueFromIncomingContext(ctx, "x-forwarded-for"); len(v) > 0 {
			last := v[len(v)-1]
			if i := strings.LastIndexByte(last, ','); i >= 0 {
				last = last[i+1:]
			}
			m.source = strings.TrimSpace(last)
		}
	} else if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		m.source = p.Addr.String()
	}
	return m
}

// auditHeaderMatcher forwards a REST client's X-Request-Id to the gRPC
// server, besides grpc-gateway's defaults.
func auditHeaderMatcher(key string) (string, bool) {
	if strings.EqualFold(key, RequestIDHeader) {
		return RequestIDHeader, true
	}
	return runtime.DefaultHeaderMatcher(key)
}

// auditUnary records the events of a unary call once it has been answered.
// A check that cannot be recorded fails (Unavailable) instead of being
// answered unaudited; a write that cannot be recorded has happened, so its
// answer stands and the loss is counted and logged by the Auditor.
func (s *Server) auditUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	build := unaryAuditors[info.FullMethod]
	if s.cfg.Audit == nil || build == nil {
		return handler(ctx, req)
	}
	meta := s.auditMetaOf(ctx)
	var slot *auditSlot
	if slotted[info.FullMethod] {
		slot = &auditSlot{}
		ctx = context.WithValue(ctx, auditSlotKey{}, slot)
	}
	resp, err := handler(ctx, req)
	a := auditCall{s: s, meta: meta, err: err, slot: slot}
	if isAuthzed(info.FullMethod) {
		a.obo = v1OnBehalfOf(ctx)
	}
	evs := build(&a, req, resp)
	if rerr := s.recordAll(ctx, info.FullMethod, evs); rerr != nil {
		return nil, rerr
	}
	return resp, err
}

// auditRefused records a call refused before its handler ran (a missing or
// wrong preshared key): failed attempts are what a security team watches
// for. The events carry the refusal's code; an audit failure is logged, the
// call being refused either way.
func (s *Server) auditRefused(ctx context.Context, method string, build func(*auditCall) []*audit.Event, err error) {
	if s.cfg.Audit == nil {
		return
	}
	a := auditCall{s: s, meta: s.auditMetaOf(ctx), err: err}
	if isAuthzed(method) {
		a.obo = v1OnBehalfOf(ctx)
	}
	c, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.lim.RequestTimeout)
	defer cancel()
	for _, ev := range build(&a) {
		if rerr := s.cfg.Audit.Record(c, ev); rerr != nil {
			s.log.Error("a refused call was not audited", "method", method, "request_id", ev.RequestID, "error", rerr)
			return
		}
	}
}

// recordAll records a call's events. Reads fail when the trail refuses
// them; mutations wait up to the request timeout past the client's
// cancellation, since their effect is already done.
func (s *Server) recordAll(ctx context.Context, method string, evs []*audit.Event) error {
	if mutating(method) {
		c, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.lim.RequestTimeout)
		defer cancel()
		for _, ev := range evs {
			if err := s.cfg.Audit.Record(c, ev); err != nil {
				s.log.Error("a write was not audited", "method", method, "request_id", ev.RequestID, "error", err)
				return nil
			}
		}
		return nil
	}
	for _, ev := range evs {
		if err := s.cfg.Audit.Record(ctx, ev); err != nil {
			return status.Errorf(codes.Unavailable, "the audit trail cannot record this call, so it is not answered (retry later): %v", err)
		}
	}
	return nil
}

// isAuthzed tells SpiceDB's authzed.api.v1 methods.
func isAuthzed(method string) bool { return strings.HasPrefix(method, "/authzed.api.v1.") }

func mutating(method string) bool {
	if mutatingAuthzed[method] {
		return true
	}
	switch method {
	case pb.RelationshipService_WriteRelationships_FullMethodName,
		pb.RelationshipService_DeleteRelationships_FullMethodName,
		pb.RelationshipService_ImportRelationships_FullMethodName,
		pb.SchemaService_WriteSchema_FullMethodName:
		return true
	}
	return false
}

// auditStream records the event of a streaming call when it ends, counting
// the messages it sent (lookup results, exported relationships) or
// received (import batches).
func (s *Server) auditStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	build := streamAuditors[info.FullMethod]
	if s.cfg.Audit == nil || build == nil {
		return handler(srv, ss)
	}
	meta := s.auditMetaOf(ss.Context())
	w := &auditedStream{ServerStream: ss}
	err := handler(srv, w)
	a := auditCall{s: s, meta: meta, err: err}
	if isAuthzed(info.FullMethod) {
		a.obo = v1OnBehalfOf(ss.Context())
	}
	ev := build(&a, w)
	if rerr := s.recordAll(ss.Context(), info.FullMethod, []*audit.Event{ev}); rerr != nil && err == nil {
		return rerr
	}
	return err
}

// auditedStream keeps a streaming call's request, first response and
// message counts.
type auditedStream struct {
	grpc.ServerStream
	req       any // the first message received
	first     any // the first message sent
	last      any // the last message sent
	sent      int64
	received  int64
	itemsRecv int64 // relationships received by an import
}

func (w *auditedStream) SendMsg(m any) error {
	err := w.ServerStream.SendMsg(m)
	if err == nil {
		if w.first == nil {
			w.first = m
		}
		w.last = m
		w.sent++
	}
	return err
}

func (w *auditedStream) RecvMsg(m any) error {
	err := w.ServerStream.RecvMsg(m)
	if err == nil {
		if w.req == nil {
			w.req = m
		}
		w.received++
		if r, ok := m.(*pb.ImportRelationshipsRequest); ok {
			w.itemsRecv += int64(len(r.GetRelationships()))
		}
	}
	return err
}

// auditCall builds one call's events.
type auditCall struct {
	s    *Server
	meta auditMeta
	err  error
	// slot holds what the handler added (authzed.api.v1 checks' chains).
	slot *auditSlot
	// obo is an authzed.api.v1 call's mandate-on-behalf-of header.
	obo *pb.ObjectReference
}

// event starts an event; a failed call's carries its status.
func (a *auditCall) event(op audit.Operation) *audit.Event {
	ev := a.meta.event(op)
	if a.err != nil {
		a.fail(ev, a.err)
	} else {
		ev.Decision = audit.OK
	}
	return ev
}

func (a *auditCall) fail(ev *audit.Event, err error) {
	st := status.Convert(toStatus(err))
	ev.Decision, ev.Code, ev.Error = audit.Error, st.Code().String(), st.Message()
}

// revision decodes a response's revision token. Most answers in a row
// carry the same token: the last one decoded is kept.
func (a *auditCall) revision(t *pb.RevisionToken) uint64 {
	tok := t.GetToken()
	if tok == "" {
		return 0
	}
	if last := a.s.lastToken.Load(); last != nil && last.token == tok {
		return last.rev
	}
	rev, err := a.s.inst.decodeToken("token", tok)
	if err != nil {
		return 0
	}
	a.s.lastToken.Store(&decodedToken{token: tok, rev: uint64(rev)})
	return uint64(rev)
}

// decodedToken is a revision token and its revision.
type decodedToken struct {
	token string
	rev   uint64
}

// kind tells a subject's kind from the schema in force at rev.
func (a *auditCall) kind(typ, relation string, rev uint64) audit.Kind {
	if relation != "" && relation != "..." {
		return audit.Userset
	}
	if a.s.isAgentType(typ, rev) {
		return audit.Agent
	}
	return audit.Person
}

// writtenKind tells the kind of a written relationship's subject. The
// engine may not have applied the write's revision yet (nor, right after a
// schema write, know the type): then it is given a moment to catch up.
func (a *auditCall) writtenKind(typ, relation string, rev uint64) audit.Kind {
	if relation != "" && relation != "..." {
		return audit.Userset
	}
	if sch := a.s.eng.Schema(0); rev > 0 && (sch == nil || sch.Definitions[typ] == nil) {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		a.s.eng.WaitForRevision(ctx, store.Revision(rev))
		cancel()
	}
	return a.kind(typ, relation, 0)
}

func (s *Server) isAgentType(typ string, rev uint64) bool {
	sch := s.eng.Schema(store.Revision(rev))
	if sch == nil {
		return false
	}
	d := sch.Definitions[typ]
	return d != nil && d.IsAgent()
}

// respAs returns a response as its type, or nil for a failed call.
func respAs[T any](resp any) T {
	v, _ := resp.(T)
	return v
}

func objString(o *pb.ObjectReference) string {
	if o == nil {
		return ""
	}
	return o.GetObjectType() + ":" + o.GetObjectId()
}

func subjString(s *pb.SubjectReference) string {
	if s == nil {
		return ""
	}
	out := objString(s.GetObject())
	if r := s.GetOptionalRelation(); r != "" && r != "..." {
		out += "#" + r
	}
	return out
}

func decisionOf(d pb.Decision) audit.Decision {
	switch d {
	case pb.Decision_DECISION_ALLOWED:
		return audit.Allowed
	case pb.Decision_DECISION_CONDITIONAL:
		return audit.Conditional
	}
	return audit.Denied
}

// writtenDetails records a written relationship's caveat, expiration and
// revision; c may be a nil message of either API.
func writtenDetails(ev *audit.Event, c interface {
	GetCaveatName() string
	GetContext() *structpb.Struct
}, expires *timestamppb.Timestamp, rev uint64) {
	if name := c.GetCaveatName(); name != "" {
		ev.Caveat, ev.Context = name, contextOf(c.GetContext())
	}
	if expires != nil {
		t := expires.AsTime().UTC()
		ev.ExpiresAt = &t
	}
	ev.Revision = rev
}

func contextOf(s *structpb.Struct) map[string]any {
	if s == nil || len(s.GetFields()) == 0 {
		return nil
	}
	return s.AsMap()
}

// checkEvent fills a check's event from its request parts and its answer
// (nil when it failed).
func (a *auditCall) checkEvent(ev *audit.Event, resource *pb.ObjectReference, permission string, subject *pb.SubjectReference,
	ctx *structpb.Struct, obo *pb.ObjectReference, decision pb.Decision, missing []string, d *pb.DelegationExplanation, rev uint64, failed bool) {
	ev.Resource, ev.Permission, ev.Subject = objString(resource), permission, subjString(subject)
	ev.OnBehalfOf = objString(obo)
	ev.Context = contextOf(ctx)
	ev.Revision = rev
	switch {
	case d != nil:
		ev.SubjectKind = audit.Agent
	case failed || a.slot != nil:
		// Without an answer, or through an API whose answers do not
		// explain agents' checks, ask the schema.
		ev.SubjectKind = a.kind(subject.GetObject().GetObjectType(), subject.GetOptionalRelation(), rev)
	case subject.GetOptionalRelation() != "" && subject.GetOptionalRelation() != "...":
		ev.SubjectKind = audit.Userset
	default:
		ev.SubjectKind = audit.Person // a mandate.v1 agent check always explains its chain
	}
	switch {
	case ev.SubjectKind == audit.Person:
		ev.Principal = ev.Subject
	case ev.SubjectKind == audit.Agent && d == nil:
		ev.Principal = ev.OnBehalfOf
	}
	if failed {
		return
	}
	ev.Decision, ev.Missing = decisionOf(decision), missing
	if d == nil {
		return
	}
	ev.Reason = d.GetReason()
	ev.ResolvableByApproval = d.GetResolvableByApproval()
	ev.Chain = make([]audit.Link, len(d.GetChain()))
	for i, e := range d.GetChain() {
		l := audit.Link{Subject: objString(e.GetSubject()), Grant: decisionOf(e.GetGrant()), Missing: e.GetMissingParameters()}
		if i < len(d.GetChain())-1 {
			l.Link = decisionOf(e.GetLink())
		}
		l.Failed = d.GetReason() != "" && int(d.GetFailedAt()) == i
		ev.Chain[i] = l
	}
	// The chain ends at the principal unless it failed before reaching a
	// person (no delegation, a cycle, too deep).
	if n := len(ev.Chain); n > 1 {
		last := d.GetChain()[n-1].GetSubject()
		if !a.s.isAgentType(last.GetObjectType(), rev) {
			ev.Principal = ev.Chain[n-1].Subject
		}
	}
}

var unaryAuditors = map[string]func(a *auditCall, req, resp any) []*audit.Event{
	pb.PermissionService_Check_FullMethodName: func(a *auditCall, req, resp any) []*audit.Event {
		r, _ := req.(*pb.CheckRequest)
		out, _ := resp.(*pb.CheckResponse)
		ev := a.event(audit.OpCheck)
		rev := a.revision(out.GetCheckedAt())
		a.checkEvent(ev, r.GetResource(), r.GetPermission(), r.GetSubject(), r.GetContext(), r.GetOnBehalfOf(),
			out.GetDecision(), out.GetMissingParameters(), out.GetDelegation(), rev, a.err != nil)
		return []*audit.Event{ev}
	},
	pb.PermissionService_CheckBulk_FullMethodName: func(a *auditCall, req, resp any) []*audit.Event {
		r, _ := req.(*pb.CheckBulkRequest)
		out, _ := resp.(*pb.CheckBulkResponse)
		if a.err != nil || out == nil {
			ev := a.event(audit.OpCheckBulk)
			ev.Count = int64(len(r.GetItems()))
			return []*audit.Event{ev}
		}
		rev := a.revision(out.GetCheckedAt())
		evs := make([]*audit.Event, len(out.GetPairs()))
		for i, p := range out.GetPairs() {
			it := p.GetRequest()
			ev := a.event(audit.OpCheckBulk)
			res := p.GetItem()
			if e := p.GetError(); e != nil {
				ev.Decision, ev.Code, ev.Error = audit.Error, codes.Code(e.GetCode()).String(), e.GetMessage()
			}
			a.checkEvent(ev, it.GetResource(), it.GetPermission(), it.GetSubject(), it.GetContext(), it.GetOnBehalfOf(),
				res.GetDecision(), res.GetMissingParameters(), res.GetDelegation(), rev, res == nil)
			evs[i] = ev
		}
		return evs
	},
	pb.PermissionService_Expand_FullMethodName: func(a *auditCall, req, resp any) []*audit.Event {
		r, _ := req.(*pb.ExpandRequest)
		out, _ := resp.(*pb.ExpandResponse)
		ev := a.event(audit.OpExpand)
		ev.Resource, ev.Permission, ev.Revision = objString(r.GetResource()), r.GetPermission(), a.revision(out.GetExpandedAt())
		return []*audit.Event{ev}
	},
	pb.RelationshipService_WriteRelationships_FullMethodName: func(a *auditCall, req, resp any) []*audit.Event {
		r, _ := req.(*pb.WriteRelationshipsRequest)
		out, _ := resp.(*pb.WriteRelationshipsResponse)
		rev := a.revision(out.GetWrittenAt())
		if len(r.GetUpdates()) == 0 {
			return []*audit.Event{a.event(audit.OpWriteRelationships)}
		}
		evs := make([]*audit.Event, len(r.GetUpdates()))
		for i, u := range r.GetUpdates() {
			ev := a.event(audit.OpWriteRelationships)
			rl := u.GetRelationship()
			ev.Update = strings.ToLower(strings.TrimPrefix(u.GetOperation().String(), "OPERATION_"))
			ev.Resource, ev.Permission, ev.Subject = objString(rl.GetResource()), rl.GetRelation(), subjString(rl.GetSubject())
			ev.SubjectKind = a.writtenKind(rl.GetSubject().GetObject().GetObjectType(), rl.GetSubject().GetOptionalRelation(), rev)
			writtenDetails(ev, rl.GetOptionalCaveat(), rl.GetOptionalExpiresAt(), rev)
			evs[i] = ev
		}
		return evs
	},
	pb.RelationshipService_DeleteRelationships_FullMethodName: func(a *auditCall, req, resp any) []*audit.Event {
		r, _ := req.(*pb.DeleteRelationshipsRequest)
		out, _ := resp.(*pb.DeleteRelationshipsResponse)
		ev := a.event(audit.OpDeleteRelationships)
		f := r.GetFilter()
		ev.Resource = f.GetResourceType()
		if ids := f.GetOptionalResourceIds(); len(ids) == 1 {
			ev.Resource += ":" + ids[0]
		}
		ev.Permission = f.GetOptionalRelation()
		if sf := f.GetOptionalSubjectFilter(); sf != nil && sf.GetOptionalSubjectId() != "" {
			ev.Subject = sf.GetSubjectType() + ":" + sf.GetOptionalSubjectId()
		}
		ev.Detail = "filter " + filterString(f)
		ev.Count, ev.Revision = int64(out.GetDeletedCount()), a.revision(out.GetDeletedAt())
		return []*audit.Event{ev}
	},
	pb.SchemaService_WriteSchema_FullMethodName: func(a *auditCall, req, resp any) []*audit.Event {
		r, _ := req.(*pb.WriteSchemaRequest)
		out, _ := resp.(*pb.WriteSchemaResponse)
		ev := a.event(audit.OpWriteSchema)
		sum := sha256.Sum256([]byte(r.GetSchema()))
		ev.Detail = fmt.Sprintf("schema sha256:%x, %d bytes", sum, len(r.GetSchema()))
		ev.Revision = a.revision(out.GetWrittenAt())
		return []*audit.Event{ev}
	},
	pb.SchemaService_ReadSchema_FullMethodName: func(a *auditCall, req, resp any) []*audit.Event {
		ev := a.event(audit.OpReadSchema)
		ev.Revision = a.revision(respAs[*pb.ReadSchemaResponse](resp).GetReadAt())
		return []*audit.Event{ev}
	},
	pb.SchemaService_ValidateSchema_FullMethodName: func(a *auditCall, req, resp any) []*audit.Event {
		ev := a.event(audit.OpValidateSchema)
		ev.Revision = a.revision(respAs[*pb.ValidateSchemaResponse](resp).GetComparedAt())
		return []*audit.Event{ev}
	},
	pb.AuditService_Query_FullMethodName: func(a *auditCall, req, resp any) []*audit.Event {
		r, _ := req.(*pb.AuditServiceQueryRequest)
		out, _ := resp.(*pb.AuditServiceQueryResponse)
		ev := a.event(audit.OpAuditQuery)
		ev.Detail = queryString(r)
		ev.Count = int64(len(out.GetEvents()))
		return []*audit.Event{ev}
	},
}

var streamAuditors = map[string]func(a *auditCall, w *auditedStream) *audit.Event{
	pb.PermissionService_LookupResources_FullMethodName: func(a *auditCall, w *auditedStream) *audit.Event {
		r, _ := w.req.(*pb.LookupResourcesRequest)
		first, _ := w.first.(*pb.LookupResourcesResponse)
		ev := a.event(audit.OpLookupResources)
		ev.Resource, ev.Permission, ev.Subject = r.GetResourceObjectType(), r.GetPermission(), subjString(r.GetSubject())
		ev.OnBehalfOf, ev.Context = objString(r.GetOnBehalfOf()), contextOf(r.GetContext())
		ev.Revision, ev.Count = a.revision(first.GetLookedUpAt()), w.sent
		if r.GetSubject() != nil {
			ev.SubjectKind = a.kind(r.GetSubject().GetObject().GetObjectType(), r.GetSubject().GetOptionalRelation(), ev.Revision)
			switch {
			case ev.SubjectKind == audit.Person:
				ev.Principal = ev.Subject
			case ev.OnBehalfOf != "":
				ev.Principal = ev.OnBehalfOf
			}
		}
		return ev
	},
	pb.PermissionService_LookupSubjects_FullMethodName: func(a *auditCall, w *auditedStream) *audit.Event {
		r, _ := w.req.(*pb.LookupSubjectsRequest)
		first, _ := w.first.(*pb.LookupSubjectsResponse)
		ev := a.event(audit.OpLookupSubjects)
		ev.Resource, ev.Permission = objString(r.GetResource()), r.GetPermission()
		ev.Subject = r.GetSubjectObjectType()
		if rl := r.GetOptionalSubjectRelation(); rl != "" {
			ev.Subject += "#" + rl
		}
		ev.Context = contextOf(r.GetContext())
		ev.Revision, ev.Count = a.revision(first.GetLookedUpAt()), w.sent
		return ev
	},
	pb.RelationshipService_ReadRelationships_FullMethodName: func(a *auditCall, w *auditedStream) *audit.Event {
		r, _ := w.req.(*pb.ReadRelationshipsRequest)
		first, _ := w.first.(*pb.ReadRelationshipsResponse)
		ev := a.event(audit.OpReadRelationships)
		ev.Resource, ev.Detail = r.GetFilter().GetResourceType(), "filter "+filterString(r.GetFilter())
		ev.Revision, ev.Count = a.revision(first.GetReadAt()), w.sent
		return ev
	},
	pb.RelationshipService_ExportRelationships_FullMethodName: func(a *auditCall, w *auditedStream) *audit.Event {
		r, _ := w.req.(*pb.ExportRelationshipsRequest)
		first, _ := w.first.(*pb.ExportRelationshipsResponse)
		ev := a.event(audit.OpExportRelationships)
		ev.Resource, ev.Detail = r.GetOptionalFilter().GetResourceType(), "filter "+filterString(r.GetOptionalFilter())
		ev.Revision = a.revision(first.GetExportedAt())
		ev.Detail += fmt.Sprintf("; %d batches", w.sent)
		return ev
	},
	pb.RelationshipService_ImportRelationships_FullMethodName: func(a *auditCall, w *auditedStream) *audit.Event {
		out, _ := w.last.(*pb.ImportRelationshipsResponse)
		ev := a.event(audit.OpImportRelationships)
		ev.Count = w.itemsRecv
		if out != nil {
			ev.Count, ev.Revision = int64(out.GetNumLoaded()), a.revision(out.GetWrittenAt())
		}
		ev.Detail = fmt.Sprintf("%d relationships received in %d messages", w.itemsRecv, w.received)
		return ev
	},
	pb.RelationshipService_Watch_FullMethodName: func(a *auditCall, w *auditedStream) *audit.Event {
		ev := a.event(audit.OpWatch)
		ev.Count = w.sent
		return ev
	},
}

// filterString renders a relationship filter as type:id#relation@subject,
// with * for what it leaves open.
func filterString(f *pb.RelationshipFilter) string {
	if f == nil {
		return "*"
	}
	s := f.GetResourceType()
	if s == "" {
		s = "*"
	}
	if ids := f.GetOptionalResourceIds(); len(ids) > 0 {
		s += ":" + strings.Join(ids, ",")
	}
	if r := f.GetOptionalRelation(); r != "" {
		s += "#" + r
	}
	if sf := f.GetOptionalSubjectFilter(); sf != nil {
		s += "@" + sf.GetSubjectType()
		if id := sf.GetOptionalSubjectId(); id != "" {
			s += ":" + id
		}
		if rf := sf.GetOptionalRelation(); rf != nil && rf.GetRelation() != "" {
			s += "#" + rf.GetRelation()
		}
	}
	return s
}

// queryString summarises an audit query's filters for its own event.
func queryString(r *pb.AuditServiceQueryRequest) string {
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+"="+v)
		}
	}
	add("agent", r.GetAgent())
	add("principal", r.GetPrincipal())
	add("subject", r.GetSubject())
	add("resource", r.GetResource())
	add("caller", r.GetCaller())
	add("operations", strings.Join(r.GetOperations(), ","))
	add("decisions", strings.Join(r.GetDecisions(), ","))
	if r.GetSince() != nil {
		add("since", r.GetSince().AsTime().Format(time.RFC3339Nano))
	}
	if r.GetUntil() != nil {
		add("until", r.GetUntil().AsTime().Format(time.RFC3339Nano))
	}
	if len(parts) == 0 {
		return "query (no filters)"
	}
	return "query " + strings.Join(parts, " ")
}

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
