package schema

import (
	"context"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/authzed/spicedb/pkg/schemadsl/dslshape"
	"github.com/authzed/spicedb/pkg/schemadsl/input"
	"github.com/authzed/spicedb/pkg/schemadsl/lexer"
	"github.com/authzed/spicedb/pkg/schemadsl/parser"
)

// Limits bound what Compile accepts and what a compiled schema may cost to
// evaluate. SpiceDB's compiler is quadratic in the operands of one
// permission (60,000 terms took 105 s) and its parser recurses once per
// parenthesis, so the text is measured, in linear time, before it is
// compiled. Zero fields take DefaultLimits' values.
type Limits struct {
	// MaxBytes bounds the schema text.
	MaxBytes int
	// MaxDefinitions bounds the object definitions and caveats.
	MaxDefinitions int
	// MaxRelations bounds the relations and permissions of all definitions.
	MaxRelations int
	// MaxTerms bounds the operands (relations, arrows, nil, self) of one
	// permission's expression.
	MaxTerms int
	// MaxNesting bounds how deeply parentheses nest, and how deeply
	// operators of different kinds nest in one permission's expression.
	MaxNesting int
	// MaxCaveatCost bounds the CEL cost (about one unit per operation) of
	// one caveat evaluation; an evaluation over it fails.
	MaxCaveatCost uint64
	// MaxRelationshipContextBytes bounds a relationship's caveat context,
	// as JSON.
	MaxRelationshipContextBytes int
}

// DefaultLimits are the limits Compile applies. Real schemas stay far
// below them: a permission of DefaultLimits().MaxTerms operands compiles in
// a few milliseconds, and a schema at every limit in about a second of
// CPU (`go test -bench BenchmarkCompileTerms ./schema` shows the growth).
func DefaultLimits() Limits {
	return Limits{
		MaxBytes:       256 << 10,
		MaxDefinitions: 1_000,
		MaxRelations:   10_000,
		MaxTerms:       128,
		MaxNesting:     32,
		// A sixteenth of SpiceDB's bound (1<<20), which costs about half a
		// second of CPU here per evaluation, on every check that meets a
		// relationship carrying such a caveat. Real caveats cost tens to
		// hundreds of units.
		MaxCaveatCost: 1 << 16,
		// SpiceDB's default --max-relationship-context-size.
		MaxRelationshipContextBytes: 25_000,
	}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	set := func(v *int, def int) {
		if *v <= 0 {
			*v = def
		}
	}
	set(&l.MaxBytes, d.MaxBytes)
	set(&l.MaxDefinitions, d.MaxDefinitions)
	set(&l.MaxRelations, d.MaxRelations)
	set(&l.MaxTerms, d.MaxTerms)
	set(&l.MaxNesting, d.MaxNesting)
	set(&l.MaxRelationshipContextBytes, d.MaxRelationshipContextBytes)
	if l.MaxCaveatCost == 0 {
		l.MaxCaveatCost = d.MaxCaveatCost
	}
	return l
}

// limitError reports a limit exceeded: which, by how much, and where.
func limitError(text string, runePos int, limit string, value, maximum int, what string) *Error {
	e := &Error{Limit: limit, Message: fmt.Sprintf("%s: %d is over the maximum of %d (limit %s)", what, value, maximum, limit)}
	if runePos >= 0 {
		e.Line, e.Column = lineColumn(text, runePos)
	}
	return e
}

// lineColumn returns the 1-based line and column of a rune offset.
func lineColumn(text string, runePos int) (int, int) {
	line, col, i := 1, 1, 0
	for _, r := range text {
		if i == runePos {
			break
		}
		i++
		if r == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
	}
	return line, col
}

// checkLimits measures text against l without compiling it. Syntax errors
// are left to the compiler, which reports them with their position.
func checkLimits(ctx context.Context, text string, l Limits) error {
	if len(text) > l.MaxBytes {
		return limitError(text, -1, "MaxBytes", len(text), l.MaxBytes, "the schema's size in bytes")
	}
	if err := checkParens(text, l); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	root := parser.Parse(newShapeNode, input.Source("schema"), text).(*shapeNode)
	if err := ctx.Err(); err != nil {
		return err
	}
	return checkShape(text, root, l)
}

// checkParens bounds parenthesis nesting before the recursive parser sees
// it, with SpiceDB's lexer so that comments and strings do not count.
func checkParens(text string, l Limits) error {
	lx := lexer.NewFlaggableLexer(lexer.Lex(input.Source("schema"), text))
	defer lx.Close()
	depth := 0
	for {
		tok := lx.NextToken()
		switch tok.Kind {
		case lexer.TokenTypeEOF, lexer.TokenTypeError:
			return nil
		case lexer.TokenTypeLeftParen:
			if depth++; depth > l.MaxNesting {
				return limitError(text, utf8.RuneCountInString(text[:tok.Position]), "MaxNesting", depth, l.MaxNesting, "parentheses nest")
			}
		case lexer.TokenTypeRightParen:
			depth = max(depth-1, 0)
		}
	}
}

// checkShape counts definitions, relations, and each permission's terms and
// nesting in a parse tree.
func checkShape(text string, root *shapeNode, l Limits) error {
	var defs, relations int
	partials := map[string]int{}
	var refs []*shapeNode
	for _, top := range root.children[dslshape.NodePredicateChild] {
		switch top.kind {
		case dslshape.NodeTypeDefinition, dslshape.NodeTypeCaveatDefinition:
			if defs++; defs > l.MaxDefinitions {
				return limitError(text, top.pos, "MaxDefinitions", defs, l.MaxDefinitions, "definitions and caveats")
			}
		}
		if top.kind != dslshape.NodeTypeDefinition && top.kind != dslshape.NodeTypePartial {
			continue
		}
		n := 0
		for _, c := range top.children[dslshape.NodePredicateChild] {
			switch c.kind {
			case dslshape.NodeTypeRelation:
				n++
			case dslshape.NodeTypePermission:
				n++
				if err := checkExpression(text, top.props[dslshape.NodeDefinitionPredicateName]+top.props[dslshape.NodePartialPredicateName], c, l); err != nil {
					return err
				}
			case dslshape.NodeTypePartialReference:
				if top.kind == dslshape.NodeTypeDefinition {
					refs = append(refs, c)
				}
			}
		}
		if top.kind == dslshape.NodeTypePartial {
			partials[top.props[dslshape.NodePartialPredicateName]] = n
			continue
		}
		relations += n
	}
	// A partial's relations count once per definition that includes it.
	for _, r := range refs {
		relations += partials[r.props[dslshape.NodePartialReferencePredicateName]]
	}
	if relations > l.MaxRelations {
		return limitError(text, -1, "MaxRelations", relations, l.MaxRelations, "relations and permissions in the schema")
	}
	return nil
}

// checkExpression bounds one permission's operands and operator nesting.
// Operators of one kind in a row (a + b + c) are one level, as they compile
// to one node; the walk is iterative, as a long row is a deep tree.
func checkExpression(text, def string, perm *shapeNode, l Limits) error {
	exprs := perm.children[dslshape.NodePermissionPredicateComputeExpression]
	if len(exprs) == 0 {
		return nil
	}
	name := fmt.Sprintf("permission %s#%s", def, perm.props[dslshape.NodePredicateName])
	type item struct {
		n      *shapeNode
		parent dslshape.NodeType
		depth  int
	}
	stack := []item{{n: exprs[0], parent: dslshape.NodeTypePermission}}
	terms := 0
	for len(stack) > 0 {
		it := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		switch it.n.kind {
		case dslshape.NodeTypeUnionExpression, dslshape.NodeTypeIntersectExpression, dslshape.NodeTypeExclusionExpression:
			depth := it.depth
			if it.n.kind != it.parent || it.n.kind == dslshape.NodeTypeExclusionExpression {
				depth++
			}
			if depth > l.MaxNesting {
				return limitError(text, it.n.pos, "MaxNesting", depth, l.MaxNesting, name+": operators nest")
			}
			for _, p := range []string{dslshape.NodeExpressionPredicateRightExpr, dslshape.NodeExpressionPredicateLeftExpr} {
				for _, c := range it.n.children[p] {
					stack = append(stack, item{n: c, parent: it.n.kind, depth: depth})
				}
			}
		default:
			// An operand: a relation, an arrow, nil or self.
			terms++
		}
	}
	if terms > l.MaxTerms {
		return limitError(text, perm.pos, "MaxTerms", terms, l.MaxTerms, name+": operands")
	}
	return nil
}

// shapeNode is the little of SpiceDB's parse tree the limits need.
type shapeNode struct {
	kind     dslshape.NodeType
	pos      int // start rune, -1 when unknown
	props    map[string]string
	children map[string][]*shapeNode
}

func newShapeNode(_ input.Source, kind dslshape.NodeType) parser.AstNode {
	return &shapeNode{kind: kind, pos: -1}
}

func (n *shapeNode) Connect(predicate string, other parser.AstNode) {
	if n.children == nil {
		n.children = map[string][]*shapeNode{}
	}
	n.children[predicate] = append(n.children[predicate], other.(*shapeNode))
}

func (n *shapeNode) MustDecorate(property, value string) parser.AstNode {
	switch property {
	case dslshape.NodeDefinitionPredicateName, dslshape.NodePartialPredicateName,
		dslshape.NodePartialReferencePredicateName, dslshape.NodePredicateName:
		if n.props == nil {
			n.props = map[string]string{}
		}
		n.props[property] = strings.Clone(value)
	}
	return n
}

func (n *shapeNode) MustDecorateWithInt(property string, value int) parser.AstNode {
	if property == dslshape.NodePredicateStartRune {
		n.pos = value
	}
	return n
}
