package op

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/server/audit"
	"github.com/mandate-authz/mandate/store/rel"
)

// Identity is the authenticated caller, resolved once per call by the
// transport's authenticator and carried in the context. Scoped API keys
// (server/apikey) extend it with the key's scopes; the transport's one
// per-method authorization step reads them from here.
type Identity struct {
	// Name names the credential the call presented (a preshared key's
	// name, never the key), as the audit trail shows it.
	Name string
	// Person is the person a scoped key is bound to (keys file field
	// "person", type:id); empty for keys that speak for no one. Only such
	// keys may decide approval requests, as that person.
	Person string
}

type identityKey struct{}

// WithIdentity returns ctx carrying the caller's identity.
func WithIdentity(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

// IdentityFrom returns the caller's identity, if the call was
// authenticated.
func IdentityFrom(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(Identity)
	return id, ok
}

// CallInfo describes one call for its audit events: who sent it, through
// what, and how the API it came through names an error's outcome.
type CallInfo struct {
	// RequestID is the client's request ID, or one the transport drew.
	RequestID string
	// Source is the client's address.
	Source string
	// Transport names the API and transport: grpc, rest, grpc-authzed.
	Transport string
	// Classify names an error's code and message as the API returns it,
	// so that an event says what the caller saw; nil: the Core's.
	Classify func(error) (code, message string)
}

// Call is one API call in progress: its description, and whether any
// audit event was recorded for it. Transports create one with Begin and
// finish it with End; a Core operation called without one audits with an
// empty description.
type Call struct {
	info     CallInfo
	caller   string
	recorded atomic.Bool
}

type callKey struct{}

// Begin starts a call: the returned context carries it to the operations.
// The caller's identity is read from ctx (WithIdentity), so Begin goes
// after authentication; an unauthenticated call has no caller name.
func (c *Core) Begin(ctx context.Context, info CallInfo) (context.Context, *Call) {
	call := &Call{info: info}
	if call.info.Classify == nil {
		call.info.Classify = c.classify
	}
	if id, ok := IdentityFrom(ctx); ok {
		call.caller = id.Name
	}
	return context.WithValue(ctx, callKey{}, call), call
}

// End finishes a call. A call refused before it reached an operation (by
// authentication, or because its input did not parse) has recorded
// nothing: End records the events of the request refused describes
// (whatever of it was parsed; nil: a call that is not audited), with err's
// code. Losing such an event is logged; the call is refused either way.
func (c *Core) End(ctx context.Context, call *Call, refused func() Request, err error) {
	if call == nil || c.aud == nil || !call.claim() {
		return
	}
	r := refused()
	if r == nil {
		return
	}
	if err == nil {
		err = fmt.Errorf("the call ended before it reached an operation")
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.lim.RequestTimeout)
	defer cancel()
	for _, ev := range r.events(call, err) {
		if rerr := c.aud.Record(rctx, ev); rerr != nil {
			c.log.Error("a refused call was not audited", "request_id", ev.RequestID, "error", rerr)
			return
		}
	}
}

// claim takes the call's audit for its caller, once: a streamed
// operation's iterator, or End for a call that reached no operation.
func (call *Call) claim() bool { return call.recorded.CompareAndSwap(false, true) }

func callFrom(ctx context.Context) *Call {
	if call, _ := ctx.Value(callKey{}).(*Call); call != nil {
		return call
	}
	return &Call{info: CallInfo{}}
}

// event starts an event of the call; a failed operation's carries err's
// code and message as the call's API names them.
func (call *Call) event(op audit.Operation, err error) *audit.Event {
	ev := &audit.Event{
		Time:      time.Now().UTC(),
		RequestID: call.info.RequestID,
		Caller:    call.caller,
		Source:    call.info.Source,
		Transport: call.info.Transport,
		Operation: op,
		Decision:  audit.OK,
	}
	if err != nil {
		call.fail(ev, err)
	}
	return ev
}

func (call *Call) fail(ev *audit.Event, err error) {
	classify := call.info.Classify
	if classify == nil {
		classify = func(err error) (string, string) { return "Internal", err.Error() }
	}
	ev.Decision = audit.Error
	ev.Code, ev.Error = classify(err)
}

// Request is an operation's request, as audited when the call is refused
// before the operation runs. The request types of this package implement
// it.
type Request interface {
	events(call *Call, err error) []*audit.Event
}

// recordRead records a read's events before it is answered: a read the
// trail cannot record fails with ErrUnavailable rather than be answered
// unaudited.
func (c *Core) recordRead(ctx context.Context, call *Call, evs ...*audit.Event) error {
	call.recorded.Store(true)
	if c.aud == nil {
		return nil
	}
	for _, ev := range evs {
		if err := c.aud.Record(ctx, ev); err != nil {
			return unavailable("the audit trail cannot record this call, so it is not answered (retry later): %v", err)
		}
	}
	return nil
}

// recordWrite records a write's events. The write has happened, so a lost
// event does not change its answer: the loss is logged (and counted by the
// Auditor). Recording outlasts the client's cancellation, up to the
// request timeout. With a DurableAuditor, the events are durable in the
// trail before the write is acknowledged: when they cannot be made so, the
// error returned (ErrUnavailable) replaces the write's success.
func (c *Core) recordWrite(ctx context.Context, call *Call, evs ...*audit.Event) error {
	call.recorded.Store(true)
	if c.aud == nil {
		return nil
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.lim.RequestTimeout)
	defer cancel()
	if d, ok := c.aud.(DurableAuditor); ok {
		if err := d.RecordDurable(rctx, evs...); err != nil {
			c.log.Error("a write's audit records are not durable", "request_id", call.info.RequestID, "events", len(evs), "error", err)
			return unavailable("the change was applied, but its audit record could not be made durable, so it is not acknowledged: %v", err)
		}
		return nil
	}
	for _, ev := range evs {
		if err := c.aud.Record(rctx, ev); err != nil {
			c.log.Error("a write was not audited", "operation", ev.Operation, "request_id", ev.RequestID, "error", err)
			return nil
		}
	}
	return nil
}

// kindIn tells a subject's kind from a schema (nil: not an agent).
func kindIn(sch *schema.Schema, s rel.Subject) audit.Kind {
	if s.Relation != "" {
		return audit.Userset
	}
	if sch != nil {
		if d := sch.Definitions[s.Type]; d != nil && d.IsAgent() {
			return audit.Agent
		}
	}
	return audit.Person
}

func decision(d engine.Decision) audit.Decision {
	switch d {
	case engine.Allowed:
		return audit.Allowed
	case engine.Conditional:
		return audit.Conditional
	}
	return audit.Denied
}

func objectString(o rel.Object) string {
	if o.Type == "" && o.ID == "" {
		return ""
	}
	return o.Type + ":" + o.ID
}

func subjectString(s rel.Subject) string {
	if s.Type == "" && s.ID == "" {
		return ""
	}
	out := s.Type + ":" + s.ID
	if s.Relation != "" {
		out += "#" + s.Relation
	}
	return out
}
