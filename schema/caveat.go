package schema

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"

	"github.com/authzed/cel-go/cel"
	celtypes "github.com/authzed/cel-go/common/types"
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
	// env and program are built once: SpiceDB's caveats.EvaluateCaveat plans
	// a new CEL program on every call, which dominated caveated checks.
	env     *cel.Env
	program cel.Program
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

func newCaveat(cd *core.CaveatDefinition) (*Caveat, error) {
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
	program, err := env.Program(cel.CheckedExprToAst(decoded.GetCel()), cel.EvalOptions(cel.OptTrackState, cel.OptPartialEval))
	if err != nil {
		return nil, err
	}
	c := &Caveat{Name: cd.Name, Params: make(map[string]string, len(vars)), paramTypes: cd.ParameterTypes, env: env, program: program}
	for name, ref := range cd.ParameterTypes {
		c.Params[name] = caveats.ParameterTypeString(ref)
	}
	return c, nil
}

// HasParam reports whether the caveat declares a parameter.
func (c *Caveat) HasParam(name string) bool {
	_, ok := c.Params[name]
	return ok
}

// ConvertContext converts JSON-shaped context values to the caveat's
// parameter types, ignoring keys the caveat does not declare. The error names
// the parameter and the expected type.
func (c *Caveat) ConvertContext(ctx map[string]any) (map[string]any, error) {
	ctx = normalizeInts(ctx)
	out, err := caveats.ConvertContextToParameters(caveattypes.Default.TypeSet, ctx, c.paramTypes, caveats.SkipUnknownParameters)
	if err != nil {
		var pe caveats.ParameterConversionError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("caveat %q: parameter %q: expected %s: %w", c.Name, pe.ParameterName(), c.Params[pe.ParameterName()], err)
		}
		return nil, fmt.Errorf("caveat %q: %w", c.Name, err)
	}
	return out, nil
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
// parameters the engine itself provides.
func (c *Caveat) Evaluate(requestCtx, relationshipCtx, supplied map[string]any) (CaveatResult, error) {
	merged := requestCtx
	if len(relationshipCtx) > 0 || len(supplied) > 0 {
		merged = make(map[string]any, len(requestCtx)+len(relationshipCtx)+len(supplied))
		maps.Copy(merged, requestCtx)
		maps.Copy(merged, relationshipCtx)
		for k, v := range supplied {
			if c.HasParam(k) {
				merged[k] = v
			}
		}
	}
	params, err := c.ConvertContext(merged)
	if err != nil {
		return CaveatResult{}, err
	}
	// Parameters not supplied are unknowns, so that the result is partial.
	activation, err := c.env.PartialVars(params)
	if err != nil {
		return CaveatResult{}, fmt.Errorf("evaluating caveat %q: %w", c.Name, err)
	}
	val, _, err := c.program.Eval(activation)
	if err != nil {
		return CaveatResult{}, fmt.Errorf("evaluating caveat %q: %w", c.Name, err)
	}
	if unknown, ok := val.(*celtypes.Unknown); ok {
		var missing []string
		for _, id := range unknown.IDs() {
			trails, _ := unknown.GetAttributeTrails(id)
			for _, t := range trails {
				missing = append(missing, t.String())
			}
		}
		// CEL reports a variable once per use; a parameter is missing once.
		sort.Strings(missing)
		missing = slices.Compact(missing)
		return CaveatResult{Outcome: Unknown, Missing: missing}, nil
	}
	if b, ok := val.Value().(bool); ok && b {
		return CaveatResult{Outcome: True}, nil
	}
	return CaveatResult{Outcome: False}, nil
}

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
