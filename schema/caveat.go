package schema

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"

	"github.com/authzed/cel-go/cel"
	celtypes "github.com/authzed/cel-go/common/types"
	"github.com/authzed/cel-go/common/types/ref"
	"github.com/authzed/cel-go/interpreter"
	"github.com/authzed/spicedb/pkg/caveats"
	caveattypes "github.com/authzed/spicedb/pkg/caveats/types"
	core "github.com/authzed/spicedb/pkg/proto/core/v1"
	impl "github.com/authzed/spicedb/pkg/proto/impl/v1"
)

// Caveat is a compiled CEL caveat with typed parameters.
type Caveat struct {
	Name string
	// Params maps each parameter name to its type, as written (e.g. "list<string>").
	Params map[string]string

	paramTypes map[string]*core.CaveatTypeReference
	// vars are the decoded parameter types; names the parameters in order,
	// index their positions.
	vars  map[string]caveattypes.VariableType
	names []string
	index map[string]int
	// env and the programs are built once: SpiceDB's caveats.EvaluateCaveat
	// plans a new CEL program on every call, which dominated caveated checks.
	// partial tracks unknowns, for when some parameter is missing; exact is
	// the cheaper plain evaluation, for when every parameter is known.
	env     *cel.Env
	partial cel.Program
	exact   cel.Program
	maxCost uint64
}

// Outcome is a three-valued truth: the result of a caveat, a check, or any
// combination of them.
type Outcome uint8

const (
	// False: definitely not.
	False Outcome = iota
	// True: definitely so.
	True
	// Unknown: it depends on context that was not supplied.
	Unknown
)

func (o Outcome) String() string {
	switch o {
	case True:
		return "true"
	case False:
		return "false"
	}
	return "unknown"
}

// CaveatResult is the outcome of evaluating a caveat, with the parameters
// whose absence made it Unknown.
type CaveatResult struct {
	Outcome Outcome
	Missing []string
}

// interruptEvery is how many comprehension iterations a caveat evaluation
// runs between looks at its context's deadline.
const interruptEvery = 100

// ErrCaveatCost is the error of a caveat evaluation that exceeded
// Limits.MaxCaveatCost.
var ErrCaveatCost = errors.New("caveat evaluation exceeded its cost limit")

func newCaveat(cd *core.CaveatDefinition, maxCost uint64) (*Caveat, error) {
	ts := caveattypes.Default.TypeSet
	vars, err := caveattypes.DecodeParameterTypes(ts, cd.ParameterTypes)
	if err != nil {
		return nil, err
	}
	base, err := ts.BaseCelEnvironment()
	if err != nil {
		return nil, err
	}
	opts := make([]cel.EnvOption, 0, len(vars))
	for name, vt := range vars {
		opts = append(opts, cel.Variable(name, vt.CelType()))
	}
	env, err := base.Extend(opts...)
	if err != nil {
		return nil, err
	}
	var decoded impl.DecodedCaveat
	if err := decoded.UnmarshalVT(cd.SerializedExpression); err != nil {
		return nil, err
	}
	// Partial evaluation with state tracking reports the parameters whose
	// absence leaves the caveat undecided, as SpiceDB's evaluation does.
	ast := cel.CheckedExprToAst(decoded.GetCel())
	bounds := []cel.ProgramOption{cel.CostLimit(maxCost), cel.InterruptCheckFrequency(interruptEvery)}
	partial, err := env.Program(ast, append(bounds, cel.EvalOptions(cel.OptTrackState, cel.OptPartialEval))...)
	if err != nil {
		return nil, err
	}
	exact, err := env.Program(ast, bounds...)
	if err != nil {
		return nil, err
	}
	c := &Caveat{Name: cd.Name, Params: make(map[string]string, len(vars)), paramTypes: cd.ParameterTypes,
		vars: vars, index: make(map[string]int, len(vars)), env: env, partial: partial, exact: exact, maxCost: maxCost}
	for name, ref := range cd.ParameterTypes {
		c.Params[name] = caveats.ParameterTypeString(ref)
	}
	c.names = slices.Sorted(maps.Keys(vars))
	for i, n := range c.names {
		c.index[n] = i
	}
	return c, nil
}

// ParamNames lists the declared parameters, sorted.
func (c *Caveat) ParamNames() []string { return c.names }

// HasParam reports whether the caveat declares a parameter.
func (c *Caveat) HasParam(name string) bool {
	_, ok := c.Params[name]
	return ok
}

// ConvertContext converts JSON-shaped context values to the caveat's
// parameter types, ignoring keys the caveat does not declare. The error names
// the parameter and the expected type.
func (c *Caveat) ConvertContext(ctx map[string]any) (map[string]any, error) {
	conv := c.Convert(ctx)
	if conv == nil {
		return nil, nil
	}
	if err := conv.firstErr(); err != nil {
		return nil, err
	}
	out := make(map[string]any, len(conv.vals))
	for k, v := range conv.vals {
		out[k] = v.v
	}
	return out, nil
}

// Converted is a context converted to a caveat's parameter types once, so
// that evaluating it again (a relationship's context on every check) costs
// no conversion. A value that failed to convert keeps its error, reported
// only if evaluation uses that value: a key another context overrides is
// never an error, as with a merged context.
type Converted struct {
	vals map[string]convertedValue
}

type convertedValue struct {
	v   any
	err error
}

// Has reports whether the context sets parameter name.
func (cv *Converted) Has(name string) bool {
	if cv == nil {
		return false
	}
	_, ok := cv.vals[name]
	return ok
}

func (cv *Converted) lookup(name string) (convertedValue, bool) {
	if cv == nil {
		return convertedValue{}, false
	}
	v, ok := cv.vals[name]
	return v, ok
}

// firstErr returns the error of the first parameter, in name order, that
// failed to convert.
func (cv *Converted) firstErr() error {
	if cv == nil {
		return nil
	}
	var first string
	var err error
	for k, v := range cv.vals {
		if v.err != nil && (err == nil || k < first) {
			first, err = k, v.err
		}
	}
	return err
}

// Convert converts ctx to the caveat's parameter types, dropping keys the
// caveat does not declare. A nil result stands for an empty context.
func (c *Caveat) Convert(ctx map[string]any) *Converted {
	if len(ctx) == 0 {
		return nil
	}
	ctx = normalizeInts(ctx)
	out := &Converted{vals: make(map[string]convertedValue, len(ctx))}
	for k, v := range ctx {
		vt, ok := c.vars[k]
		if !ok {
			continue
		}
		conv, err := vt.ConvertValue(v)
		if err != nil {
			err = fmt.Errorf("caveat %q: parameter %q: expected %s: could not convert context parameter `%s`: %w", c.Name, k, c.Params[k], k, err)
		}
		out.vals[k] = convertedValue{v: conv, err: err}
	}
	return out
}

// ValidateContext checks that every key written on a relationship is a
// declared parameter of the right type.
func (c *Caveat) ValidateContext(ctx map[string]any) error {
	keys := make([]string, 0, len(ctx))
	for k := range ctx {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !c.HasParam(k) {
			return fmt.Errorf("caveat %q has no parameter %q (parameters: %s)", c.Name, k, c.paramList())
		}
	}
	_, err := c.ConvertContext(ctx)
	return err
}

func (c *Caveat) paramList() string {
	names := make([]string, 0, len(c.Params))
	for n, t := range c.Params {
		names = append(names, n+" "+t)
	}
	sort.Strings(names)
	if len(names) == 0 {
		return "none"
	}
	return fmt.Sprint(names)
}

// Evaluate runs the caveat. relationshipCtx is the context written on the
// relationship; it overrides requestCtx key by key (SpiceDB's rule). supplied,
// when non-nil, is set last and cannot be overridden by either: it carries the
// parameters the engine itself provides. An evaluation stops with an error,
// never a result, when ctx ends or its cost exceeds the schema's
// Limits.MaxCaveatCost (ErrCaveatCost).
func (c *Caveat) Evaluate(ctx context.Context, requestCtx, relationshipCtx, supplied map[string]any) (CaveatResult, error) {
	return c.EvaluateConverted(ctx, c.Convert(requestCtx), c.Convert(relationshipCtx), c.Convert(supplied))
}

// EvaluateConverted is Evaluate on contexts already converted by Convert;
// any of them may be nil.
func (c *Caveat) EvaluateConverted(ctx context.Context, request, relationship, supplied *Converted) (CaveatResult, error) {
	act := &activation{c: c, vals: make([]convertedValue, len(c.names)), set: make([]bool, len(c.names))}
	var missing []string
	for i, name := range c.names {
		v, ok := supplied.lookup(name)
		if !ok {
			v, ok = relationship.lookup(name)
		}
		if !ok {
			v, ok = request.lookup(name)
		}
		if !ok {
			missing = append(missing, name)
			continue
		}
		if v.err != nil {
			return CaveatResult{}, v.err
		}
		act.vals[i], act.set[i] = v, true
	}
	if len(missing) == 0 {
		val, _, err := c.exact.ContextEval(ctx, act)
		if err != nil {
			return CaveatResult{}, c.evalError(err)
		}
		return truth(val), nil
	}
	// Parameters not supplied are unknowns, so that the result is partial.
	patterns := make([]*interpreter.AttributePattern, len(missing))
	for i, name := range missing {
		patterns[i] = cel.AttributePattern(name)
	}
	partial, err := cel.PartialVars(act, patterns...)
	if err != nil {
		return CaveatResult{}, fmt.Errorf("evaluating caveat %q: %w", c.Name, err)
	}
	val, _, err := c.partial.ContextEval(ctx, partial)
	if err != nil {
		return CaveatResult{}, c.evalError(err)
	}
	if unknown, ok := val.(*celtypes.Unknown); ok {
		var names []string
		for _, id := range unknown.IDs() {
			trails, _ := unknown.GetAttributeTrails(id)
			for _, t := range trails {
				names = append(names, t.String())
			}
		}
		// CEL reports a variable once per use; a parameter is missing once.
		sort.Strings(names)
		names = slices.Compact(names)
		return CaveatResult{Outcome: Unknown, Missing: names}, nil
	}
	return truth(val), nil
}

// evalError wraps an evaluation error, telling a cost overrun apart.
func (c *Caveat) evalError(err error) error {
	var cancelled interpreter.EvalCancelledError
	if errors.As(err, &cancelled) && cancelled.Cause == interpreter.CostLimitExceeded {
		return fmt.Errorf("evaluating caveat %q: %w (%d)", c.Name, ErrCaveatCost, c.maxCost)
	}
	return fmt.Errorf("evaluating caveat %q: %w", c.Name, err)
}

func truth(val ref.Val) CaveatResult {
	if b, ok := val.Value().(bool); ok && b {
		return CaveatResult{Outcome: True}
	}
	return CaveatResult{Outcome: False}
}

// activation resolves the caveat's parameters from values already chosen,
// without building a merged map.
type activation struct {
	c    *Caveat
	vals []convertedValue
	set  []bool
}

func (a *activation) ResolveName(name string) (any, bool) {
	i, ok := a.c.index[name]
	if !ok || !a.set[i] {
		return nil, false
	}
	return a.vals[i].v, true
}

func (a *activation) Parent() interpreter.Activation { return nil }

// normalizeInts turns Go integer values into the JSON number form (float64)
// that SpiceDB's parameter conversion accepts for int, uint and double
// parameters alike, so Go callers may pass plain ints. Unchanged input is
// returned as is, without copying.
func normalizeInts(ctx map[string]any) map[string]any {
	out, _ := normalizeMap(ctx)
	return out
}

func normalizeMap(m map[string]any) (map[string]any, bool) {
	var out map[string]any
	for k, v := range m {
		if w, changed := normalizeValue(v); changed {
			if out == nil {
				out = maps.Clone(m)
			}
			out[k] = w
		}
	}
	if out == nil {
		return m, false
	}
	return out, true
}

func normalizeValue(v any) (any, bool) {
	switch x := v.(type) {
	case int:
		return widen(int64(x)), true
	case int8:
		return widen(int64(x)), true
	case int16:
		return widen(int64(x)), true
	case int32:
		return widen(int64(x)), true
	case uint8:
		return widen(int64(x)), true
	case uint16:
		return widen(int64(x)), true
	case uint32:
		return widen(int64(x)), true
	case []any:
		var out []any
		for i, e := range x {
			if w, changed := normalizeValue(e); changed {
				if out == nil {
					out = slices.Clone(x)
				}
				out[i] = w
			}
		}
		if out != nil {
			return out, true
		}
	case map[string]any:
		return normalizeMap(x)
	}
	return v, false
}

// widen returns x as a float64 when that is exact, else as int64.
func widen(x int64) any {
	const exact = 1 << 53
	if x > -exact && x < exact {
		return float64(x)
	}
	return x
}
