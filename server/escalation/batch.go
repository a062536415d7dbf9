package escalation

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/authzed/cel-go/cel"
	"github.com/authzed/cel-go/checker"
	"github.com/authzed/cel-go/common/ast"
	"github.com/authzed/cel-go/common/types"
	"github.com/authzed/cel-go/common/types/ref"
)

// Most of a CEL evaluation's cost on an agent check is fixed: an execution
// frame, a cost tracker, a context. Evaluating every matching rule's
// condition apart paid it once per rule. So consecutive rules are also
// compiled together, into one program that answers the index of the first
// rule whose matchers (given to it as booleans) and condition hold:
//
//	m0 && (c0) ? 0 : (m1 ? 1 : (m2 && (c2) ? 2 : -1))
//
// CEL's && and ?: evaluate left to right and stop early, so a condition is
// evaluated only when its rule matched and no earlier rule won, as when
// the rules are evaluated one by one. When the batch fails (an error, the
// cost limit, the deadline), the rules are evaluated one by one from the
// batch's first, which finds the failing rule and its exact error.

// batchSize bounds the rules of one batch, and with them the nesting of
// its expression.
const batchSize = 32

// The cost tracker is most of what is left: it wraps every step of an
// evaluation. A condition whose cost CEL can bound before it runs needs
// none, so a batch whose conditions all have a static bound under the
// limit also gets a program without one. The bound assumes sizes for the
// inputs (below); a check whose inputs exceed them, and any condition that
// reads request.context (whose size the escalator does not bound), runs
// the cost-limited program.
const (
	// boundedString bounds, in bytes, the resource, permission, agent and
	// chain member names a statically bounded program may see.
	boundedString = 1_024
	// boundedChain bounds the chain's members likewise.
	boundedChain = 64
)

// batch is rules[lo:hi] compiled together; prog is nil when they could
// not be (a condition nested too deeply to nest further), and they are
// then evaluated one by one.
type batch struct {
	lo, hi int
	prog   cel.Program
	// fast, when set, is prog without a cost limit, for a check within
	// the bounded sizes.
	fast cel.Program
	// loops: some condition has a comprehension, the only construct whose
	// evaluation the deadline can interrupt; without one, the cost limit
	// alone bounds the evaluation and no deadline is set up.
	loops bool
}

// matchedVar names the variable telling a batch whether rule i matched.
func matchedVar(i int) string { return "escalation_rule_matched_" + strconv.Itoa(i) }

const matchedPrefix = "escalation_rule_matched_"

// newBatches cuts rules into batches of consecutive rules, a new one
// starting where a condition's static bound differs from the last one's,
// so that bounded conditions share a program without a cost limit.
func newBatches(rules []*rule) []batch {
	var out []batch
	lo := 0
	for lo < len(rules) {
		hi, conditions, bounded := lo, 0, true
		for ; hi < len(rules) && hi-lo < batchSize; hi++ {
			r := rules[hi]
			if r.prog == nil {
				continue
			}
			if conditions > 0 && r.bounded != bounded {
				break
			}
			conditions++
			bounded = r.bounded
		}
		b := batch{lo: lo, hi: hi}
		for _, r := range rules[lo:hi] {
			b.loops = b.loops || r.loops
		}
		if conditions > 0 {
			b.prog, b.fast = compileBatch(rules[lo:hi], lo, conditions, bounded)
		}
		out = append(out, b)
		lo = hi
	}
	return out
}

// compileBatch returns the programs of rules (the first being rule lo):
// cost-limited, and, when bounded and CEL's estimate agrees, without a
// limit. Both are nil when the batch does not compile.
func compileBatch(rules []*rule, lo, conditions int, bounded bool) (limited, fast cel.Program) {
	env, err := newEnv()
	if err != nil {
		return nil, nil
	}
	vars := make([]cel.EnvOption, 0, len(rules)+1)
	for i := range rules {
		vars = append(vars, cel.Variable(matchedVar(lo+i), cel.BoolType))
	}
	// The conditions were each bounded when parsed; the batch holds many.
	vars = append(vars, cel.ParserExpressionSizeLimit(len(rules)*(MaxConditionBytes+100)))
	if env, err = env.Extend(vars...); err != nil {
		return nil, nil
	}
	var b strings.Builder
	for i, r := range rules {
		// A condition may end in a // comment: its own lines keep it there.
		if r.prog != nil {
			fmt.Fprintf(&b, "(%s && (\n%s\n)) ? %d : (", matchedVar(lo+i), r.condition, lo+i)
		} else {
			fmt.Fprintf(&b, "%s ? %d : (", matchedVar(lo+i), lo+i)
		}
	}
	b.WriteString("-1" + strings.Repeat(")", len(rules)))
	checked, iss := env.Compile(b.String())
	if iss.Err() != nil || !checked.OutputType().IsExactType(cel.IntType) {
		return nil, nil
	}
	limit := uint64(conditions) * MaxCost
	limited, err = env.Program(checked, cel.CostLimit(limit), cel.InterruptCheckFrequency(interruptEvery))
	if err != nil {
		return nil, nil
	}
	if bounded {
		if est, err := env.EstimateCost(checked, sizes{}); err == nil && est.Max <= limit {
			fast, _ = env.Program(checked, cel.InterruptCheckFrequency(interruptEvery))
		}
	}
	return limited, fast
}

// staticallyBounded reports whether a rule's condition has a cost bound,
// for inputs within the bounded sizes, under MaxCost: it must not read
// request.context.
func staticallyBounded(env *cel.Env, checked *cel.Ast) bool {
	for _, ref := range checked.NativeRep().ReferenceMap() {
		if ref.Name == varContext {
			return false
		}
	}
	est, err := env.EstimateCost(checked, sizes{})
	return err == nil && est.Max <= MaxCost
}

// sizes tells CEL's cost estimate the bounded sizes of the inputs; it
// knows no other (request.context's values have none).
type sizes struct{}

func (sizes) EstimateSize(n checker.AstNode) *checker.SizeEstimate {
	switch p := n.Path(); {
	case len(p) == 1 && p[0] == varChain:
		return &checker.SizeEstimate{Max: boundedChain}
	case len(p) == 1 && (p[0] == varResourceType || p[0] == varResourceID || p[0] == varPermission || p[0] == varAgentType || p[0] == varAgentID),
		len(p) == 3 && p[0] == varChain && p[1] == "@items" && (p[2] == "type" || p[2] == "id"):
		return &checker.SizeEstimate{Max: boundedString}
	}
	return nil
}

func (sizes) EstimateCallCost(string, string, *checker.AstNode, []checker.AstNode) *checker.CallEstimate {
	return nil
}

// withinBounds reports whether in's sizes are within those the static
// bounds assume.
func withinBounds(in *Input) bool {
	if len(in.Resource.Type) > boundedString || len(in.Resource.ID) > boundedString || len(in.Permission) > boundedString ||
		len(in.Agent.Type) > boundedString || len(in.Agent.ID) > boundedString || len(in.Chain) > boundedChain {
		return false
	}
	for _, o := range in.Chain {
		if len(o.Type) > boundedString || len(o.ID) > boundedString {
			return false
		}
	}
	return true
}

// hasLoops reports whether a checked expression has a comprehension.
func hasLoops(checked *cel.Ast) bool {
	return len(ast.MatchDescendants(ast.NavigateAST(checked.NativeRep()), ast.KindMatcher(ast.ComprehensionKind))) > 0
}

// run evaluates the batch for the rules whose matchers held (act.matched,
// indexed from b.lo); it returns the index of the rule that wins, or -1.
func (b *batch) run(ctx context.Context, act *activation) (int, error) {
	prog := b.prog
	if b.fast != nil && act.bounded() {
		prog = b.fast
	}
	var v ref.Val
	var err error
	if b.loops {
		ctx, cancel := context.WithDeadline(ctx, act.deadline())
		defer cancel()
		v, _, err = prog.ContextEval(ctx, act)
	} else {
		v, _, err = prog.Eval(act)
	}
	if err != nil {
		return 0, err
	}
	won, ok := v.(types.Int)
	if !ok || int(won) >= b.hi || (won < 0 && won != -1) || (won >= 0 && int(won) < b.lo) {
		return 0, fmt.Errorf("rules %d to %d: unexpected result %v", b.lo, b.hi-1, v)
	}
	return int(won), nil
}
