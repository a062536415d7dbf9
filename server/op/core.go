// Package op is Mandate's operation core: every API the server speaks
// (mandate.v1 over gRPC and REST, SpiceDB's authzed.api.v1, and the facades
// to come: AuthZEN, capability tokens, approvals, the MCP gateway) is a thin
// layer that converts its wire shapes into this package's requests, calls a
// Core method, and maps the result and the error back into its own contract.
//
// A Core resolves a request's consistency once (one Consistency value every
// API parses into), calls the engine (checks, lookups, expand) or the store
// (writes, reads, schema, watch), enforces the server's limits, counts
// decisions, and records the audit event of the operation from the engine's
// and the store's own results. Its types are Mandate's domain types
// (store/rel, engine, store): no protobuf or SpiceDB types.
//
// Requests leave room for what the next facades add per request, such as
// contextual relationships, a capability token or an approval id: fields on
// the request structs, resolved here, so that every facade gets them alike.
package op

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"time"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/server/audit"
	"github.com/mandate-authz/mandate/server/capability"
	"github.com/mandate-authz/mandate/store"
)

// Limits bound what one request may ask for. A request over a limit fails
// with a *LimitError naming it, which each API words in its own contract.
type Limits struct {
	// MaxMessageBytes bounds one gRPC message and one REST request body
	// (enforced by the transport, not the core).
	MaxMessageBytes int
	// MaxCheckBulkItems bounds the items of one CheckBulk.
	MaxCheckBulkItems int
	// MaxWriteUpdates bounds the updates of one WriteRelationships.
	MaxWriteUpdates int
	// MaxPreconditions bounds the preconditions of one write or delete.
	MaxPreconditions int
	// MaxLookupLimit bounds the limit of LookupResources and
	// LookupSubjects (a limit of 0 streams every result).
	MaxLookupLimit int
	// MaxReadLimit bounds the limit of ReadRelationships (0 streams every
	// result).
	MaxReadLimit int
	// MaxDeleteLimit bounds the limit of DeleteRelationships.
	MaxDeleteLimit int
	// MaxBulkBatch bounds the relationships of one import message and one
	// export batch.
	MaxBulkBatch int
	// RequestTimeout bounds every call except the long-running streams
	// (Watch, import, export); enforced by the transport. A client's
	// shorter deadline still applies.
	RequestTimeout time.Duration
	// MaxConcurrentSchemaCompiles bounds the schema writes and validations
	// compiling at once; more wait, within their deadline. Each schema is
	// also bounded on its own by schema.DefaultLimits.
	MaxConcurrentSchemaCompiles int
	// MaxContextualRelationships bounds the contextual relationships of one
	// check, bulk check item or lookup.
	MaxContextualRelationships int
	// MaxHistoryVersions bounds the superseded relationship versions the
	// engine keeps for history (engine.Superseded); a write that would take
	// it over is refused with a *HistoryFullError until revision retention
	// releases history. Zero: no bound (not defaulted by WithDefaults).
	MaxHistoryVersions int
	// HistoryRetryAfter is the retry hint of a write refused for history:
	// how often the server releases it. Zero: a second.
	HistoryRetryAfter time.Duration
}

// DefaultLimits are the limits `mandate serve` starts with.
func DefaultLimits() Limits {
	return Limits{
		MaxMessageBytes:   4 << 20,
		MaxCheckBulkItems: 1000,
		MaxWriteUpdates:   1000,
		MaxPreconditions:  1000,
		MaxLookupLimit:    1000,
		MaxReadLimit:      1000,
		MaxDeleteLimit:    1000,
		MaxBulkBatch:      10_000,
		RequestTimeout:    30 * time.Second,

		MaxConcurrentSchemaCompiles: schema.DefaultConcurrentCompiles,
		MaxContextualRelationships:  DefaultMaxContextualRelationships,
		MaxHistoryVersions:          DefaultMaxHistoryVersions,
	}
}

// DefaultMaxHistoryVersions is `mandate serve`'s bound on superseded
// versions kept: at the ~1.3 KB each the README measures, about 2.6 GB.
const DefaultMaxHistoryVersions = 2_000_000

// WithDefaults returns l with its zero fields set to DefaultLimits' values
// and MaxBulkBatch bounded by the store's limit on one write.
func (l Limits) WithDefaults() Limits {
	d := DefaultLimits()
	set := func(v *int, def int) {
		if *v <= 0 {
			*v = def
		}
	}
	set(&l.MaxMessageBytes, d.MaxMessageBytes)
	set(&l.MaxCheckBulkItems, d.MaxCheckBulkItems)
	set(&l.MaxWriteUpdates, d.MaxWriteUpdates)
	set(&l.MaxPreconditions, d.MaxPreconditions)
	set(&l.MaxLookupLimit, d.MaxLookupLimit)
	set(&l.MaxReadLimit, d.MaxReadLimit)
	set(&l.MaxDeleteLimit, d.MaxDeleteLimit)
	set(&l.MaxBulkBatch, d.MaxBulkBatch)
	set(&l.MaxConcurrentSchemaCompiles, d.MaxConcurrentSchemaCompiles)
	set(&l.MaxContextualRelationships, d.MaxContextualRelationships)
	l.MaxContextualRelationships = min(l.MaxContextualRelationships, engine.MaxContextualRelationships)
	if l.MaxBulkBatch > store.MaxMutationsPerWrite {
		l.MaxBulkBatch = store.MaxMutationsPerWrite
	}
	if l.RequestTimeout <= 0 {
		l.RequestTimeout = d.RequestTimeout
	}
	return l
}

// Auditor receives the core's audit events. Record is called on the
// request path: it must be quick, and returns an error only when the event
// could not be accepted. *audit.Log implements it.
type Auditor interface {
	Record(ctx context.Context, ev *audit.Event) error
}

// DurableAuditor is an Auditor that can make events durable before a call
// is acknowledged (group commit); *audit.Log implements it. The core uses
// it, when the Auditor has it, for writes, deletes, imports and schema
// changes.
type DurableAuditor interface {
	Auditor
	RecordDurable(ctx context.Context, evs ...*audit.Event) error
}

// DefaultMaxRevisionWait is the revision wait when Config leaves it zero.
const DefaultMaxRevisionWait = 5 * time.Second

// Config builds a Core.
type Config struct {
	Engine *engine.Engine
	Store  store.Store
	// Auditor receives an event for every operation; nil audits nothing.
	Auditor Auditor
	// Limits; zero fields take DefaultLimits' values.
	Limits Limits
	// MaxRevisionWait bounds how long a read waits for the engine to apply
	// the revision its consistency needs (and for the store's head); past
	// it the read fails with ErrUnavailable. Zero: DefaultMaxRevisionWait.
	MaxRevisionWait time.Duration
	// Decided, when set, is told every check decision (metrics).
	Decided func(engine.Decision)
	// Classify names an error's outcome in audit events of calls made
	// without a Call (see Begin); nil: "Internal" and the error's text.
	Classify func(error) (code, message string)
	// Log receives what an operator must see (an audit event lost after a
	// write); nil discards it.
	Log *slog.Logger
	// Tokens checks requests made with capability tokens; nil refuses them
	// with ErrTokensOff.
	Tokens *capability.Checker
}

// Core runs operations. It is safe for concurrent use.
type Core struct {
	eng      *engine.Engine
	st       store.Store
	aud      Auditor
	lim      Limits
	wait     time.Duration
	decided  func(engine.Decision)
	classify func(error) (string, string)
	log      *slog.Logger
	// tokens checks capability tokens against tokenEng (nil: refused).
	tokens   *capability.Checker
	tokenEng capability.Engine
	// used registers attenuated tokens on first use (token_service.go).
	used *usedTokens
	// kinds remembers the store's schema at a revision the engine has not
	// applied yet, for write events; see subjectKindsAt.
	kinds schemaCache
	// schemas compiles what callers send, within limits, a few at a time.
	schemas *schema.Compiler
	// grants and escalator shape agents' checks by approvals (nil: none);
	// see approval.go.
	grants    Grants
	escalator Escalator
}

// New builds a Core.
func New(cfg Config) (*Core, error) {
	if cfg.Engine == nil || cfg.Store == nil {
		return nil, errors.New("op: an engine and a store are required")
	}
	c := &Core{
		eng: cfg.Engine, st: cfg.Store, aud: cfg.Auditor, lim: cfg.Limits.WithDefaults(),
		wait: cfg.MaxRevisionWait, decided: cfg.Decided, classify: cfg.Classify, log: cfg.Log,
		tokens: cfg.Tokens, tokenEng: capability.ForEngine(cfg.Engine), used: newUsedTokens(),
	}
	c.schemas = schema.NewCompiler(schema.Limits{}, c.lim.MaxConcurrentSchemaCompiles)
	if c.wait <= 0 {
		c.wait = DefaultMaxRevisionWait
	}
	if c.decided == nil {
		c.decided = func(engine.Decision) {}
	}
	if c.classify == nil {
		c.classify = func(err error) (string, string) { return "Internal", err.Error() }
	}
	if c.log == nil {
		c.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return c, nil
}

// Limits returns the limits the core enforces.
func (c *Core) Limits() Limits { return c.lim }
