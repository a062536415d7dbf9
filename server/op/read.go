package op

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"strings"
	"time"

	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/server/audit"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// ErrSchemaNotFound: no schema has been written.
var ErrSchemaNotFound = errors.New("no schema has been written")

// ReadSchemaRequest reads the schema text.
type ReadSchemaRequest struct {
	Consistency Consistency
}

// SchemaResult is the schema text at a revision.
type SchemaResult struct {
	Text     string
	Revision store.Revision
}

// ReadSchema reads the schema at the store; ErrSchemaNotFound when none
// was ever written.
func (c *Core) ReadSchema(ctx context.Context, req ReadSchemaRequest) (SchemaResult, error) {
	call := callFrom(ctx)
	rev, err := c.storeRevision(ctx, req.Consistency)
	var text string
	if err == nil {
		text, _, err = c.st.ReadSchema(ctx, rev)
	}
	if err == nil && text == "" {
		err = ErrSchemaNotFound
	}
	ev := call.event(audit.OpReadSchema, err)
	ev.Revision = uint64(rev)
	if aerr := c.recordRead(ctx, call, ev); aerr != nil {
		return SchemaResult{}, aerr
	}
	return SchemaResult{Text: text, Revision: rev}, err
}

func (r ReadSchemaRequest) events(call *Call, err error) []*audit.Event {
	return []*audit.Event{call.event(audit.OpReadSchema, err)}
}

// MaxOrphansListed bounds the orphaned relationships ValidateSchema lists.
const MaxOrphansListed = 100

// ValidateSchemaRequest asks what writing a schema would do.
type ValidateSchemaRequest struct {
	Text string
}

// SchemaValidation compares a candidate schema with the live one at the
// store's head.
type SchemaValidation struct {
	Revision store.Revision
	// CompileError is set when the candidate does not compile; the other
	// fields are then empty.
	CompileError *schema.Error
	// Live is nil when no schema was written yet.
	Live, Candidate *schema.Schema
	// Orphans lists (up to MaxOrphansListed) relationships the candidate
	// would no longer allow; Truncated says more exist.
	Orphans   []string
	Truncated bool
}

// ValidateSchema compiles a candidate schema and compares it with the live
// one, without writing it.
func (c *Core) ValidateSchema(ctx context.Context, req ValidateSchemaRequest) (SchemaValidation, error) {
	call := callFrom(ctx)
	out, err := c.validateSchema(ctx, req.Text)
	ev := call.event(audit.OpValidateSchema, err)
	ev.Revision = uint64(out.Revision)
	if aerr := c.recordRead(ctx, call, ev); aerr != nil {
		return SchemaValidation{}, aerr
	}
	return out, err
}

func (c *Core) validateSchema(ctx context.Context, text string) (SchemaValidation, error) {
	head, err := c.st.Head(ctx)
	if err != nil {
		return SchemaValidation{}, err
	}
	out := SchemaValidation{Revision: head}
	if out.Candidate, err = schema.Compile(ctx, text); err != nil {
		if !errors.As(err, &out.CompileError) {
			return SchemaValidation{}, err
		}
		return out, nil
	}
	liveText, _, err := c.st.ReadSchema(ctx, head)
	if err != nil {
		return SchemaValidation{}, err
	}
	if liveText != "" {
		if out.Live, err = schema.Compile(ctx, liveText); err != nil {
			return SchemaValidation{}, fmt.Errorf("the live schema at revision %d no longer compiles: %v", head, err)
		}
	}
	orphans, err := store.OrphansUnder(out.Candidate, c.st.Read(ctx, head, rel.Filter{}, nil), MaxOrphansListed+1)
	if err != nil {
		return SchemaValidation{}, err
	}
	if len(orphans) > MaxOrphansListed {
		orphans, out.Truncated = orphans[:MaxOrphansListed], true
	}
	out.Orphans = orphans
	return out, nil
}

func (r ValidateSchemaRequest) events(call *Call, err error) []*audit.Event {
	return []*audit.Event{call.event(audit.OpValidateSchema, err)}
}

// Schema returns the compiled schema the engine has at rev (0: its head),
// waiting for the engine to reach rev first: facades check names against
// it where their contract asks.
func (c *Core) Schema(ctx context.Context, rev store.Revision) (*schema.Schema, error) {
	if err := c.WaitFor(ctx, rev); err != nil {
		return nil, err
	}
	return c.eng.Schema(rev), nil
}

// HeadSchema returns the schema at the store's head, once the engine has
// caught up with it: writes are validated against the store's schema.
func (c *Core) HeadSchema(ctx context.Context) (*schema.Schema, error) {
	head, err := c.StoreHead(ctx)
	if err != nil {
		return nil, err
	}
	return c.Schema(ctx, head)
}

// ReadRequest reads relationships from the store, one page at a time.
type ReadRequest struct {
	Filter      Filter
	Consistency Consistency
	// After resumes after the last key returned (nil: from the start);
	// Consistency then names the page's revision exactly.
	After *rel.Key
	// Limit bounds the page (0: every match).
	Limit int
}

// ReadResult is a page of relationships, in key order, at Revision. Its
// iterator is to be ranged over once; the call's audit event is recorded
// when it ends.
type ReadResult struct {
	Revision      store.Revision
	Relationships iter.Seq2[rel.Relationship, error]
}

// Read reads a page of relationships.
func (c *Core) Read(ctx context.Context, req ReadRequest) (ReadResult, error) {
	call := callFrom(ctx)
	rev, ev, err := c.startRead(ctx, call, audit.OpReadRelationships, req.Filter, req.Consistency,
		c.within(LimitRead, req.Limit, c.lim.MaxReadLimit))
	if err != nil {
		return ReadResult{}, err
	}
	// The event is the iterator's: a page the facade never reads (it
	// failed first) is audited as the facade's refusal instead.
	page := func(yield func(rel.Relationship, error) bool) {
		defer c.recordStreamed(ctx, call, ev, call.claim())
		for r, err := range c.readAfter(ctx, rev, req.Filter, req.After) {
			if err != nil {
				call.fail(ev, err)
				yield(rel.Relationship{}, err)
				return
			}
			if req.Limit > 0 && ev.Count >= int64(req.Limit) {
				return
			}
			ev.Count++
			if !yield(r, nil) {
				return
			}
		}
	}
	return ReadResult{Revision: rev, Relationships: page}, nil
}

// startRead resolves a store read's revision unless the request was
// refused (refused, a limit's error) and starts its event; a read that
// fails here is audited now, one that starts is audited by its iterator.
func (c *Core) startRead(ctx context.Context, call *Call, op audit.Operation, f Filter, cons Consistency, refused error) (store.Revision, *audit.Event, error) {
	var rev store.Revision
	err := refused
	if err == nil {
		rev, err = c.storeRevision(ctx, cons)
	}
	ev := readEvent(call, op, f, err)
	ev.Revision = uint64(rev)
	if err != nil {
		if aerr := c.recordRead(ctx, call, ev); aerr != nil {
			return 0, nil, aerr
		}
		return 0, nil, err
	}
	return rev, ev, nil
}

// readAfter yields the relationships matching f at rev whose keys sort
// after *after (nil: all), in key order. The store resumes after the key
// itself (a seek, a binary search, a keyset condition), so paging through
// N relationships reads each once; only the ID prefix, which the store
// does not index, is applied here.
func (c *Core) readAfter(ctx context.Context, rev store.Revision, f Filter, after *rel.Key) iter.Seq2[rel.Relationship, error] {
	if f.ResourceIDPrefix == "" {
		return c.st.Read(ctx, rev, f.Filter, after)
	}
	return func(yield func(rel.Relationship, error) bool) {
		for r, err := range c.st.Read(ctx, rev, f.Filter, after) {
			if err != nil {
				yield(rel.Relationship{}, err)
				return
			}
			if f.Matches(r) && !yield(r, nil) {
				return
			}
		}
	}
}

// recordStreamed records the event of a read streamed to the caller once
// the stream ends, if the stream owns the call's audit (claimed). The
// answer is already out, so a lost event is logged.
func (c *Core) recordStreamed(ctx context.Context, call *Call, ev *audit.Event, claimed bool) {
	if c.aud == nil || !claimed {
		return
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.lim.RequestTimeout)
	defer cancel()
	if err := c.aud.Record(rctx, ev); err != nil {
		c.log.Error("a streamed read was not audited", "operation", ev.Operation, "request_id", ev.RequestID, "error", err)
	}
}

func readEvent(call *Call, op audit.Operation, f Filter, err error) *audit.Event {
	ev := call.event(op, err)
	ev.Resource, ev.Detail = f.ResourceType, "filter "+f.String()
	return ev
}

func (r ReadRequest) events(call *Call, err error) []*audit.Event {
	return []*audit.Event{readEvent(call, audit.OpReadRelationships, r.Filter, err)}
}

// ExportRequest exports relationships in batches.
type ExportRequest struct {
	Filter      Filter
	Consistency Consistency
	// After resumes after the last key exported, as in ReadRequest.
	After *rel.Key
	// BatchSize bounds a batch (0: MaxBulkBatch).
	BatchSize int
}

// ExportResult yields batches of relationships, in key order, at
// Revision; each batch but the last holds BatchSize.
type ExportResult struct {
	Revision store.Revision
	Batches  iter.Seq2[[]rel.Relationship, error]
}

// Export exports relationships.
func (c *Core) Export(ctx context.Context, req ExportRequest) (ExportResult, error) {
	call := callFrom(ctx)
	size := req.BatchSize
	if size == 0 {
		size = c.lim.MaxBulkBatch
	}
	rev, ev, err := c.startRead(ctx, call, audit.OpExportRelationships, req.Filter, req.Consistency,
		c.within(LimitBulkBatch, size, c.lim.MaxBulkBatch))
	if err != nil {
		return ExportResult{}, err
	}
	batches := func(yield func([]rel.Relationship, error) bool) {
		defer c.recordStreamed(ctx, call, ev, call.claim())
		batch := make([]rel.Relationship, 0, size)
		for r, err := range c.readAfter(ctx, rev, req.Filter, req.After) {
			if err != nil {
				call.fail(ev, err)
				yield(nil, err)
				return
			}
			batch = append(batch, r)
			if len(batch) == size {
				ev.Count += int64(len(batch))
				if !yield(batch, nil) {
					return
				}
				batch = make([]rel.Relationship, 0, size)
			}
		}
		if len(batch) > 0 {
			ev.Count += int64(len(batch))
			yield(batch, nil)
		}
	}
	return ExportResult{Revision: rev, Batches: batches}, nil
}

func (r ExportRequest) events(call *Call, err error) []*audit.Event {
	return []*audit.Event{readEvent(call, audit.OpExportRelationships, r.Filter, err)}
}

// WatchRequest follows the store's changes.
type WatchRequest struct {
	// After starts after a revision (a token's); nil: after the store's
	// head.
	After *store.Revision
	// Field names the request field After came from, for errors.
	Field string
}

// WatchResult yields every change after Start, in revision order, until
// the context ends; the call's event is recorded then.
type WatchResult struct {
	Start   store.Revision
	Changes iter.Seq2[store.Change, error]
}

// Watch follows the store's change stream. Filtering is the facade's: each
// API filters by its own rules.
func (c *Core) Watch(ctx context.Context, req WatchRequest) (WatchResult, error) {
	call := callFrom(ctx)
	var start store.Revision
	var err error
	if req.After != nil {
		start = *req.After
		err = c.verifyToken(ctx, Consistency{Mode: AtExactSnapshot, Revision: start, Field: req.Field})
	} else {
		start, err = c.st.Head(ctx)
	}
	ev := call.event(audit.OpWatch, err)
	if err != nil {
		if aerr := c.recordRead(ctx, call, ev); aerr != nil {
			return WatchResult{}, aerr
		}
		return WatchResult{}, err
	}
	changes := func(yield func(store.Change, error) bool) {
		defer c.recordStreamed(ctx, call, ev, call.claim())
		for ch, err := range c.st.Watch(ctx, start) {
			if err != nil {
				if ctx.Err() == nil {
					call.fail(ev, err)
				}
				yield(store.Change{}, err)
				return
			}
			ev.Count++
			if !yield(ch, nil) {
				return
			}
		}
	}
	return WatchResult{Start: start, Changes: changes}, nil
}

func (r WatchRequest) events(call *Call, err error) []*audit.Event {
	return []*audit.Event{call.event(audit.OpWatch, err)}
}

// Querier answers queries over the audit trail; an Auditor that keeps a
// queryable trail implements it.
type Querier interface {
	Query(ctx context.Context, q audit.Query) (audit.Page, error)
}

// ErrAuditOff: the core has no auditor.
var ErrAuditOff = errors.New("auditing is off on this server (--audit-sink none)")

// AuditQueryRequest queries the audit trail.
type AuditQueryRequest struct {
	Query audit.Query
}

// QueryAudit answers a query over the audit trail; the query is itself
// audited. It fails with ErrAuditOff without an auditor and with
// audit.ErrNotQueryable when the trail cannot be queried.
func (c *Core) QueryAudit(ctx context.Context, req AuditQueryRequest) (audit.Page, error) {
	call := callFrom(ctx)
	var page audit.Page
	var err error
	if c.aud == nil {
		return audit.Page{}, ErrAuditOff
	}
	if q, ok := c.aud.(Querier); ok {
		page, err = q.Query(ctx, req.Query)
	} else {
		err = audit.ErrNotQueryable
	}
	evs := req.events(call, err)
	evs[0].Count = int64(len(page.Events))
	if aerr := c.recordRead(ctx, call, evs...); aerr != nil {
		return audit.Page{}, aerr
	}
	return page, err
}

func (r AuditQueryRequest) events(call *Call, err error) []*audit.Event {
	ev := call.event(audit.OpAuditQuery, err)
	ev.Detail = queryString(r.Query)
	return []*audit.Event{ev}
}

// queryString summarises an audit query's filters for its own event.
func queryString(q audit.Query) string {
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+"="+v)
		}
	}
	join := func(vs []string) string { return strings.Join(vs, ",") }
	add("agent", q.Agent)
	add("principal", q.Principal)
	add("subject", q.Subject)
	add("resource", q.Resource)
	add("caller", q.Caller)
	var ops, decisions []string
	for _, o := range q.Operations {
		ops = append(ops, string(o))
	}
	for _, d := range q.Decisions {
		decisions = append(decisions, string(d))
	}
	add("operations", join(ops))
	add("decisions", join(decisions))
	if !q.Since.IsZero() {
		add("since", q.Since.UTC().Format(time.RFC3339Nano))
	}
	if !q.Until.IsZero() {
		add("until", q.Until.UTC().Format(time.RFC3339Nano))
	}
	if len(parts) == 0 {
		return "query (no filters)"
	}
	return "query " + strings.Join(parts, " ")
}
