package approval

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/feed"
	"github.com/mandate-authz/mandate/server/audit"
	"github.com/mandate-authz/mandate/server/capability"
	"github.com/mandate-authz/mandate/server/op"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// Record kinds. A request is one record, rewritten (Touch) at each step.
// Its two irreversible steps each Create a record of their own in the same
// write, so that of two replicas racing only one succeeds (store.Create
// fails with ErrRecordExists for the other): the decision (approve or
// deny) and the end of a grant or pending request (redeemed, revoked,
// expired).
const (
	RequestKind  = "approval.request"
	DecisionKind = "approval.decision"
	EndKind      = "approval.end"
)

// Defaults and limits (README limits table).
const (
	DefaultRequestTTL       = 24 * time.Hour
	DefaultGrantDuration    = 15 * time.Minute
	DefaultMaxGrantDuration = 8 * time.Hour
	// DefaultHistoryRetention is how long a finished request (denied,
	// expired, redeemed, revoked) is kept for the inbox's history.
	DefaultHistoryRetention = 30 * 24 * time.Hour
	MaxReasonLength         = 2000
	MaxNoteLength           = 2000
	MaxTaskLength           = capability.MaxTaskLength
	// MaxOpenPerAgent bounds an agent's pending requests, so that no agent
	// floods its principal's inbox.
	MaxOpenPerAgent = 100
)

// Errors of the service.
var (
	ErrNotFound   = errors.New("approval request not found")
	ErrNotAllowed = errors.New("not allowed to decide this approval request")
	ErrNotPending = errors.New("approval request is not pending")
	ErrInvalid    = errors.New("invalid approval request")
)

// Core is what the service asks of the operation core (*op.Core): checks
// without approvals (would a grant help the agent; does the approver hold
// the permission now) and the audit trail.
type Core interface {
	CheckWithoutApprovals(ctx context.Context, req op.CheckRequest) (op.CheckResult, error)
	Escalation(ctx context.Context, req op.CheckRequest, res op.CheckResult) (op.EscalationMatch, bool, error)
	AuditApproval(ctx context.Context, ev op.ApprovalEvent) error
}

// Config builds a Service.
type Config struct {
	Records store.RecordStore
	Core    Core
	// RequestTTL is how long a request stays pending (0: 24h).
	RequestTTL time.Duration
	// DefaultGrant is a grant's duration when the approver names none
	// (0: 15 minutes); MaxGrant bounds every grant (0: 8 hours).
	DefaultGrant, MaxGrant time.Duration
	// HistoryRetention is how long a finished request and its decision and
	// end records are kept (0: 30 days); see Prune.
	HistoryRetention time.Duration
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	Log *slog.Logger
}

// Service keeps approval requests and grants. Its in-memory view follows
// the store's change stream (Load and Apply, a feed record set), so every
// replica answers checks from the same grants; writes go to the store.
// Safe for concurrent use.
type Service struct {
	cfg Config

	mu   sync.RWMutex
	byID map[string]Request
	// prog is the revision the view has applied through.
	prog feed.Progress
}

// New returns a service with an empty view at revision zero; feed it with
// Load and Apply (or Follow).
func New(cfg Config) (*Service, error) {
	if cfg.Records == nil || cfg.Core == nil {
		return nil, errors.New("approval: a record store and the operation core are required")
	}
	if cfg.RequestTTL <= 0 {
		cfg.RequestTTL = DefaultRequestTTL
	}
	if cfg.MaxGrant <= 0 {
		cfg.MaxGrant = DefaultMaxGrantDuration
	}
	if cfg.DefaultGrant <= 0 {
		cfg.DefaultGrant = min(DefaultGrantDuration, cfg.MaxGrant)
	}
	if cfg.DefaultGrant > cfg.MaxGrant {
		return nil, fmt.Errorf("approval: the default grant duration %s is over the maximum %s", cfg.DefaultGrant, cfg.MaxGrant)
	}
	if cfg.HistoryRetention <= 0 {
		cfg.HistoryRetention = DefaultHistoryRetention
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Service{cfg: cfg, byID: map[string]Request{}}, nil
}

// MaxGrant is the longest grant the service gives.
func (s *Service) MaxGrant() time.Duration { return s.cfg.MaxGrant }

func (s *Service) now() time.Time { return s.cfg.Now().UTC() }

func invalid(field string, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalid, field, fmt.Sprintf(format, args...))
}

// File records an agent's request for a person's approval. The service
// asks the engine (without approvals) for the agent's check and takes the
// chain from its answer, not from the caller: the request is refused
// unless the agent acts for Principal and the check is either allowed
// (an escalation rule may then hold it) or denied only for the agent's own
// grant, so a grant would help.
func (s *Service) File(ctx context.Context, r Request) (Request, error) {
	if err := validateObject("agent", r.Agent); err != nil {
		return Request{}, err
	}
	if err := validateObject("principal", r.Principal); err != nil {
		return Request{}, err
	}
	if err := validateObject("resource", r.Resource); err != nil {
		return Request{}, err
	}
	if r.Permission == "" || len(r.Permission) > 64 {
		return Request{}, invalid("permission", "expected 1 to 64 bytes")
	}
	if len(r.Task) > MaxTaskLength {
		return Request{}, invalid("task", "at most %d bytes", MaxTaskLength)
	}
	if len(r.Reason) > MaxReasonLength {
		return Request{}, invalid("reason", "at most %d bytes", MaxReasonLength)
	}
	if len(r.Rule) > 128 || len(r.EvaluationID) > 64 {
		return Request{}, invalid("rule", "at most 128 bytes (evaluation_id: 64)")
	}
	switch {
	case r.Duration < 0:
		return Request{}, invalid("duration", "expected a positive duration")
	case r.Duration > s.cfg.MaxGrant:
		return Request{}, invalid("duration", "%s is over the maximum grant of %s", r.Duration, s.cfg.MaxGrant)
	}
	p := r.Principal
	creq := op.CheckRequest{
		Resource: r.Resource, Permission: r.Permission, Subject: rel.Subject{Type: r.Agent.Type, ID: r.Agent.ID},
		OnBehalfOf: &p, Context: taskContext(r.Task), Consistency: op.Consistency{Mode: op.FullyConsistent},
	}
	res, err := s.cfg.Core.CheckWithoutApprovals(ctx, creq)
	if err != nil {
		return Request{}, fmt.Errorf("checking the agent's request: %w", err)
	}
	d := res.Delegation
	if d == nil || len(d.Chain) < 2 || d.Chain[len(d.Chain)-1].Subject != r.Principal {
		return Request{}, invalid("agent", "%s is not an agent acting for %s", r.Agent, r.Principal)
	}
	if res.Decision != engine.Allowed && !(res.Decision == engine.Denied && op.OnlyAgentGrantMissing(res)) {
		return Request{}, invalid("permission", "%s's check of %s on %s is %s (%s): a grant to the agent would not allow it", r.Agent, r.Permission, r.Resource, decisionWord(res.Decision), d.Reason)
	}
	r.Chain = make([]rel.Object, len(d.Chain))
	for i, e := range d.Chain {
		r.Chain[i] = e.Subject
	}
	// The rule and its bound on the grant come from the rules in force,
	// not from the agent, whenever a rule holds the check now.
	r.MaxDuration = 0
	if res.Decision == engine.Allowed {
		m, ok, err := s.cfg.Core.Escalation(ctx, creq, res)
		switch {
		case err != nil:
			r.Rule = m.Rule // the rule that failed, or escalation-error
		case ok:
			r.Rule, r.MaxDuration = m.Rule, m.MaxDuration
		}
	} else {
		r.Rule = ""
	}
	if r.MaxDuration > 0 && r.Duration > r.MaxDuration {
		return Request{}, invalid("duration", "%s is over rule %s's maximum grant of %s", r.Duration, r.Rule, r.MaxDuration)
	}
	if n := s.openFor(r.Agent); n >= MaxOpenPerAgent {
		return Request{}, invalid("agent", "%s already has %d pending requests, at most %d", r.Agent, n, MaxOpenPerAgent)
	}
	now := s.now()
	r.ID, r.Status, r.Created, r.Expires = newID(), Pending, now, now.Add(s.cfg.RequestTTL)
	r.Decider, r.Note, r.Decided, r.GrantExpires, r.SingleUse, r.Redeemed = rel.Object{}, "", time.Time{}, time.Time{}, false, time.Time{}
	rev, err := s.write(ctx, []store.RecordMutation{s.touch(r, store.Create)})
	if err != nil {
		return Request{}, err
	}
	r.Revision = rev
	s.audit(ctx, audit.OpApprovalRequested, r, rel.Object{}, r.Reason)
	return r, nil
}

func decisionWord(d engine.Decision) string {
	switch d {
	case engine.Allowed:
		return "allowed"
	case engine.Conditional:
		return "conditional"
	}
	return "denied"
}

func taskContext(task string) map[string]any {
	if task == "" {
		return nil
	}
	return map[string]any{"task": task}
}

func validateObject(field string, o rel.Object) error {
	if err := rel.ValidateObject(o); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrInvalid, field, err)
	}
	return nil
}

// Get returns a request as this replica knows it.
func (s *Service) Get(ctx context.Context, id string) (Request, error) {
	s.mu.RLock()
	r, ok := s.byID[id]
	s.mu.RUnlock()
	if !ok {
		return Request{}, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	return s.current(r), nil
}

// current is r with the statuses time has changed: a pending request or a
// grant past its time reads as expired before the sweep records it.
func (s *Service) current(r Request) Request {
	now := s.now()
	switch {
	case r.Status == Pending && !now.Before(r.Expires):
		r.Status = Expired
	case r.Status == Approved && !now.Before(r.GrantExpires):
		r.Status = Expired
	}
	return r
}

// List returns the requests matching f, newest first. An Approver filter
// asks the engine, per request, whether that person may decide it.
func (s *Service) List(ctx context.Context, f Filter) ([]Request, error) {
	s.mu.RLock()
	all := make([]Request, 0, len(s.byID))
	for _, r := range s.byID {
		all = append(all, s.current(r))
	}
	s.mu.RUnlock()
	slices.SortFunc(all, func(a, b Request) int {
		if c := b.Created.Compare(a.Created); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	out := all[:0]
	for _, r := range all {
		ok, err := s.matches(ctx, f, r)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, r)
		}
	}
	return out, nil
}

func (s *Service) matches(ctx context.Context, f Filter, r Request) (bool, error) {
	switch {
	case f.Status != "" && r.Status != f.Status,
		f.Task != "" && r.Task != f.Task,
		f.Principal != nil && r.Principal != *f.Principal,
		f.Agent != nil && r.Agent != *f.Agent:
		return false, nil
	case f.Approver != nil:
		err := s.mayDecide(ctx, *f.Approver, r)
		if errors.Is(err, ErrNotAllowed) {
			return false, nil
		}
		return err == nil, err
	}
	return true, nil
}

// mayDecide: who is the chain's principal, or a person who holds the
// permission on the resource now (asked of the engine, fully consistent).
func (s *Service) mayDecide(ctx context.Context, who rel.Object, r Request) error {
	if err := rel.ValidateObject(who); err != nil {
		return fmt.Errorf("%w: approver: %w", ErrInvalid, err)
	}
	if who == r.Principal {
		return nil
	}
	if who == r.Agent || slices.Contains(r.Chain, who) {
		// No agent of the chain approves its own request.
		return fmt.Errorf("%w: %s is in the request's own chain", ErrNotAllowed, who)
	}
	res, err := s.cfg.Core.CheckWithoutApprovals(ctx, op.CheckRequest{
		Resource: r.Resource, Permission: r.Permission, Subject: rel.Subject{Type: who.Type, ID: who.ID},
		Consistency: op.Consistency{Mode: op.FullyConsistent},
	})
	if err != nil {
		return fmt.Errorf("checking whether %s may decide: %w", who, err)
	}
	if res.Delegation != nil {
		return fmt.Errorf("%w: %s is an agent, not a person", ErrNotAllowed, who)
	}
	if res.Decision != engine.Allowed {
		return fmt.Errorf("%w: %s is not %s's principal and does not hold %s on %s", ErrNotAllowed, who, r.Agent, r.Permission, r.Resource)
	}
	return nil
}

// Approve grants a pending request, for d.Duration (0: the default; more
// than the maximum is refused), optionally single-use.
func (s *Service) Approve(ctx context.Context, id string, d Decision) (Request, error) {
	return s.decide(ctx, id, d, Approved)
}

// Deny refuses a pending request.
func (s *Service) Deny(ctx context.Context, id string, d Decision) (Request, error) {
	return s.decide(ctx, id, d, Denied)
}

func (s *Service) decide(ctx context.Context, id string, d Decision, to Status) (Request, error) {
	if len(d.Note) > MaxNoteLength {
		return Request{}, invalid("note", "at most %d bytes", MaxNoteLength)
	}
	if d.Duration < 0 || d.Duration > s.cfg.MaxGrant {
		return Request{}, invalid("duration", "expected 0 (the default, %s) up to the maximum grant of %s", s.cfg.DefaultGrant, s.cfg.MaxGrant)
	}
	r, err := s.fresh(ctx, id)
	if err != nil {
		return Request{}, err
	}
	if err := s.mayDecide(ctx, d.Approver, r); err != nil {
		return Request{}, err
	}
	if r = s.current(r); r.Status != Pending {
		return Request{}, fmt.Errorf("%w: %s is %s", ErrNotPending, id, r.Status)
	}
	now := s.now()
	r.Status, r.Decider, r.Note, r.Decided = to, d.Approver, d.Note, now
	op := audit.OpApprovalDenied
	if to == Approved {
		dur := d.Duration
		if dur == 0 {
			dur = s.cfg.DefaultGrant
			if r.Duration > 0 {
				dur = r.Duration
			}
		}
		if r.MaxDuration > 0 && dur > r.MaxDuration {
			if d.Duration > 0 {
				return Request{}, invalid("duration", "%s is over rule %s's maximum grant of %s", d.Duration, r.Rule, r.MaxDuration)
			}
			dur = r.MaxDuration
		}
		r.GrantExpires, r.SingleUse = now.Add(dur), d.SingleUse
		op = audit.OpApprovalApproved
	}
	rev, err := s.write(ctx, []store.RecordMutation{
		{Op: store.Create, Record: store.Record{Kind: DecisionKind, ID: id}},
		s.touch(r, store.Touch),
	})
	if errors.Is(err, store.ErrRecordExists) {
		return Request{}, fmt.Errorf("%w: %s was decided meanwhile", ErrNotPending, id)
	}
	if err != nil {
		return Request{}, err
	}
	r.Revision = rev
	s.audit(ctx, op, r, d.Approver, d.Note)
	return r, nil
}

// fresh returns the request once this replica's view has caught up with
// the store's head, so that a decision is never made on stale state.
func (s *Service) fresh(ctx context.Context, id string) (Request, error) {
	head, err := s.head(ctx)
	if err != nil {
		return Request{}, fmt.Errorf("reading the store's head: %w", err)
	}
	if err := s.WaitFor(ctx, head); err != nil {
		return Request{}, err
	}
	s.mu.RLock()
	r, ok := s.byID[id]
	s.mu.RUnlock()
	if !ok {
		return Request{}, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	return r, nil
}

// head is the store's head revision.
func (s *Service) head(ctx context.Context) (store.Revision, error) {
	if h, ok := s.cfg.Records.(interface {
		Head(context.Context) (store.Revision, error)
	}); ok {
		return h.Head(ctx)
	}
	_, rev, err := s.cfg.Records.ReadRecords(ctx, RequestKind)
	return rev, err
}

// Revoke ends a grant (or withdraws a pending request) early. by must be
// allowed to decide the request.
func (s *Service) Revoke(ctx context.Context, id string, by rel.Object) (Request, error) {
	r, err := s.fresh(ctx, id)
	if err != nil {
		return Request{}, err
	}
	if err := s.mayDecide(ctx, by, r); err != nil {
		return Request{}, err
	}
	if c := s.current(r); c.Status == Expired {
		return Request{}, fmt.Errorf("%w: %s has expired", ErrNotPending, id)
	}
	return s.end(ctx, r, Revoked, by, "")
}

// end ends a pending request or a grant, r as stored. A pending request's
// end creates its decision record, so it cannot race an approval; a
// grant's creates its end record, so exactly one of racing ends (redeem,
// revoke, expire) wins.
func (s *Service) end(ctx context.Context, r Request, to Status, by rel.Object, detail string) (Request, error) {
	kind := EndKind
	switch r.Status {
	case Pending:
		kind = DecisionKind
	case Approved:
	default:
		return Request{}, fmt.Errorf("%w: %s is %s", ErrNotPending, r.ID, r.Status)
	}
	now := s.now()
	r.Status = to
	switch to {
	case Redeemed:
		r.Redeemed = now
	case Revoked:
		if r.Decider.Type == "" {
			r.Decider, r.Decided = by, now
		}
	}
	rev, err := s.write(ctx, []store.RecordMutation{
		{Op: store.Create, Record: store.Record{Kind: kind, ID: r.ID, Data: []byte(to)}},
		s.touch(r, store.Touch),
	})
	if errors.Is(err, store.ErrRecordExists) {
		return Request{}, fmt.Errorf("%w: %s has ended already", ErrNotPending, r.ID)
	}
	if err != nil {
		return Request{}, err
	}
	r.Revision = rev
	op := map[Status]audit.Operation{Redeemed: audit.OpApprovalRedeemed, Revoked: audit.OpApprovalRevoked, Expired: audit.OpApprovalExpired}[to]
	s.audit(ctx, op, r, by, detail)
	return r, nil
}

// EndTask revokes every pending request and live grant of the task, and
// every capability token of the task (a durable revocation by task). It
// returns how many requests and grants it ended.
func (s *Service) EndTask(ctx context.Context, task string, by rel.Object) (int, error) {
	if task == "" || len(task) > MaxTaskLength {
		return 0, invalid("task", "expected 1 to %d bytes", MaxTaskLength)
	}
	if err := validateObject("by", by); err != nil {
		return 0, err
	}
	if _, err := capability.Revoke(ctx, s.cfg.Records, capability.Revocation{By: capability.RevokeTask, Value: task, Reason: "task ended by " + by.String()}); err != nil {
		return 0, fmt.Errorf("revoking the task's tokens: %w", err)
	}
	// The store's records are the truth: a request filed on another replica
	// a moment ago is ended too.
	recs, _, err := s.cfg.Records.ReadRecords(ctx, RequestKind)
	if err != nil {
		return 0, fmt.Errorf("reading the task's requests: %w", err)
	}
	n := 0
	for _, rec := range recs {
		r, err := decodeRequest(rec)
		if err != nil {
			return n, err
		}
		if r.Task != task || (r.Status != Pending && r.Status != Approved) {
			continue
		}
		if _, err := s.end(ctx, r, Revoked, by, "task ended"); err != nil {
			if errors.Is(err, ErrNotPending) {
				continue
			}
			return n, err
		}
		n++
	}
	return n, nil
}

// LiveGrant implements op.Grants: the live grant for exactly key, from
// this replica's view once it has applied rev.
func (s *Service) LiveGrant(ctx context.Context, key op.GrantKey, id string, rev store.Revision) (op.Grant, bool, error) {
	if err := s.WaitFor(ctx, rev); err != nil {
		return op.Grant{}, false, err
	}
	now := s.now()
	live := func(r Request) bool {
		return r.Status == Approved && now.Before(r.GrantExpires) && r.Agent == key.Agent && r.Principal == key.Principal &&
			r.Resource == key.Resource && r.Permission == key.Permission
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if id != "" {
		r, ok := s.byID[id]
		if !ok || !live(r) {
			return op.Grant{}, false, nil
		}
		return op.Grant{ID: r.ID, SingleUse: r.SingleUse, Expires: r.GrantExpires}, true, nil
	}
	var best *Request
	for _, r := range s.byID {
		if !r.SingleUse && live(r) && (best == nil || r.GrantExpires.After(best.GrantExpires)) {
			best = &r
		}
	}
	if best == nil {
		return op.Grant{}, false, nil
	}
	return op.Grant{ID: best.ID, Expires: best.GrantExpires}, true, nil
}

// Redeem implements op.Grants: the single-use grant id is used once,
// across every replica (its end record is created once).
func (s *Service) Redeem(ctx context.Context, id string, key op.GrantKey) (bool, error) {
	s.mu.RLock()
	r, ok := s.byID[id]
	s.mu.RUnlock()
	if !ok {
		return false, nil
	}
	_, err := s.end(ctx, r, Redeemed, rel.Object{}, "")
	if errors.Is(err, ErrNotPending) {
		return false, nil
	}
	return err == nil, err
}

// Sweep records the expiry of pending requests and grants whose time has
// passed, each once across replicas, and returns how many it recorded.
func (s *Service) Sweep(ctx context.Context) (int, error) {
	s.mu.RLock()
	var due []Request
	for _, r := range s.byID {
		if c := s.current(r); c.Status == Expired && r.Status != Expired {
			due = append(due, r)
		}
	}
	s.mu.RUnlock()
	n := 0
	for _, r := range due {
		if _, err := s.end(ctx, r, Expired, rel.Object{}, ""); err != nil {
			if errors.Is(err, ErrNotPending) {
				continue
			}
			return n, err
		}
		n++
	}
	return n, nil
}

// RunSweeper sweeps every interval until ctx ends.
func (s *Service) RunSweeper(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := s.Sweep(ctx); err != nil && ctx.Err() == nil {
			s.cfg.Log.Warn("recording expired approval requests failed; retrying", "error", err)
		}
		if n, err := s.Prune(ctx); err != nil && ctx.Err() == nil {
			s.cfg.Log.Warn("pruning approval history failed; retrying", "error", err)
		} else if n > 0 {
			s.cfg.Log.Info("pruned approval history", "requests", n, "retention", s.cfg.HistoryRetention)
		}
	}
}

// pruneBatch is how many requests one prune write deletes: three records
// each (the request, its decision and its end) within the store's limit.
const pruneBatch = store.MaxRecordMutations / 3

// Prune deletes finished requests (denied, expired, redeemed, revoked, as
// stored) with their decision and end records, HistoryRetention after the
// latest of their times: pending expiry, grant expiry, decision and
// redemption. Counting from the expiries keeps the deletion safe against
// a replica whose view still shows a pruned request live: by then every
// step it could take (decide, redeem, revoke) is refused by time alone,
// so recreating a deleted decision or end record allows nothing. One
// store write per batch; returns how many requests it deleted.
func (s *Service) Prune(ctx context.Context) (int, error) {
	cutoff := s.now().Add(-s.cfg.HistoryRetention)
	s.mu.RLock()
	var due []string
	for id, r := range s.byID {
		if finished(r) && lastTime(r).Before(cutoff) {
			due = append(due, id)
		}
	}
	s.mu.RUnlock()
	n := 0
	for len(due) > 0 {
		batch := due[:min(len(due), pruneBatch)]
		due = due[len(batch):]
		muts := make([]store.RecordMutation, 0, 3*len(batch))
		for _, id := range batch {
			for _, kind := range []string{RequestKind, DecisionKind, EndKind} {
				muts = append(muts, store.RecordMutation{Op: store.Delete, Record: store.Record{Kind: kind, ID: id}})
			}
		}
		if _, err := s.write(ctx, muts); err != nil {
			return n, fmt.Errorf("pruning approval history: %w", err)
		}
		n += len(batch)
	}
	return n, nil
}

func finished(r Request) bool {
	switch r.Status {
	case Denied, Expired, Redeemed, Revoked:
		return true
	}
	return false
}

// lastTime is the latest time a request names.
func lastTime(r Request) time.Time {
	t := r.Expires
	for _, u := range []time.Time{r.GrantExpires, r.Decided, r.Redeemed} {
		if u.After(t) {
			t = u
		}
	}
	return t
}

// Watch yields the requests matching f, then every change to one (a
// change that takes a request out of f, as a decision does to a pending
// filter, included), until ctx ends. It ends with an error only when a change cannot be matched
// (the engine could not answer an Approver filter).
func (s *Service) Watch(ctx context.Context, f Filter) iter.Seq2[Request, error] {
	return func(yield func(Request, error) bool) {
		seen := map[string]store.Revision{}
		at := s.prog.Revision()
		list, err := s.List(ctx, f)
		if err != nil {
			yield(Request{}, err)
			return
		}
		slices.Reverse(list) // oldest first, as changes follow
		// matched: requests the watcher has been shown; a change that takes
		// one out of the filter (pending to approved) is shown too, once.
		matched := map[string]bool{}
		for _, r := range list {
			seen[r.ID], matched[r.ID] = r.Revision, true
			if !yield(r, nil) {
				return
			}
		}
		for {
			if s.prog.WaitFor(ctx, at+1) != nil {
				return // ctx ended
			}
			at = s.prog.Revision()
			s.mu.RLock()
			var changed []Request
			for id, r := range s.byID {
				if r.Revision > seen[id] {
					changed = append(changed, s.current(r))
				}
			}
			s.mu.RUnlock()
			slices.SortFunc(changed, func(a, b Request) int { return int(a.Revision) - int(b.Revision) })
			for _, r := range changed {
				seen[r.ID] = r.Revision
				ok, err := s.matches(ctx, f, r)
				if err != nil {
					yield(Request{}, err)
					return
				}
				was := matched[r.ID]
				matched[r.ID] = ok
				if (ok || was) && !yield(r, nil) {
					return
				}
			}
		}
	}
}

// openFor counts an agent's pending requests.
func (s *Service) openFor(agent rel.Object) int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n := 0
	for _, r := range s.byID {
		if r.Agent == agent && s.current(r).Status == Pending {
			n++
		}
	}
	return n
}

func (s *Service) write(ctx context.Context, muts []store.RecordMutation) (store.Revision, error) {
	rev, err := s.cfg.Records.WriteRecords(ctx, muts)
	if err != nil {
		return 0, fmt.Errorf("writing the approval request: %w", err)
	}
	// Callers read their own write: wait (briefly) for the view to apply it.
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := s.WaitFor(wctx, rev); err != nil {
		s.cfg.Log.Warn("approval view lags its own write", "revision", uint64(rev), "error", err)
	}
	return rev, nil
}

// audit records a step. The step is written already, so a lost event is
// logged, not returned (as the core does for writes).
func (s *Service) audit(ctx context.Context, what audit.Operation, r Request, by rel.Object, detail string) {
	if err := s.cfg.Core.AuditApproval(ctx, op.ApprovalEvent{
		Operation: what, ID: r.ID, Chain: r.Chain, Resource: r.Resource, Permission: r.Permission,
		Task: r.Task, Rule: r.Rule, By: by, Detail: detail, Revision: r.Revision,
	}); err != nil {
		s.cfg.Log.Error("an approval step was not audited", "operation", what, "approval_id", r.ID, "error", err)
	}
}

func newID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// record is a request's stored form.
type record struct {
	Agent        string        `json:"agent"`
	Principal    string        `json:"principal"`
	Chain        []string      `json:"chain"`
	Resource     string        `json:"resource"`
	Permission   string        `json:"permission"`
	Task         string        `json:"task,omitempty"`
	Reason       string        `json:"reason,omitempty"`
	Rule         string        `json:"rule,omitempty"`
	EvaluationID string        `json:"evaluation_id,omitempty"`
	Duration     time.Duration `json:"duration,omitempty"`
	MaxDuration  time.Duration `json:"max_duration,omitempty"`
	Created      time.Time     `json:"created"`
	Expires      time.Time     `json:"expires"`
	Status       Status        `json:"status"`
	Decider      string        `json:"decider,omitempty"`
	Note         string        `json:"note,omitempty"`
	Decided      time.Time     `json:"decided,omitzero"`
	GrantExpires time.Time     `json:"grant_expires,omitzero"`
	SingleUse    bool          `json:"single_use,omitempty"`
	Redeemed     time.Time     `json:"redeemed,omitzero"`
}

func (s *Service) touch(r Request, o store.Op) store.RecordMutation {
	rec := record{
		Agent: r.Agent.String(), Principal: r.Principal.String(), Resource: r.Resource.String(), Permission: r.Permission,
		Task: r.Task, Reason: r.Reason, Rule: r.Rule, EvaluationID: r.EvaluationID, Duration: r.Duration, MaxDuration: r.MaxDuration,
		Created: r.Created, Expires: r.Expires, Status: r.Status, Note: r.Note, Decided: r.Decided,
		GrantExpires: r.GrantExpires, SingleUse: r.SingleUse, Redeemed: r.Redeemed,
	}
	if r.Decider.Type != "" {
		rec.Decider = r.Decider.String()
	}
	for _, o := range r.Chain {
		rec.Chain = append(rec.Chain, o.String())
	}
	data, _ := json.Marshal(rec) // plain strings and times: cannot fail
	return store.RecordMutation{Op: o, Record: store.Record{Kind: RequestKind, ID: r.ID, Data: data}}
}

func decodeRequest(rec store.Record) (Request, error) {
	var d record
	if err := json.Unmarshal(rec.Data, &d); err != nil {
		return Request{}, fmt.Errorf("approval record %s: %w", rec.ID, err)
	}
	r := Request{
		ID: rec.ID, Permission: d.Permission, Task: d.Task, Reason: d.Reason, Rule: d.Rule, EvaluationID: d.EvaluationID,
		Duration: d.Duration, MaxDuration: d.MaxDuration, Created: d.Created, Expires: d.Expires, Status: d.Status, Note: d.Note, Decided: d.Decided,
		GrantExpires: d.GrantExpires, SingleUse: d.SingleUse, Redeemed: d.Redeemed, Revision: rec.Revision,
	}
	var err error
	parse := func(s string) rel.Object {
		typ, id, ok := strings.Cut(s, ":")
		if !ok && err == nil {
			err = fmt.Errorf("approval record %s: object %q: expected type:id", rec.ID, s)
		}
		return rel.Object{Type: typ, ID: id}
	}
	r.Agent, r.Principal, r.Resource = parse(d.Agent), parse(d.Principal), parse(d.Resource)
	if d.Decider != "" {
		r.Decider = parse(d.Decider)
	}
	for _, c := range d.Chain {
		r.Chain = append(r.Chain, parse(c))
	}
	return r, err
}

var _ feed.RecordSet = (*Service)(nil)

// Kinds implements feed.RecordSet: the service keeps request records.
func (s *Service) Kinds() []string { return []string{RequestKind} }

// Load implements feed.RecordSet: it replaces the view with the request
// records current at rev.
func (s *Service) Load(records []store.Record, rev store.Revision) error {
	byID := make(map[string]Request, len(records))
	for _, rec := range records {
		r, err := decodeRequest(rec)
		if err != nil {
			return err
		}
		byID[rec.ID] = r
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.byID = byID
	s.advance(rev)
	return nil
}

// Apply implements feed.RecordSet: one change of the stream, in order.
func (s *Service) Apply(ch store.Change) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ch.Revision <= s.prog.Revision() {
		return nil
	}
	for _, u := range ch.Records {
		if u.Record.Kind != RequestKind {
			continue
		}
		if u.Op == store.Delete {
			delete(s.byID, u.Record.ID)
			continue
		}
		r, err := decodeRequest(u.Record)
		if err != nil {
			return err
		}
		s.byID[r.ID] = r
	}
	s.advance(ch.Revision)
	return nil
}

// advance moves the applied revision and wakes waiters. Callers hold mu,
// so that a reader woken at rev sees the view at rev.
func (s *Service) advance(rev store.Revision) { s.prog.Advance(rev) }

// Revision is the store revision the view has applied through.
func (s *Service) Revision() store.Revision { return s.prog.Revision() }

// WaitFor waits until the view has applied rev, or ctx ends.
func (s *Service) WaitFor(ctx context.Context, rev store.Revision) error {
	if err := s.prog.WaitFor(ctx, rev); err != nil {
		return fmt.Errorf("approval grants: %w", err)
	}
	return nil
}

// Source is what Follow reads: the store's records and change stream.
type Source interface {
	ReadRecords(ctx context.Context, kind string) ([]store.Record, store.Revision, error)
	Watch(ctx context.Context, after store.Revision) iter.Seq2[store.Change, error]
}

// Follow loads the requests into s and applies the change stream until ctx
// ends, returning the error that ended the stream (nil when ctx did).
// While it is not running the view stops advancing, and checks waiting on
// it fail closed (no grant).
func (s *Service) Follow(ctx context.Context, src Source) error {
	recs, rev, err := src.ReadRecords(ctx, RequestKind)
	if err != nil {
		return fmt.Errorf("loading approval requests: %w", err)
	}
	if err := s.Load(recs, rev); err != nil {
		return fmt.Errorf("loading approval requests: %w", err)
	}
	for ch, err := range src.Watch(ctx, rev) {
		if err != nil {
			return fmt.Errorf("following approval requests: %w", err)
		}
		if err := s.Apply(ch); err != nil {
			return fmt.Errorf("following approval requests: %w", err)
		}
	}
	return nil
}
