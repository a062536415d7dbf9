package escalation

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/authzed/cel-go/cel"
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

// batch is rules[lo:hi] compiled together; prog is nil when they could
// not be (a condition nested too deeply to nest further), and they are
// then evaluated one by one.
type batch struct {
	lo, hi int
	prog   cel.Program
	// loops: some condition has a comprehension, the only construct whose
	// evaluation the deadline can interrupt; without one, the cost limit
	// alone bounds the evaluation and no deadline is set up.
	loops bool
}

// matchedVar names the variable telling a batch whether rule i matched.
func matchedVar(i int) string { return "escalation_rule_matched_" + strconv.Itoa(i) }

const matchedPrefix = "escalation_rule_matched_"

func newBatches(rules []*rule) []batch {
	var out []batch
	for lo := 0; lo < len(rules); lo += batchSize {
		hi := min(lo+batchSize, len(rules))
		b := batch{lo: lo, hi: hi}
		conditions := 0
		for _, r := range rules[lo:hi] {
			if r.prog != nil {
				conditions++
				b.loops = b.loops || r.loops
			}
		}
		if conditions > 0 {
			b.prog = compileBatch(rules[lo:hi], lo, conditions)
		}
		out = append(out, b)
	}
	return out
}

// compileBatch returns the program of rules (the first being rule lo), or
// nil when it does not compile.
func compileBatch(rules []*rule, lo, conditions int) cel.Program {
	env, err := newEnv()
	if err != nil {
		return nil
	}
	vars := make([]cel.EnvOption, 0, len(rules)+1)
	for i := range rules {
		vars = append(vars, cel.Variable(matchedVar(lo+i), cel.BoolType))
	}
	// The conditions were each bounded when parsed; the batch holds many.
	vars = append(vars, cel.ParserExpressionSizeLimit(len(rules)*(MaxConditionBytes+100)))
	if env, err = env.Extend(vars...); err != nil {
		return nil
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
		return nil
	}
	prog, err := env.Program(checked, cel.CostLimit(uint64(conditions)*MaxCost), cel.InterruptCheckFrequency(interruptEvery))
	if err != nil {
		return nil
	}
	return prog
}

// hasLoops reports whether a checked expression has a comprehension.
func hasLoops(checked *cel.Ast) bool {
	return len(ast.MatchDescendants(ast.NavigateAST(checked.NativeRep()), ast.KindMatcher(ast.ComprehensionKind))) > 0
}

// run evaluates the batch for the rules whose matchers held (act.matched,
// indexed from b.lo); it returns the index of the rule that wins, or -1.
func (b *batch) run(ctx context.Context, act *activation) (int, error) {
	var v ref.Val
	var err error
	if b.loops {
		ctx, cancel := context.WithDeadline(ctx, act.deadline())
		defer cancel()
		v, _, err = b.prog.ContextEval(ctx, act)
	} else {
		v, _, err = b.prog.Eval(act)
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
