package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/mandate-authz/mandate/schema"
)

// Caveat evaluation is the costliest step of a caveated check, and agents
// meet one on every delegation link. Three things keep it off the hot path:
// a relationship's context is converted to the caveat's parameter types once
// and kept on the edge; a request's context once per request and caveat; and
// when every parameter is set by the relationship or by the engine (action,
// resource_type, resource_id), the outcome cannot depend on the caller, so it
// is kept on the edge too, keyed by the engine-supplied values.

// caveatMemo is what an edge's caveat has cached for one compiled caveat.
// It is immutable once published; a new one replaces it.
type caveatMemo struct {
	cv  *schema.Caveat
	rel *schema.Converted
	// closed: the relationship sets every parameter. closedSupplied: the
	// relationship and the engine-supplied parameters set every one.
	closed, closedSupplied bool
	outcomes               []fixedOutcome
}

// fixedOutcome is a decided outcome for the engine-supplied values it was
// evaluated with (all empty when the caveat declares none of them or none
// was supplied).
type fixedOutcome struct {
	key suppliedKey
	out outcome
	// err is a cost overrun: as fixed as an outcome, and kept so that
	// every check meeting the edge does not spend the whole budget again.
	err error
}

type suppliedKey struct {
	supplied                         bool
	action, resourceType, resourceID string
}

// maxFixedOutcomes bounds the outcomes kept per edge: a caveat reading
// resource_id would otherwise keep one per resource.
const maxFixedOutcomes = 16

func newCaveatMemo(cv *schema.Caveat, x *edgeCaveat) *caveatMemo {
	m := &caveatMemo{cv: cv, rel: cv.Convert(x.context), closed: true, closedSupplied: true}
	for _, name := range cv.ParamNames() {
		if m.rel.Has(name) {
			continue
		}
		m.closed = false
		if !isSuppliedParam(name) {
			m.closedSupplied = false
		}
	}
	return m
}

// isSuppliedParam reports whether the engine sets parameter name on
// acts_for links.
func isSuppliedParam(name string) bool {
	switch name {
	case ParamAction, ParamResourceType, ParamResourceID:
		return true
	}
	return false
}

// key returns the engine-supplied values the caveat reads, and whether the
// outcome is fixed by them and the relationship alone.
func (m *caveatMemo) key(req *CheckRequest) (suppliedKey, bool) {
	if req == nil {
		return suppliedKey{}, m.closed
	}
	k := suppliedKey{supplied: true}
	if m.cv.HasParam(ParamAction) {
		k.action = req.Permission
	}
	if m.cv.HasParam(ParamResourceType) {
		k.resourceType = req.Resource.Type
	}
	if m.cv.HasParam(ParamResourceID) {
		k.resourceID = req.Resource.ID
	}
	return k, m.closedSupplied
}

func (m *caveatMemo) find(k suppliedKey) (fixedOutcome, bool) {
	for i := range m.outcomes {
		if m.outcomes[i].key == k {
			return m.outcomes[i], true
		}
	}
	return fixedOutcome{}, false
}

// with returns a copy of m that also holds f, or nil when m is full.
func (m *caveatMemo) with(f fixedOutcome) *caveatMemo {
	if len(m.outcomes) >= maxFixedOutcomes {
		return nil
	}
	n := *m
	n.outcomes = append(append(make([]fixedOutcome, 0, len(m.outcomes)+1), m.outcomes...), f)
	return &n
}

// remember publishes f on the edge's memo m, when there is room.
func (m *caveatMemo) remember(x *edgeCaveat, f fixedOutcome) {
	if n := m.with(f); n != nil {
		// Losing a race to another evaluation only loses a cache entry.
		x.memo.CompareAndSwap(m, n)
	}
}

// convEntry is a context converted for one caveat.
type convEntry struct {
	cv   *schema.Caveat
	conv *schema.Converted
}

// convertedFor returns ctx converted for cv, converting it on first use in
// the cache the caller resets whenever ctx changes.
func convertedFor(cache *[]convEntry, cv *schema.Caveat, ctx map[string]any) *schema.Converted {
	if len(ctx) == 0 {
		return nil
	}
	for _, e := range *cache {
		if e.cv == cv {
			return e.conv
		}
	}
	conv := cv.Convert(ctx)
	*cache = append(*cache, convEntry{cv: cv, conv: conv})
	return conv
}

// DefaultMaxCaveatContextBytes bounds a request's caveat context, as JSON:
// SpiceDB's default --max-caveat-context-size.
const DefaultMaxCaveatContextBytes = 4096

// checkContextSize refuses a request context over the engine's bound, once
// per context.
func (c *checker) checkContextSize() error {
	if c.ctxChecked || len(c.ctx) == 0 || c.maxContextBytes <= 0 {
		return nil
	}
	b, err := json.Marshal(c.ctx)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidContext, err)
	}
	if len(b) > c.maxContextBytes {
		return fmt.Errorf("%w: the request's caveat context is %d bytes as JSON, over the maximum of %d", ErrInvalidContext, len(b), c.maxContextBytes)
	}
	c.ctxChecked = true
	return nil
}

// caveat evaluates an edge's caveat; an uncaveated edge is true.
func (c *checker) caveat(e *edge) (outcome, error) {
	if e.extra == 0 {
		return outTrue, nil
	}
	x := c.extra(e.extra).caveat
	if x == nil {
		return outTrue, nil
	}
	cv := c.pl.sch.Caveats[x.name]
	if cv == nil {
		return outFalse, fmt.Errorf("caveat %q is not defined in the schema", x.name)
	}
	m := x.memo.Load()
	if m == nil || m.cv != cv {
		m = newCaveatMemo(cv, x)
		x.memo.Store(m)
	}
	key, fixed := m.key(c.suppliedFor)
	if fixed {
		if f, ok := m.find(key); ok {
			return f.out, f.err
		}
	}
	var supplied *schema.Converted
	if c.suppliedFor != nil {
		if c.supplied == nil {
			c.supplied = map[string]any{
				ParamAction:       c.suppliedFor.Permission,
				ParamResourceType: c.suppliedFor.Resource.Type,
				ParamResourceID:   c.suppliedFor.Resource.ID,
			}
		}
		supplied = convertedFor(&c.suppliedConv, cv, c.supplied)
	}
	if err := c.checkContextSize(); err != nil {
		return outFalse, err
	}
	ctx := c.evalCtx
	if ctx == nil {
		ctx = context.Background()
	}
	// An error, a cost overrun among them, fails the whole check: it never
	// reads as false, which an exclusion would turn into an allow.
	res, err := cv.EvaluateConverted(ctx, convertedFor(&c.ctxConv, cv, c.ctx), m.rel, supplied)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return outFalse, fmt.Errorf("evaluating caveat %q: %w", x.name, ctxErr)
		}
		err = fmt.Errorf("%w: %w", ErrInvalidContext, err)
		if fixed && errors.Is(err, schema.ErrCaveatCost) {
			m.remember(x, fixedOutcome{key: key, out: outFalse, err: err})
		}
		return outFalse, err
	}
	o := outcome{v: res.Outcome, missing: res.Missing}
	if fixed {
		m.remember(x, fixedOutcome{key: key, out: o})
	}
	return o, nil
}
