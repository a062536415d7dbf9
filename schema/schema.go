// Package schema compiles schema text in SpiceDB's language into Mandate's own
// typed model, which the engine walks without touching SpiceDB types.
//
// Parsing and type checking are SpiceDB's (pkg/schemadsl/compiler and
// pkg/schema), so exactly the schemas SpiceDB accepts are accepted here, with
// the same meaning.
package schema

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	sdbschema "github.com/authzed/spicedb/pkg/schema"
	"github.com/authzed/spicedb/pkg/schemadsl/compiler"
	"github.com/authzed/spicedb/pkg/schemadsl/input"
)

// ActsFor is the relation whose presence makes a definition an agent type.
const ActsFor = "acts_for"

// Schema is a compiled, validated schema.
type Schema struct {
	// Text is the source the schema was compiled from.
	Text string
	// Definitions by name.
	Definitions map[string]*Definition
	// Caveats by name.
	Caveats map[string]*Caveat

	limits Limits
}

// Definition is an object type: its relations and permissions.
type Definition struct {
	Name string
	// Relations holds relations and permissions by name.
	Relations map[string]*Relation
	// Order lists relation and permission names as written.
	Order []string
}

// IsAgent reports whether subjects of this type are agents: the definition has
// an acts_for relation.
func (d *Definition) IsAgent() bool {
	r, ok := d.Relations[ActsFor]
	return ok && !r.IsPermission
}

// Relation is a relation (stored relationships) or a permission (computed by
// its rewrite).
type Relation struct {
	Definition   string
	Name         string
	IsPermission bool
	// Allowed lists the subject types a relation accepts; empty for a permission.
	Allowed []AllowedSubject
	// Rewrite computes a permission; nil for a relation.
	Rewrite *Rewrite
}

// AllowedSubject is one allowed subject type of a relation, such as `user`,
// `group#member`, `user:*` or `user with caveat and expiration`.
type AllowedSubject struct {
	Type string
	// Relation is the subject relation ("" for the object itself).
	Relation string
	Wildcard bool
	// Caveat is the required caveat's name, or "".
	Caveat string
	// Expiration reports whether relationships of this type may expire.
	Expiration bool
}

func (a AllowedSubject) String() string {
	s := a.Type
	switch {
	case a.Wildcard:
		s += ":*"
	case a.Relation != "":
		s += "#" + a.Relation
	}
	switch {
	case a.Caveat != "" && a.Expiration:
		s += " with " + a.Caveat + " and expiration"
	case a.Caveat != "":
		s += " with " + a.Caveat
	case a.Expiration:
		s += " with expiration"
	}
	return s
}

// Op is the kind of a rewrite node.
type Op uint8

const (
	// OpUnion holds when any child holds (`+`).
	OpUnion Op = iota + 1
	// OpIntersection holds when every child holds (`&`).
	OpIntersection
	// OpExclusion holds when the first child holds and no other does (`-`).
	OpExclusion
	// OpComputed evaluates another relation or permission of the same object.
	OpComputed
	// OpArrow follows Tupleset and evaluates Relation on any subject found
	// (`->` and `.any()`).
	OpArrow
	// OpArrowAll requires Relation on every subject found (`.all()`).
	OpArrowAll
	// OpNil never holds.
	OpNil
	// OpSelf holds for the resource itself as subject (`self`).
	OpSelf
)

func (o Op) String() string {
	switch o {
	case OpUnion:
		return "union"
	case OpIntersection:
		return "intersection"
	case OpExclusion:
		return "exclusion"
	case OpComputed:
		return "computed"
	case OpArrow:
		return "arrow"
	case OpArrowAll:
		return "arrow_all"
	case OpNil:
		return "nil"
	case OpSelf:
		return "self"
	}
	return fmt.Sprintf("op(%d)", o)
}

// Rewrite is a node of a permission's expression.
type Rewrite struct {
	Op       Op
	Children []*Rewrite
	// Relation is the computed relation (OpComputed) or the relation evaluated
	// on the far side of an arrow (OpArrow, OpArrowAll).
	Relation string
	// Tupleset is the relation an arrow follows.
	Tupleset string
}

// Definition returns the named definition, or nil.
func (s *Schema) Definition(name string) *Definition { return s.Definitions[name] }

// Relation returns the named relation or permission of a definition, or nil.
func (s *Schema) Relation(def, name string) *Relation {
	d := s.Definitions[def]
	if d == nil {
		return nil
	}
	return d.Relations[name]
}

// DefinitionNames lists definitions in sorted order.
func (s *Schema) DefinitionNames() []string {
	names := make([]string, 0, len(s.Definitions))
	for n := range s.Definitions {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Error is a schema compile error with its position (1-based; zero when unknown).
type Error struct {
	Line, Column int
	// Source is the snippet of schema text the error refers to, when known.
	Source  string
	Message string
	// Limit names the field of Limits the schema exceeds, or "".
	Limit string
}

func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("schema:%d:%d: %s", e.Line, e.Column, e.Message)
	}
	return "schema: " + e.Message
}

// Compile parses, type-checks and translates schema text within
// DefaultLimits.
func Compile(ctx context.Context, text string) (*Schema, error) {
	return CompileWithin(ctx, text, DefaultLimits())
}

// CompileWithin is Compile within limits l (zero fields: the defaults).
// Text over a limit is refused before SpiceDB's compiler sees it, with an
// *Error naming the limit; ctx is checked between the steps of compiling.
func CompileWithin(ctx context.Context, text string, l Limits) (*Schema, error) {
	l = l.withDefaults()
	if err := checkLimits(ctx, text, l); err != nil {
		return nil, err
	}
	compiled, err := compiler.Compile(compiler.InputSchema{
		Source:       input.Source("schema"),
		SchemaString: text,
	}, compiler.AllowUnprefixedObjectType(), compiler.DisallowImportFlag())
	if err != nil {
		return nil, toError(err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := &Schema{
		Text:        text,
		Definitions: make(map[string]*Definition, len(compiled.ObjectDefinitions)),
		Caveats:     make(map[string]*Caveat, len(compiled.CaveatDefinitions)),
		limits:      l,
	}
	relations := 0
	for _, nd := range compiled.ObjectDefinitions {
		relations += len(nd.Relation)
	}
	if relations > l.MaxRelations {
		// Partials expand to more than the text shows.
		return nil, limitError(text, -1, "MaxRelations", relations, l.MaxRelations, "relations and permissions in the schema")
	}
	for _, cd := range compiled.CaveatDefinitions {
		c, err := newCaveat(cd, l.MaxCaveatCost)
		if err != nil {
			return nil, &Error{Message: fmt.Sprintf("caveat %q: %v", cd.Name, err)}
		}
		out.Caveats[cd.Name] = c
	}

	ts := sdbschema.NewTypeSystem(sdbschema.ResolverForCompiledSchema(compiled))
	for _, nd := range compiled.ObjectDefinitions {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		def, err := sdbschema.NewDefinition(nd)
		if err != nil {
			return nil, positioned(compiled, text, nd.Name, err)
		}
		if _, err := ts.Validate(ctx, def); err != nil {
			return nil, positioned(compiled, text, nd.Name, err)
		}
		d, err := translateDefinition(nd)
		if err != nil {
			return nil, &Error{Message: fmt.Sprintf("definition %q: %v", nd.Name, err)}
		}
		out.Definitions[d.Name] = d
	}
	if err := out.checkAgents(); err != nil {
		return nil, err
	}
	return out, nil
}

// checkAgents enforces what the agent semantics need of an acts_for relation:
// its subjects must be objects, not usersets or wildcards, so that a
// delegation chain is a path of concrete objects.
func (s *Schema) checkAgents() error {
	for _, name := range s.DefinitionNames() {
		d := s.Definitions[name]
		r, ok := d.Relations[ActsFor]
		if !ok {
			continue
		}
		if r.IsPermission {
			return &Error{Message: fmt.Sprintf("definition %q: %s must be a relation, not a permission, to make %q an agent type", name, ActsFor, name)}
		}
		for _, a := range r.Allowed {
			if a.Wildcard || a.Relation != "" {
				return &Error{Message: fmt.Sprintf("definition %q: %s allows %s; an agent may act only for concrete subjects (a type, without wildcard or #relation)", name, ActsFor, a)}
			}
		}
	}
	return nil
}

func toError(err error) error {
	var ce compiler.WithContextError
	if errors.As(err, &ce) {
		line, col, lerr := ce.SourceRange.Start().LineAndColumn()
		if lerr == nil {
			return &Error{Line: line + 1, Column: col + 1, Source: ce.ErrorSourceCode, Message: ce.BaseMessage}
		}
		return &Error{Source: ce.ErrorSourceCode, Message: ce.BaseMessage}
	}
	return &Error{Message: err.Error()}
}

// positioned attaches a position to a type system error, which SpiceDB
// reports without one: the first use of the name the error quotes inside the
// offending definition, else the definition itself.
func positioned(compiled *compiler.CompiledSchema, text, defName string, err error) error {
	e := &Error{Message: err.Error()}
	for _, nd := range compiled.ObjectDefinitions {
		if nd.Name != defName || nd.SourcePosition == nil {
			continue
		}
		startLine := int(nd.SourcePosition.ZeroIndexedLineNumber)
		e.Line = startLine + 1
		e.Column = int(nd.SourcePosition.ZeroIndexedColumnPosition) + 1
		for _, word := range quotedWords(err.Error()) {
			if word == defName {
				continue
			}
			if line, col, ok := findWord(text, startLine, word); ok {
				e.Line, e.Column = line, col
				break
			}
		}
	}
	return e
}

// quotedWords returns the `backticked` words of a message, in order.
func quotedWords(msg string) []string {
	var out []string
	for {
		i := strings.IndexByte(msg, '`')
		if i < 0 {
			return out
		}
		j := strings.IndexByte(msg[i+1:], '`')
		if j < 0 {
			return out
		}
		out = append(out, msg[i+1:i+1+j])
		msg = msg[i+2+j:]
	}
}

// findWord finds word as a whole identifier at or after a zero-indexed line,
// returning its 1-based line and column.
func findWord(text string, fromLine int, word string) (int, int, bool) {
	lines := strings.Split(text, "\n")
	isIdent := func(c byte) bool {
		return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
	}
	for l := fromLine; l < len(lines); l++ {
		line := lines[l]
		for off := 0; ; {
			i := strings.Index(line[off:], word)
			if i < 0 {
				break
			}
			i += off
			end := i + len(word)
			if (i == 0 || !isIdent(line[i-1])) && (end == len(line) || !isIdent(line[end])) {
				return l + 1, i + 1, true
			}
			off = end
		}
	}
	return 0, 0, false
}
