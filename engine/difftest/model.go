package difftest

import (
	"fmt"
	"slices"
	"strings"

	"github.com/mandate-authz/mandate/schema"
)

// SchemaModel is a generated schema kept as a tree, so that it can be printed
// and also shrunk structurally by Minimize.
type SchemaModel struct {
	Caveats []*CaveatModel
	Defs    []*DefModel
}

// CaveatModel is a caveat: typed parameters and a CEL expression over them.
type CaveatModel struct {
	Name   string
	Params []Param
	Expr   string
}

// Param is a caveat parameter.
type Param struct {
	Name string
	Type string
}

// DefModel is a definition: relations first, then permissions.
type DefModel struct {
	Name        string
	Relations   []*RelationModel
	Permissions []*PermissionModel
}

// RelationModel is a relation and its allowed subject types.
type RelationModel struct {
	Name    string
	Allowed []AllowedModel
}

// AllowedModel is one allowed subject type of a relation.
type AllowedModel = schema.AllowedSubject

// PermissionModel is a permission and its expression.
type PermissionModel struct {
	Name string
	Expr *Expr
}

// ExprKind is the kind of a permission expression node.
type ExprKind uint8

// Expression node kinds.
const (
	ExprRef       ExprKind = iota // a relation or permission of the same definition
	ExprArrow                     // tupleset->name
	ExprArrowAny                  // tupleset.any(name)
	ExprArrowAll                  // tupleset.all(name)
	ExprNil                       // nil
	ExprSelf                      // self
	ExprUnion                     // a + b + ...
	ExprIntersect                 // a & b & ...
	ExprExclude                   // a - b
)

// Expr is a node of a permission expression.
type Expr struct {
	Kind     ExprKind
	Name     string // referenced name (ExprRef) or arrow target
	Tupleset string // arrow tupleset relation
	Children []*Expr
	// Parens adds redundant parentheses when printing, to exercise the parser.
	Parens int
}

func (e *Expr) isOp() bool {
	return e.Kind == ExprUnion || e.Kind == ExprIntersect || e.Kind == ExprExclude
}

// Clone deep-copies an expression.
func (e *Expr) Clone() *Expr {
	c := *e
	c.Children = make([]*Expr, len(e.Children))
	for i, ch := range e.Children {
		c.Children[i] = ch.Clone()
	}
	return &c
}

// String prints the expression in schema syntax.
func (e *Expr) String() string {
	var b strings.Builder
	e.write(&b, false)
	return b.String()
}

func (e *Expr) write(b *strings.Builder, nested bool) {
	open := e.Parens
	if nested && e.isOp() && open == 0 {
		// Nested operations are always parenthesized, so the printed
		// text means exactly the tree whatever the operator precedence.
		open = 1
	}
	b.WriteString(strings.Repeat("(", open))
	switch e.Kind {
	case ExprRef:
		b.WriteString(e.Name)
	case ExprArrow:
		b.WriteString(e.Tupleset + "->" + e.Name)
	case ExprArrowAny:
		b.WriteString(e.Tupleset + ".any(" + e.Name + ")")
	case ExprArrowAll:
		b.WriteString(e.Tupleset + ".all(" + e.Name + ")")
	case ExprNil:
		b.WriteString("nil")
	case ExprSelf:
		b.WriteString("self")
	case ExprUnion, ExprIntersect, ExprExclude:
		op := map[ExprKind]string{ExprUnion: " + ", ExprIntersect: " & ", ExprExclude: " - "}[e.Kind]
		for i, c := range e.Children {
			if i > 0 {
				b.WriteString(op)
			}
			c.write(b, true)
		}
	}
	b.WriteString(strings.Repeat(")", open))
}

// walk calls fn on every node, parents first.
func (e *Expr) walk(fn func(*Expr)) {
	fn(e)
	for _, c := range e.Children {
		c.walk(fn)
	}
}

// Clone deep-copies the schema model.
func (s *SchemaModel) Clone() *SchemaModel {
	out := &SchemaModel{}
	for _, c := range s.Caveats {
		cc := *c
		cc.Params = slices.Clone(c.Params)
		out.Caveats = append(out.Caveats, &cc)
	}
	for _, d := range s.Defs {
		nd := &DefModel{Name: d.Name}
		for _, r := range d.Relations {
			nd.Relations = append(nd.Relations, &RelationModel{Name: r.Name, Allowed: slices.Clone(r.Allowed)})
		}
		for _, p := range d.Permissions {
			nd.Permissions = append(nd.Permissions, &PermissionModel{Name: p.Name, Expr: p.Expr.Clone()})
		}
		out.Defs = append(out.Defs, nd)
	}
	return out
}

// Def returns the named definition, or nil.
func (s *SchemaModel) Def(name string) *DefModel {
	for _, d := range s.Defs {
		if d.Name == name {
			return d
		}
	}
	return nil
}

// Relation returns the named relation of the definition, or nil.
func (d *DefModel) Relation(name string) *RelationModel {
	for _, r := range d.Relations {
		if r.Name == name {
			return r
		}
	}
	return nil
}

// Names lists the definition's relations then permissions.
func (d *DefModel) Names() []string {
	var out []string
	for _, r := range d.Relations {
		out = append(out, r.Name)
	}
	for _, p := range d.Permissions {
		out = append(out, p.Name)
	}
	return out
}

// HasName reports whether the definition has a relation or permission name.
func (d *DefModel) HasName(name string) bool {
	return slices.Contains(d.Names(), name)
}

func (s *SchemaModel) usesExpiration() bool {
	for _, d := range s.Defs {
		for _, r := range d.Relations {
			for _, a := range r.Allowed {
				if a.Expiration {
					return true
				}
			}
		}
	}
	return false
}

func (s *SchemaModel) usesSelf() bool {
	found := false
	for _, d := range s.Defs {
		for _, p := range d.Permissions {
			p.Expr.walk(func(e *Expr) {
				if e.Kind == ExprSelf {
					found = true
				}
			})
		}
	}
	return found
}

// String prints the schema in SpiceDB's schema language.
func (s *SchemaModel) String() string {
	var b strings.Builder
	if s.usesExpiration() {
		b.WriteString("use expiration\n")
	}
	if s.usesSelf() {
		b.WriteString("use self\n")
	}
	if b.Len() > 0 {
		b.WriteString("\n")
	}
	for _, c := range s.Caveats {
		params := make([]string, len(c.Params))
		for i, p := range c.Params {
			params[i] = p.Name + " " + p.Type
		}
		fmt.Fprintf(&b, "caveat %s(%s) {\n\t%s\n}\n\n", c.Name, strings.Join(params, ", "), c.Expr)
	}
	for i, d := range s.Defs {
		if i > 0 {
			b.WriteString("\n")
		}
		if len(d.Relations) == 0 && len(d.Permissions) == 0 {
			fmt.Fprintf(&b, "definition %s {}\n", d.Name)
			continue
		}
		fmt.Fprintf(&b, "definition %s {\n", d.Name)
		for _, r := range d.Relations {
			types := make([]string, len(r.Allowed))
			for j, a := range r.Allowed {
				types[j] = a.String()
			}
			fmt.Fprintf(&b, "\trelation %s: %s\n", r.Name, strings.Join(types, " | "))
		}
		for _, p := range d.Permissions {
			fmt.Fprintf(&b, "\tpermission %s = %s\n", p.Name, p.Expr)
		}
		b.WriteString("}\n")
	}
	return b.String()
}
