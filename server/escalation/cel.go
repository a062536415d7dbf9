package escalation

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/authzed/cel-go/cel"
	"github.com/authzed/cel-go/common/types"
	"github.com/authzed/cel-go/interpreter"
	"go.yaml.in/yaml/v3"
)

// The CEL conditions use the CEL implementation the schema's caveats use
// (authzed's fork of cel-go, see schema/caveat.go): one CEL in the binary,
// with the same cost accounting and interrupt checks that bound caveats.

// MaxCost bounds the CEL cost (about one unit per operation) of one rule's
// condition on one check; an evaluation over it is an error, and the caller
// escalates. Real conditions cost tens of units.
const MaxCost = 10_000

// interruptEvery is how many comprehension iterations run between looks at
// the evaluation's deadline.
const interruptEvery = 100

// ErrCost is the error of a condition that exceeded MaxCost.
var ErrCost = errors.New("condition exceeded its CEL cost limit")

// The variables a condition sees. Dotted names are CEL variables of their
// own, so that a misspelt one (signals.checks_last_minut) is an error when
// the file is loaded, not on a check.
const (
	varContext      = "request.context"
	varResourceType = "resource.type"
	varResourceID   = "resource.id"
	varPermission   = "permission"
	varAgentType    = "agent.type"
	varAgentID      = "agent.id"
	varChain        = "chain"
	varNow          = "now"

	sigChecksLastMinute = "signals.checks_last_minute"
	sigDenialsLastHour  = "signals.denials_last_hour"
	sigFirstUseType     = "signals.first_use_resource_type"
	sigFirstUsePerm     = "signals.first_use_permission"
)

func newEnv() (*cel.Env, error) {
	str := cel.StringType
	return cel.NewEnv(
		cel.Variable(varContext, cel.MapType(str, cel.DynType)),
		cel.Variable(varResourceType, str),
		cel.Variable(varResourceID, str),
		cel.Variable(varPermission, str),
		cel.Variable(varAgentType, str),
		cel.Variable(varAgentID, str),
		cel.Variable(varChain, cel.ListType(cel.MapType(str, str))),
		cel.Variable(varNow, cel.TimestampType),
		cel.Variable(sigChecksLastMinute, cel.IntType),
		cel.Variable(sigDenialsLastHour, cel.IntType),
		cel.Variable(sigFirstUseType, cel.BoolType),
		cel.Variable(sigFirstUsePerm, cel.BoolType),
		cel.ParserExpressionSizeLimit(MaxConditionBytes),
	)
}

// variableList names the variables for an "undeclared reference" error.
const variableList = "request.context, resource.type, resource.id, permission, agent.type, agent.id, chain, now, " +
	"signals.checks_last_minute, signals.denials_last_hour, signals.first_use_resource_type, signals.first_use_permission"

// condition compiles a rule's condition, mapping CEL's errors to the
// position in the file.
func (p *parser) condition(env *cel.Env, r *rule, n *yaml.Node) error {
	src, err := p.str(n, "condition")
	if err != nil {
		return err
	}
	if strings.TrimSpace(src) == "" {
		return p.errAt(n, "condition is empty; leave the key out to match without one")
	}
	if len(src) > MaxConditionBytes {
		return p.errAt(n, "condition is over %d bytes", MaxConditionBytes)
	}
	ast, iss := env.Compile(src)
	if iss.Err() != nil {
		e := iss.Errors()[0]
		msg := e.Message
		if strings.Contains(msg, "undeclared reference") {
			msg += "; a condition may use " + variableList
		}
		return p.celError(n, src, e.Location.Line(), e.Location.Column(), "condition: "+msg)
	}
	if t := ast.OutputType(); !t.IsExactType(cel.BoolType) && !t.IsExactType(cel.DynType) {
		return p.errAt(n, "condition: expected a boolean expression, found one of type %s", t)
	}
	prog, err := env.Program(ast, cel.CostLimit(MaxCost), cel.InterruptCheckFrequency(interruptEvery))
	if err != nil {
		return p.errAt(n, "condition: %v", err)
	}
	r.condition, r.prog = src, prog
	return nil
}

// celError places an error at line (1-based) and col (0-based, in
// characters) of the condition src, written at node n: exactly when the
// condition is a one-line scalar or a literal block (|) whose text can be
// found in the file; at the start of the value, naming the condition's own
// position, otherwise (folded and escaped scalars).
func (p *parser) celError(n *yaml.Node, src string, line, col int, msg string) error {
	if p.lines == nil {
		p.lines = strings.Split(string(p.text), "\n")
	}
	exprLines := strings.Split(src, "\n")
	if line >= 1 && line <= len(exprLines) {
		expr := exprLines[line-1]
		switch {
		case n.Style&yaml.LiteralStyle != 0:
			if at := n.Line + line; at <= len(p.lines) {
				text := strings.TrimSuffix(p.lines[at-1], "\r")
				if indent := len(text) - len(expr); indent >= 0 && text[indent:] == expr {
					return &Error{File: p.file, Line: at, Column: utf8.RuneCountInString(text[:indent]) + col + 1, Msg: msg}
				}
			}
		case len(exprLines) == 1 && n.Style&yaml.FoldedStyle == 0 && n.Line <= len(p.lines):
			text := p.lines[n.Line-1]
			quote := 0
			if n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) != 0 {
				quote = 1
			}
			if start := byteOffset(text, n.Column-1+quote); start >= 0 && strings.HasPrefix(text[start:], expr) {
				return &Error{File: p.file, Line: n.Line, Column: n.Column + quote + col, Msg: msg}
			}
		}
	}
	return p.errAt(n, "%s (at line %d, column %d of the condition)", msg, line, col+1)
}

// byteOffset is the byte offset of the runes-th character of s, or -1.
func byteOffset(s string, runes int) int {
	for i := range s {
		if runes == 0 {
			return i
		}
		runes--
	}
	if runes == 0 {
		return len(s)
	}
	return -1
}

// eval runs a rule's condition.
func (r *rule) eval(ctx context.Context, act *activation) (bool, error) {
	val, _, err := r.prog.ContextEval(ctx, act)
	if err != nil {
		var cancelled interpreter.EvalCancelledError
		if errors.As(err, &cancelled) && cancelled.Cause == interpreter.CostLimitExceeded {
			return false, fmt.Errorf("rule %q: %w (%d)", r.name, ErrCost, MaxCost)
		}
		if ctxErr := ctx.Err(); ctxErr != nil {
			return false, fmt.Errorf("rule %q: condition: %w", r.name, ctxErr)
		}
		return false, fmt.Errorf("rule %q: condition: %w", r.name, err)
	}
	b, ok := val.(types.Bool)
	if !ok {
		return false, fmt.Errorf("rule %q: condition: expected a boolean, found %s", r.name, val.Type())
	}
	return bool(b), nil
}

// activation resolves a condition's variables from one check, building
// the chain and reading the agent's signals only when a condition uses them.
type activation struct {
	in      *Input
	sig     *signalStore
	chain   []map[string]string
	signals *Signals
}

func (a *activation) ResolveName(name string) (any, bool) {
	in := a.in
	switch name {
	case varContext:
		if in.Context == nil {
			return map[string]any{}, true
		}
		return in.Context, true
	case varResourceType:
		return in.Resource.Type, true
	case varResourceID:
		return in.Resource.ID, true
	case varPermission:
		return in.Permission, true
	case varAgentType:
		return in.Agent.Type, true
	case varAgentID:
		return in.Agent.ID, true
	case varChain:
		if a.chain == nil {
			a.chain = make([]map[string]string, len(in.Chain))
			for i, o := range in.Chain {
				a.chain[i] = map[string]string{"type": o.Type, "id": o.ID}
			}
		}
		return a.chain, true
	case varNow:
		return in.Time, true
	case sigChecksLastMinute, sigDenialsLastHour, sigFirstUseType, sigFirstUsePerm:
		if a.signals == nil {
			s := a.sig.read(*in)
			a.signals = &s
		}
		switch name {
		case sigChecksLastMinute:
			return int64(a.signals.ChecksLastMinute), true
		case sigDenialsLastHour:
			return int64(a.signals.DenialsLastHour), true
		case sigFirstUseType:
			return a.signals.FirstUseResourceType, true
		}
		return a.signals.FirstUsePermission, true
	}
	return nil, false
}

func (a *activation) Parent() interpreter.Activation { return nil }
