package mcpgateway

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/store/rel"
)

// Reasons the gateway adds to Mandate's own (no_delegation,
// agent_not_granted, principal_denied, ...).
const (
	// ReasonChainMismatch: Mandate allowed through a live chain other than
	// the one the token's act claims describe.
	ReasonChainMismatch = "chain_mismatch"
	// ReasonConditional: a caveat needs context the gateway cannot supply.
	ReasonConditional = "conditional"
	// ReasonDenied: denied with no explanation (the subject is not an agent).
	ReasonDenied = "denied"
	// ReasonTokenPrincipal: the capability token acts for a principal
	// other than the OAuth token's subject.
	ReasonTokenPrincipal = "token_principal_mismatch"
	// ReasonApprovalRequired: an escalation rule held a call Mandate
	// would otherwise allow until a person approves it.
	ReasonApprovalRequired = "approval_required"
)

// Decision is the gateway's answer for one call or listed item.
type Decision struct {
	Allowed  bool
	Reason   string
	Resource string
	// Permission is what was checked on Resource.
	Permission string
	// Chain is Mandate's live chain, agent first.
	Chain                []string
	FailedAt             int
	Missing              []string
	ResolvableByApproval bool
	Revision             string
	Cached               bool
	// Rule names the escalation rule that held the call, GrantID the
	// approval grant that allowed it.
	Rule    string
	GrantID string
	// hold is what a person's approval would lift (Mandate's approval
	// context of a held or requestable denial), with the request to file.
	hold *pb.ApprovalContext
}

// Held reports whether a person's approval would lift the denial.
func (d Decision) Held() bool { return !d.Allowed && d.hold.GetRequest() != nil }

// withApproval reads Mandate's approval context into a decision: a call
// an escalation rule held, a denial a grant would resolve, or an allow a
// grant gave.
func withApproval(dec *Decision, decision pb.Decision, a *pb.ApprovalContext) {
	if a == nil {
		return
	}
	dec.Rule = a.GetRule()
	if dec.Allowed {
		dec.GrantID = a.GetGrantId()
		return
	}
	if decision == pb.Decision_DECISION_APPROVAL_REQUIRED {
		dec.Reason = ReasonApprovalRequired
	}
	if a.GetRequest() != nil {
		dec.hold = a
	}
}

// cacheable: a decision an approval shaped is never cached. A grant is a
// record the Watch stream does not report, so a grant's allow must end
// with it, and a held denial must lift as soon as a person approves.
func (d Decision) cacheable() bool { return d.hold == nil && d.GrantID == "" && d.Rule == "" }

// callInfo is what the check's context tells Mandate's audit about the MCP
// call. The keys are prefixed mcp_ so that they cannot collide with a
// schema's caveat parameters by accident (a caveat may read them on
// purpose, e.g. to scope a delegation to one tool).
type callInfo struct {
	method, name, session string
}

func (c callInfo) context(id *Identity) *structpb.Struct {
	f := map[string]*structpb.Value{
		"mcp_method": structpb.NewStringValue(c.method),
		"mcp_agent":  structpb.NewStringValue(id.Agent.String()),
	}
	if c.name != "" {
		f["mcp_name"] = structpb.NewStringValue(c.name)
	}
	if c.session != "" {
		f["mcp_session_id"] = structpb.NewStringValue(c.session)
	}
	if id.TokenID != "" {
		f["mcp_token_id"] = structpb.NewStringValue(id.TokenID)
	}
	chain := make([]*structpb.Value, len(id.Chain))
	for i, o := range id.Chain {
		chain[i] = structpb.NewStringValue(o.String())
	}
	f["mcp_claimed_chain"] = structpb.NewListValue(&structpb.ListValue{Values: chain})
	return &structpb.Struct{Fields: f}
}

// checkItem is one object and permission to decide.
type checkItem struct {
	object     rel.Object
	permission string
	info       callInfo
	// approvalID names a single-use grant to redeem (never cached).
	approvalID string
}

// decider asks Mandate and caches its answers while the Watch stream
// vouches for them.
type decider struct {
	perm   pb.PermissionServiceClient
	rels   pb.RelationshipServiceClient
	schema pb.SchemaServiceClient
	log    *slog.Logger
	ttl    time.Duration
	max    int

	// gen advances on every change Mandate reports and on every loss of the
	// Watch stream; a cache entry is good only for the generation it was
	// made in.
	gen     atomic.Uint64
	healthy atomic.Bool
	mu      sync.Mutex
	cache   map[string]cacheEntry

	hits, misses atomic.Uint64
}

type cacheEntry struct {
	gen     uint64
	expires time.Time
	d       Decision
}

func newDecider(conn grpc.ClientConnInterface, ttl time.Duration, maxEntries int, log *slog.Logger) *decider {
	return &decider{
		perm:   pb.NewPermissionServiceClient(conn),
		rels:   pb.NewRelationshipServiceClient(conn),
		schema: pb.NewSchemaServiceClient(conn),
		log:    log,
		ttl:    ttl,
		max:    maxEntries,
		cache:  map[string]cacheEntry{},
	}
}

func cacheKey(scope string, it checkItem) string {
	return scope + "\x00" + it.info.method + "\x00" + it.info.name + "\x00" + it.object.String() + "#" + it.permission
}

func (d *decider) lookup(key string) (Decision, bool) {
	if d.ttl <= 0 || !d.healthy.Load() {
		return Decision{}, false
	}
	d.mu.Lock()
	e, ok := d.cache[key]
	d.mu.Unlock()
	if !ok || e.gen != d.gen.Load() || time.Now().After(e.expires) {
		return Decision{}, false
	}
	e.d.Cached = true
	return e.d, true
}

func (d *decider) store(key string, gen uint64, dec Decision) {
	if d.ttl <= 0 || !d.healthy.Load() {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.cache) >= d.max {
		clear(d.cache)
	}
	d.cache[key] = cacheEntry{gen: gen, expires: time.Now().Add(d.ttl), d: dec}
}

// check decides one call: Mandate checks the agent on behalf of the
// principal with an explanation, and the live chain must equal the claimed
// one.
func (d *decider) check(ctx context.Context, id *Identity, scope string, it checkItem) (Decision, error) {
	if id.capability != "" {
		return d.checkToken(ctx, id, it)
	}
	key := cacheKey(scope, it)
	if dec, ok := d.lookup(key); ok && it.approvalID == "" {
		d.hits.Add(1)
		d.log.Info("mcp decision (cached)", "method", it.info.method, "name", it.info.name, "session", it.info.session,
			"principal", id.Principal.String(), "agent", id.Agent.String(), "chain", dec.Chain, "allowed", dec.Allowed, "reason", dec.Reason)
		return dec, nil
	}
	d.misses.Add(1)
	gen := d.gen.Load()
	resp, err := d.perm.Check(ctx, &pb.CheckRequest{
		Resource:   objectProto(it.object),
		Permission: it.permission,
		Subject:    &pb.SubjectReference{Object: objectProto(id.Agent)},
		OnBehalfOf: objectProto(id.Principal),
		Context:    it.info.context(id),
		Explain:    true,
		ApprovalId: it.approvalID,
	})
	if err != nil {
		return Decision{}, fmt.Errorf("mandate Check %s#%s: %w", it.object, it.permission, err)
	}
	dec := judge(id, it, resp.GetDecision(), resp.GetMissingParameters(), resp.GetDelegation())
	withApproval(&dec, resp.GetDecision(), resp.GetApproval())
	dec.Revision = resp.GetCheckedAt().GetToken()
	if dec.cacheable() {
		d.store(key, gen, dec)
	}
	return dec, nil
}

// checkToken decides one call made with a capability token: Mandate checks
// the agent (who must be the token's holder) with the token, never from
// the cache (a revocation is a record the Watch stream does not report).
func (d *decider) checkToken(ctx context.Context, id *Identity, it checkItem) (Decision, error) {
	d.misses.Add(1)
	resp, err := d.perm.Check(ctx, &pb.CheckRequest{
		Resource:        objectProto(it.object),
		Permission:      it.permission,
		Subject:         &pb.SubjectReference{Object: objectProto(id.Agent)},
		Context:         it.info.context(id),
		CapabilityToken: id.capability,
	})
	if err != nil {
		return Decision{}, fmt.Errorf("mandate Check %s#%s with a capability token: %w", it.object, it.permission, err)
	}
	dec := judgeToken(id, it, resp.GetDecision(), resp.GetMissingParameters(), resp.GetToken())
	withApproval(&dec, resp.GetDecision(), resp.GetApproval())
	dec.Revision = resp.GetCheckedAt().GetToken()
	d.log.Info("mcp decision (capability token)", "method", it.info.method, "name", it.info.name, "session", it.info.session,
		"principal", id.Principal.String(), "agent", id.Agent.String(), "token_id", resp.GetToken().GetTokenId(),
		"allowed", dec.Allowed, "reason", dec.Reason)
	return dec, nil
}

// judgeToken turns Mandate's answer to a check with a capability token into
// the gateway's: allowed only when Mandate allowed and the token acts for
// the OAuth token's principal. The chain is the token's: its holders,
// current first, then its principal.
func judgeToken(id *Identity, it checkItem, decision pb.Decision, missing []string, tok *pb.TokenExplanation) Decision {
	dec := Decision{Resource: it.object.String(), Permission: it.permission, FailedAt: -1, Missing: missing, Reason: tok.GetReason()}
	holders := tok.GetHolders()
	for i := len(holders) - 1; i >= 0; i-- {
		dec.Chain = append(dec.Chain, holders[i].GetObjectType()+":"+holders[i].GetObjectId())
	}
	principal := tok.GetPrincipal().GetObjectType() + ":" + tok.GetPrincipal().GetObjectId()
	if tok.GetPrincipal() != nil {
		dec.Chain = append(dec.Chain, principal)
	}
	switch {
	case decision == pb.Decision_DECISION_ALLOWED && principal != id.Principal.String():
		dec.Reason = ReasonTokenPrincipal
	case decision == pb.Decision_DECISION_ALLOWED:
		dec.Allowed, dec.Reason = true, ""
	case decision == pb.Decision_DECISION_CONDITIONAL:
		dec.Reason = ReasonConditional
	case dec.Reason == "":
		dec.Reason = ReasonDenied
	}
	return dec
}

// maxBulkItems is the items sent in one CheckBulk: Mandate's default
// --max-check-bulk-items.
const maxBulkItems = 1000

// checkBulk decides many items with one CheckBulk (list filtering). Items
// that fail alone are denied.
func (d *decider) checkBulk(ctx context.Context, id *Identity, items []checkItem) ([]Decision, error) {
	out := make([]Decision, len(items))
	if len(items) == 0 {
		return out, nil
	}
	req := &pb.CheckBulkRequest{Explain: true, CapabilityToken: id.capability}
	for _, it := range items {
		item := &pb.CheckBulkRequestItem{
			Resource:   objectProto(it.object),
			Permission: it.permission,
			Subject:    &pb.SubjectReference{Object: objectProto(id.Agent)},
			OnBehalfOf: objectProto(id.Principal),
			Context:    it.info.context(id),
		}
		if id.capability != "" {
			item.OnBehalfOf = nil // the token names its principal
		}
		req.Items = append(req.Items, item)
	}
	// One CheckBulk per maxBulkItems (Mandate's default limit per call):
	// a list of up to that many entries is one call.
	var pairs []*pb.CheckBulkPair
	all := req.Items
	for len(all) > 0 {
		n := min(len(all), maxBulkItems)
		req.Items = all[:n]
		all = all[n:]
		resp, err := d.perm.CheckBulk(ctx, req)
		if err != nil {
			return nil, fmt.Errorf("mandate CheckBulk of %d items: %w", n, err)
		}
		if len(resp.GetPairs()) != n {
			return nil, fmt.Errorf("mandate CheckBulk answered %d pairs for %d items", len(resp.GetPairs()), n)
		}
		pairs = append(pairs, resp.GetPairs()...)
	}
	for i, p := range pairs {
		if e := p.GetError(); e != nil {
			out[i] = Decision{Reason: "error: " + e.GetMessage(), Resource: items[i].object.String(), Permission: items[i].permission}
			continue
		}
		r := p.GetItem()
		if id.capability != "" {
			out[i] = judgeToken(id, items[i], r.GetDecision(), r.GetMissingParameters(), r.GetToken())
			continue
		}
		out[i] = judge(id, items[i], r.GetDecision(), r.GetMissingParameters(), r.GetDelegation())
	}
	return out, nil
}

// judge turns Mandate's answer into the gateway's: allowed only when
// Mandate allowed and its live chain is exactly the claimed chain.
func judge(id *Identity, it checkItem, decision pb.Decision, missing []string, del *pb.DelegationExplanation) Decision {
	dec := Decision{Resource: it.object.String(), Permission: it.permission, FailedAt: -1, Missing: missing}
	for _, e := range del.GetChain() {
		dec.Chain = append(dec.Chain, e.GetSubject().GetObjectType()+":"+e.GetSubject().GetObjectId())
	}
	if del != nil {
		dec.FailedAt = int(del.GetFailedAt())
		dec.Reason = del.GetReason()
		dec.ResolvableByApproval = del.GetResolvableByApproval()
	}
	switch decision {
	case pb.Decision_DECISION_ALLOWED:
		if !slices.Equal(dec.Chain, id.ChainStrings()) {
			dec.Reason = ReasonChainMismatch
			return dec
		}
		dec.Allowed = true
		dec.Reason = ""
	case pb.Decision_DECISION_CONDITIONAL:
		dec.Reason = ReasonConditional
	default:
		if dec.Reason == "" {
			dec.Reason = ReasonDenied
		}
	}
	return dec
}

func objectProto(o rel.Object) *pb.ObjectReference {
	return &pb.ObjectReference{ObjectType: o.Type, ObjectId: o.ID}
}

// watch keeps the cache honest: it follows Mandate's Watch stream, moving
// to a new generation on every change, and disables the cache whenever the
// stream is down (a missed change must never leave an allow cached). It
// returns when ctx ends.
func (d *decider) watch(ctx context.Context) {
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		err := d.follow(ctx)
		d.healthy.Store(false)
		d.gen.Add(1)
		if ctx.Err() != nil {
			return
		}
		d.log.Warn("mandate watch stream lost; decisions are not cached until it is back", "error", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// follow opens one Watch stream from the store's current revision and
// consumes it.
func (d *decider) follow(ctx context.Context) error {
	// The schema read names a revision; watching after it, no change after
	// the cache is (re)enabled can be missed.
	sr, err := d.schema.ReadSchema(ctx, &pb.ReadSchemaRequest{
		Consistency: &pb.Consistency{Requirement: &pb.Consistency_FullyConsistent{FullyConsistent: true}},
	})
	if err != nil {
		return fmt.Errorf("reading the current revision: %w", err)
	}
	stream, err := d.rels.Watch(ctx, &pb.WatchRequest{OptionalStartCursor: sr.GetReadAt()})
	if err != nil {
		return fmt.Errorf("opening Watch: %w", err)
	}
	d.gen.Add(1)
	d.healthy.Store(true)
	for {
		if _, err := stream.Recv(); err != nil {
			return err
		}
		d.gen.Add(1)
	}
}
