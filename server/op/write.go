package op

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"iter"
	"strings"
	"sync"

	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/server/audit"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// WriteRequest applies mutations atomically once the preconditions hold.
type WriteRequest struct {
	Preconditions []store.Precondition
	Mutations     []store.Mutation
}

// WriteResult is the revision a write produced.
type WriteResult struct {
	Revision store.Revision
}

// Write writes relationships. Its audit event (one per mutation) names each
// subject's kind from the schema the write was validated against, without
// waiting for the engine to apply the write.
func (c *Core) Write(ctx context.Context, req WriteRequest) (WriteResult, error) {
	call := callFrom(ctx)
	err := c.within(LimitWriteUpdates, len(req.Mutations), c.lim.MaxWriteUpdates)
	if err == nil {
		err = c.within(LimitPreconditions, len(req.Preconditions), c.lim.MaxPreconditions)
	}
	if err == nil {
		err = c.historyRoom(len(req.Mutations))
	}
	var rev store.Revision
	if err == nil {
		rev, err = c.st.Write(ctx, req.Preconditions, req.Mutations)
	}
	if aerr := c.recordWrite(ctx, call, c.writeEvents(ctx, call, req.Mutations, rev, err)...); err == nil && aerr != nil {
		return WriteResult{}, aerr
	}
	return WriteResult{Revision: rev}, err
}

func (r WriteRequest) events(call *Call, err error) []*audit.Event {
	return writeEvents(call, r.Mutations, 0, err, nil)
}

func (c *Core) writeEvents(ctx context.Context, call *Call, muts []store.Mutation, rev store.Revision, err error) []*audit.Event {
	var sch *schema.Schema
	if len(muts) > 0 {
		sch = c.schemaOfWrite(ctx, muts, rev)
	}
	return writeEvents(call, muts, rev, err, sch)
}

func writeEvents(call *Call, muts []store.Mutation, rev store.Revision, err error, sch *schema.Schema) []*audit.Event {
	if len(muts) == 0 {
		return []*audit.Event{call.event(audit.OpWriteRelationships, err)}
	}
	evs := make([]*audit.Event, len(muts))
	for i, m := range muts {
		ev := call.event(audit.OpWriteRelationships, err)
		r := m.Rel
		if m.Op != 0 {
			ev.Update = strings.ToLower(m.Op.String())
		}
		ev.Resource, ev.Permission, ev.Subject = objectString(r.Resource), r.Relation, subjectString(r.Subject)
		ev.SubjectKind = kindIn(sch, r.Subject)
		if r.Caveat != nil && r.Caveat.Name != "" {
			ev.Caveat, ev.Context = r.Caveat.Name, r.Caveat.Context
		}
		if !r.Expiration.IsZero() {
			t := r.Expiration.UTC()
			ev.ExpiresAt = &t
		}
		ev.Revision = uint64(rev)
		evs[i] = ev
	}
	return evs
}

// schemaOfWrite returns a schema that defines the types a write's subjects
// name: the engine's when it knows them all (the usual case), else the
// store's schema in force at the write's revision, which validated the
// write (right after a schema change, before the engine has applied it).
// Nothing waits for the engine.
func (c *Core) schemaOfWrite(ctx context.Context, muts []store.Mutation, rev store.Revision) *schema.Schema {
	sch := c.eng.Schema(0)
	known := sch != nil
	for i := 0; known && i < len(muts); i++ {
		known = sch.Definitions[muts[i].Rel.Subject.Type] != nil
	}
	if known || rev == 0 {
		return sch
	}
	if s := c.kinds.at(ctx, c.st, rev); s != nil {
		return s
	}
	return sch
}

// schemaCache keeps the last schema compiled from the store for write
// events, by the revision that wrote it.
type schemaCache struct {
	mu        sync.Mutex
	writtenAt store.Revision
	sch       *schema.Schema
}

func (sc *schemaCache) at(ctx context.Context, st store.Store, rev store.Revision) *schema.Schema {
	text, writtenAt, err := st.ReadSchema(ctx, rev)
	if err != nil || text == "" {
		return nil
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.sch != nil && sc.writtenAt == writtenAt {
		return sc.sch
	}
	sch, err := schema.Compile(ctx, text)
	if err != nil {
		return nil
	}
	sc.writtenAt, sc.sch = writtenAt, sch
	return sch
}

// Filter selects relationships: the store's filter, plus a resource ID
// prefix (SpiceDB's optional_resource_id_prefix), which the store does not
// index and the core applies to what the store yields.
type Filter struct {
	rel.Filter
	ResourceIDPrefix string
}

// Matches reports whether r passes the filter.
func (f Filter) Matches(r rel.Relationship) bool {
	return f.Filter.Matches(r) && strings.HasPrefix(r.Resource.ID, f.ResourceIDPrefix)
}

// String renders the filter as type:id#relation@subject, with * for what
// it leaves open, for audit events.
func (f Filter) String() string {
	s := f.ResourceType
	if s == "" {
		s = "*"
	}
	switch {
	case len(f.ResourceIDs) > 0:
		s += ":" + strings.Join(f.ResourceIDs, ",")
	case f.ResourceIDPrefix != "":
		s += ":" + f.ResourceIDPrefix + "*"
	}
	if f.Relation != "" {
		s += "#" + f.Relation
	}
	if f.SubjectType != "" {
		s += "@" + f.SubjectType
		if f.SubjectID != "" {
			s += ":" + f.SubjectID
		}
		if f.SubjectRelation != nil && *f.SubjectRelation != "" {
			s += "#" + *f.SubjectRelation
		}
	}
	return s
}

// DeleteRequest deletes the relationships matching Filter atomically once
// the preconditions hold.
type DeleteRequest struct {
	Filter        Filter
	Preconditions []store.Precondition
	// Limit bounds how many may be deleted (0: every match). When more
	// match, nothing is deleted and the call fails with
	// store.ErrLimitExceeded, unless AllowPartial: then the first Limit (in
	// key order) are deleted.
	Limit        int
	AllowPartial bool
}

// DeleteResult says what a delete did.
type DeleteResult struct {
	Revision store.Revision
	Deleted  int
	// Partial is set when AllowPartial deleted Limit of more matches.
	Partial bool
}

// DeleteMatching deletes relationships by filter.
func (c *Core) DeleteMatching(ctx context.Context, req DeleteRequest) (DeleteResult, error) {
	call := callFrom(ctx)
	out, err := c.deleteMatching(ctx, req)
	ev := deleteEvent(call, req, err)
	ev.Count, ev.Revision = int64(out.Deleted), uint64(out.Revision)
	if aerr := c.recordWrite(ctx, call, ev); err == nil && aerr != nil {
		return DeleteResult{}, aerr
	}
	return out, err
}

func (c *Core) deleteMatching(ctx context.Context, req DeleteRequest) (DeleteResult, error) {
	if err := c.within(LimitDelete, req.Limit, c.lim.MaxDeleteLimit); err != nil {
		return DeleteResult{}, err
	}
	if err := c.within(LimitPreconditions, len(req.Preconditions), c.lim.MaxPreconditions); err != nil {
		return DeleteResult{}, err
	}
	// How many a delete supersedes is known only once it ran: ask room for
	// one, which refuses deletes once history is full.
	if err := c.historyRoom(1); err != nil {
		return DeleteResult{}, err
	}
	f := req.Filter
	if f.ResourceIDPrefix != "" {
		// The store filters by whole IDs: resolve the prefix to the IDs
		// that now match it, and delete by those.
		ids, err := c.idsWithPrefix(ctx, f)
		if err != nil {
			return DeleteResult{}, err
		}
		if len(ids) == 0 {
			// Nothing matches; the preconditions still decide the answer.
			rev, err := c.st.Write(ctx, req.Preconditions, nil)
			return DeleteResult{Revision: rev}, err
		}
		f.ResourceIDs, f.ResourceIDPrefix = ids, ""
	}
	rev, n, err := c.st.DeleteMatching(ctx, req.Preconditions, f.Filter, req.Limit)
	if errors.Is(err, store.ErrLimitExceeded) && req.AllowPartial {
		rev, n, err = c.deleteFirst(ctx, req.Preconditions, f.Filter, req.Limit)
		return DeleteResult{Revision: rev, Deleted: n, Partial: err == nil}, err
	}
	return DeleteResult{Revision: rev, Deleted: n}, err
}

// idsWithPrefix lists the resource IDs at the store's head that match a
// filter with an ID prefix.
func (c *Core) idsWithPrefix(ctx context.Context, f Filter) ([]string, error) {
	head, err := c.st.Head(ctx)
	if err != nil {
		return nil, err
	}
	var ids []string
	seen := map[string]bool{}
	for r, err := range c.st.Read(ctx, head, f.Filter, nil) {
		if err != nil {
			return nil, err
		}
		if f.Matches(r) && !seen[r.Resource.ID] {
			seen[r.Resource.ID] = true
			ids = append(ids, r.Resource.ID)
		}
	}
	return ids, nil
}

// deleteFirst deletes the first limit relationships (in key order) matching
// filter, for a partial deletion: one write of their keys under the
// preconditions.
func (c *Core) deleteFirst(ctx context.Context, pre []store.Precondition, filter rel.Filter, limit int) (store.Revision, int, error) {
	head, err := c.st.Head(ctx)
	if err != nil {
		return 0, 0, err
	}
	muts := make([]store.Mutation, 0, limit)
	for r, err := range c.st.Read(ctx, head, filter, nil) {
		if err != nil {
			return 0, 0, err
		}
		muts = append(muts, store.Mutation{Op: store.Delete, Rel: r})
		if len(muts) == limit {
			break
		}
	}
	rev, err := c.st.Write(ctx, pre, muts)
	return rev, len(muts), err
}

func deleteEvent(call *Call, r DeleteRequest, err error) *audit.Event {
	ev := call.event(audit.OpDeleteRelationships, err)
	f := r.Filter
	ev.Resource = f.ResourceType
	if len(f.ResourceIDs) == 1 {
		ev.Resource += ":" + f.ResourceIDs[0]
	}
	ev.Permission = f.Relation
	if f.SubjectID != "" {
		ev.Subject = f.SubjectType + ":" + f.SubjectID
	}
	ev.Detail = "filter " + f.String()
	return ev
}

func (r DeleteRequest) events(call *Call, err error) []*audit.Event {
	return []*audit.Event{deleteEvent(call, r, err)}
}

// ImportRequest loads relationships (created, never replaced) in batches
// as they arrive. A batch's error ends the import and is returned as it
// is.
type ImportRequest struct {
	Batches iter.Seq2[[]store.Mutation, error]
	// Atomic commits every batch in one write, as SpiceDB does; otherwise
	// each batch is committed on its own, and a failure leaves earlier
	// batches in place.
	Atomic bool
}

// ImportResult says what an import loaded.
type ImportResult struct {
	// Loaded counts the relationships committed.
	Loaded int
	// Revision is the last revision written (the store's head when
	// nothing was).
	Revision store.Revision
}

// ImportError is a batch the store refused.
type ImportError struct {
	// Batch indexes the failed batch (-1: the one atomic write).
	Batch int
	// Committed counts the relationships earlier batches committed.
	Committed, Batches int
	Err                error
}

func (e *ImportError) Error() string { return fmt.Sprintf("batch %d: %v", e.Batch, e.Err) }
func (e *ImportError) Unwrap() error { return e.Err }

// Import loads relationships in bulk.
func (c *Core) Import(ctx context.Context, req ImportRequest) (ImportResult, error) {
	call := callFrom(ctx)
	call.recorded.Store(true)
	var out ImportResult
	received, messages := 0, 0
	err := func() error {
		var all []store.Mutation
		for batch, err := range req.Batches {
			if err != nil {
				return err
			}
			messages++
			received += len(batch)
			if len(batch) == 0 {
				continue
			}
			if req.Atomic {
				all = append(all, batch...)
				continue
			}
			rev, err := c.st.Write(ctx, nil, batch)
			if err != nil {
				return &ImportError{Batch: messages - 1, Committed: out.Loaded, Batches: messages - 1, Err: err}
			}
			out.Loaded += len(batch)
			out.Revision = rev
		}
		if len(all) > 0 {
			rev, err := c.st.Write(ctx, nil, all)
			if err != nil {
				return &ImportError{Batch: -1, Err: err}
			}
			out.Loaded, out.Revision = len(all), rev
		}
		return nil
	}()
	if err == nil && out.Revision == 0 {
		out.Revision, err = c.st.Head(ctx)
	}
	ev := call.event(audit.OpImportRelationships, err)
	ev.Count, ev.Revision = int64(received), uint64(out.Revision)
	if err == nil {
		ev.Count = int64(out.Loaded)
	}
	ev.Detail = fmt.Sprintf("%d relationships received in %d messages", received, messages)
	if aerr := c.recordWrite(ctx, call, ev); err == nil && aerr != nil {
		return ImportResult{}, aerr
	}
	return out, err
}

func (r ImportRequest) events(call *Call, err error) []*audit.Event {
	return []*audit.Event{call.event(audit.OpImportRelationships, err)}
}

// WriteSchemaRequest replaces the schema.
type WriteSchemaRequest struct {
	Text string
}

// WriteSchema writes the schema; the store compiles and validates it.
func (c *Core) WriteSchema(ctx context.Context, req WriteSchemaRequest) (WriteResult, error) {
	call := callFrom(ctx)
	// Admit bounds the text before the store's compiler sees it and holds
	// one of the core's compile slots while the store compiles.
	var rev store.Revision
	release, err := c.schemas.Admit(ctx, req.Text)
	if err == nil {
		rev, err = c.st.WriteSchema(ctx, req.Text)
		release()
	}
	evs := req.events(call, err)
	evs[0].Revision = uint64(rev)
	if aerr := c.recordWrite(ctx, call, evs...); err == nil && aerr != nil {
		return WriteResult{}, aerr
	}
	if err == nil {
		// Read your writes: this server's next check knows the schema's
		// types. The write is done either way, so a slow engine (bounded by
		// the revision wait) does not fail it.
		_ = c.WaitFor(ctx, rev)
	}
	return WriteResult{Revision: rev}, err
}

func (r WriteSchemaRequest) events(call *Call, err error) []*audit.Event {
	ev := call.event(audit.OpWriteSchema, err)
	sum := sha256.Sum256([]byte(r.Text))
	ev.Detail = fmt.Sprintf("schema sha256:%x, %d bytes", sum, len(r.Text))
	return []*audit.Event{ev}
}
