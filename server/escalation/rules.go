package escalation

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/authzed/cel-go/cel"
	"go.yaml.in/yaml/v3"
)

// Limits of a rule file. They keep a rule file, and the work it causes on
// every agent check, small.
const (
	// MaxFileBytes bounds a rule file.
	MaxFileBytes = 1 << 20
	// MaxRules bounds the rules of one file: every allowed agent check may
	// walk all of them.
	MaxRules = 1_000
	// MaxConditionBytes bounds one rule's CEL condition.
	MaxConditionBytes = 4_096
	// MaxDescriptionBytes bounds one rule's description.
	MaxDescriptionBytes = 1_024
	// MaxListEntries bounds each of a rule's match lists.
	MaxListEntries = 256
)

// Rules is a parsed, validated rule file: an ordered list of rules, the
// first matching one winning. It is immutable and safe for concurrent use.
type Rules struct {
	// source names the file in errors and logs.
	source string
	rules  []*rule
	// hash is the SHA-256 of the text parsed, so that a reload of an
	// unchanged file swaps nothing.
	hash [sha256.Size]byte
}

// Len is the number of rules.
func (r *Rules) Len() int {
	if r == nil {
		return 0
	}
	return len(r.rules)
}

// Names lists the rules' names in file order.
func (r *Rules) Names() []string {
	if r == nil {
		return nil
	}
	out := make([]string, len(r.rules))
	for i, x := range r.rules {
		out[i] = x.name
	}
	return out
}

// rule is one compiled rule. Empty match lists and zero chain bounds match
// anything.
type rule struct {
	name, description                      string
	resourceTypes, permissions, agentTypes []string
	minChain, maxChain                     int
	condition                              string
	prog                                   cel.Program
	maxDuration                            time.Duration
}

// Error is a problem in a rule file, at a position in it.
type Error struct {
	File string
	// Line and Column are 1-based; Column is 0 when only the line is
	// known, and Line too when yaml.v3 names no line (some YAML syntax
	// errors).
	Line, Column int
	Msg          string
}

func (e *Error) Error() string {
	if e.Line == 0 {
		return fmt.Sprintf("%s: %s", e.File, e.Msg)
	}
	if e.Column == 0 {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s:%d:%d: %s", e.File, e.Line, e.Column, e.Msg)
}

// Load reads and parses the rule file at path.
func Load(path string) (*Rules, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("escalation rules: %w", err)
	}
	defer f.Close()
	// One byte over the limit tells a file at the limit from a longer one.
	b, err := io.ReadAll(io.LimitReader(f, MaxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("escalation rules: reading %s: %w", path, err)
	}
	return Parse(path, b)
}

// Parse parses and validates a rule file's text; name is the file name its
// errors carry. Every error names the line and column of the offending
// key or value.
func Parse(name string, text []byte) (*Rules, error) {
	if len(text) > MaxFileBytes {
		return nil, &Error{File: name, Line: 1, Column: 1, Msg: fmt.Sprintf("the file is over %d bytes", MaxFileBytes)}
	}
	p := parser{file: name, text: text}
	rs, err := p.parse()
	if err != nil {
		return nil, err
	}
	rs.source = name
	rs.hash = sha256.Sum256(text)
	return rs, nil
}

type parser struct {
	file string
	text []byte
	// lines is text split in lines, made on first use (CEL error positions).
	lines []string
}

func (p *parser) errAt(n *yaml.Node, format string, args ...any) error {
	return &Error{File: p.file, Line: n.Line, Column: n.Column, Msg: fmt.Sprintf(format, args...)}
}

// yamlLine matches the position yaml.v3 puts in its syntax errors.
var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

func (p *parser) parse() (*Rules, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(p.text, &doc); err != nil {
		if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
			line, _ := strconv.Atoi(m[1])
			return nil, &Error{File: p.file, Line: line, Msg: "invalid YAML: " + m[2]}
		}
		return nil, &Error{File: p.file, Msg: "invalid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	// An empty file is refused rather than read as "no rules": a file caught
	// half-written by a reload must not drop every rule.
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil, &Error{File: p.file, Line: 1, Column: 1, Msg: "the file is empty; expected a mapping with the key rules (write rules: [] for no rules)"}
	}
	top := doc.Content[0]
	if err := p.noAliases(top); err != nil {
		return nil, err
	}
	if top.Kind != yaml.MappingNode {
		return nil, p.errAt(top, "expected a mapping with the key rules, found %s", kindName(top))
	}
	var list *yaml.Node
	if err := p.fields(top, map[string]func(k, v *yaml.Node) error{
		"rules": func(_, v *yaml.Node) error { list = v; return nil },
	}); err != nil {
		return nil, err
	}
	if list == nil {
		return nil, p.errAt(top, "missing key rules (write rules: [] for no rules)")
	}
	if list.Kind != yaml.SequenceNode {
		if isNull(list) {
			return nil, p.errAt(list, "rules is empty; expected a list of rules (write rules: [] for no rules)")
		}
		return nil, p.errAt(list, "rules: expected a list of rules, found %s", kindName(list))
	}
	if len(list.Content) > MaxRules {
		return nil, p.errAt(list.Content[MaxRules], "more than %d rules", MaxRules)
	}
	env, err := newEnv()
	if err != nil {
		return nil, fmt.Errorf("escalation rules: building the CEL environment: %w", err)
	}
	rs := &Rules{rules: make([]*rule, 0, len(list.Content))}
	seen := map[string]*yaml.Node{}
	for _, item := range list.Content {
		r, nameNode, err := p.rule(env, item)
		if err != nil {
			return nil, err
		}
		if first, dup := seen[r.name]; dup {
			return nil, p.errAt(nameNode, "duplicate rule name %q (first defined at line %d)", r.name, first.Line)
		}
		seen[r.name] = nameNode
		rs.rules = append(rs.rules, r)
	}
	return rs, nil
}

// noAliases refuses anchors' aliases (and so merge keys) anywhere: they
// would let a small file expand into a large one, and no rule needs them.
func (p *parser) noAliases(n *yaml.Node) error {
	if n.Kind == yaml.AliasNode {
		return p.errAt(n, "YAML aliases are not supported in a rule file")
	}
	for _, c := range n.Content {
		if err := p.noAliases(c); err != nil {
			return err
		}
	}
	return nil
}

// fields walks a mapping's keys, refusing unknown and repeated ones.
func (p *parser) fields(m *yaml.Node, known map[string]func(k, v *yaml.Node) error) error {
	seen := map[string]int{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return p.errAt(k, "expected a key name, found %s", kindName(k))
		}
		f, ok := known[k.Value]
		if !ok {
			return p.errAt(k, "unknown key %q (expected one of: %s)", k.Value, strings.Join(slices.Sorted(mapKeys(known)), ", "))
		}
		if line, dup := seen[k.Value]; dup {
			return p.errAt(k, "key %q repeated (first at line %d)", k.Value, line)
		}
		seen[k.Value] = k.Line
		if err := f(k, v); err != nil {
			return err
		}
	}
	return nil
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// ruleName is what a rule name may be: it is sent in a gRPC trailer
// (mandate-approval-required) and shown in the inbox.
var ruleName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

func (p *parser) rule(env *cel.Env, n *yaml.Node) (*rule, *yaml.Node, error) {
	if n.Kind != yaml.MappingNode {
		return nil, nil, p.errAt(n, "a rule: expected a mapping with name, description, match, condition, max_duration; found %s", kindName(n))
	}
	r := &rule{}
	var nameNode *yaml.Node
	err := p.fields(n, map[string]func(k, v *yaml.Node) error{
		"name": func(_, v *yaml.Node) error {
			s, err := p.str(v, "name")
			if err != nil {
				return err
			}
			if !ruleName.MatchString(s) {
				return p.errAt(v, "name %q: expected 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit", s)
			}
			r.name, nameNode = s, v
			return nil
		},
		"description": func(_, v *yaml.Node) error {
			s, err := p.str(v, "description")
			if err == nil && len(s) > MaxDescriptionBytes {
				err = p.errAt(v, "description is over %d bytes", MaxDescriptionBytes)
			}
			r.description = s
			return err
		},
		"match":     func(_, v *yaml.Node) error { return p.match(r, v) },
		"condition": func(_, v *yaml.Node) error { return p.condition(env, r, v) },
		"max_duration": func(_, v *yaml.Node) error {
			s, err := p.str(v, "max_duration")
			if err != nil {
				return err
			}
			d, err := time.ParseDuration(s)
			if err != nil || d <= 0 {
				return p.errAt(v, "max_duration %q: expected a positive duration such as 15m or 1h30m", s)
			}
			r.maxDuration = d
			return nil
		},
	})
	if err != nil {
		return nil, nil, err
	}
	if nameNode == nil {
		return nil, nil, p.errAt(n, "a rule needs a name")
	}
	return r, nameNode, nil
}

func (p *parser) match(r *rule, n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return p.errAt(n, "match: expected a mapping with resource_types, permissions, agent_types, chain_length; found %s", kindName(n))
	}
	return p.fields(n, map[string]func(k, v *yaml.Node) error{
		"resource_types": func(_, v *yaml.Node) (err error) {
			r.resourceTypes, err = p.strList(v, "resource_types")
			return err
		},
		"permissions": func(_, v *yaml.Node) (err error) {
			r.permissions, err = p.strList(v, "permissions")
			return err
		},
		"agent_types": func(_, v *yaml.Node) (err error) {
			r.agentTypes, err = p.strList(v, "agent_types")
			return err
		},
		"chain_length": func(_, v *yaml.Node) error { return p.chainLength(r, v) },
	})
}

func (p *parser) chainLength(r *rule, n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return p.errAt(n, "chain_length: expected a mapping with min and/or max, found %s", kindName(n))
	}
	var maxNode *yaml.Node
	err := p.fields(n, map[string]func(k, v *yaml.Node) error{
		"min": func(_, v *yaml.Node) (err error) {
			r.minChain, err = p.chainBound(v, "chain_length.min")
			return err
		},
		"max": func(_, v *yaml.Node) (err error) {
			maxNode = v
			r.maxChain, err = p.chainBound(v, "chain_length.max")
			return err
		},
	})
	if err == nil && r.maxChain > 0 && r.minChain > r.maxChain {
		err = p.errAt(maxNode, "chain_length: max %d is below min %d", r.maxChain, r.minChain)
	}
	return err
}

// chainBound parses a chain length: the members of the chain, agent and
// principal included, so at least 2.
func (p *parser) chainBound(n *yaml.Node, field string) (int, error) {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!int" {
		if v, err := strconv.Atoi(n.Value); err == nil && v >= 2 && v <= 1_000 {
			return v, nil
		}
	}
	return 0, p.errAt(n, "%s: expected a whole number of chain members from 2 (an agent and its principal) to 1000, found %s", field, describe(n))
}

func (p *parser) str(n *yaml.Node, field string) (string, error) {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
		return "", p.errAt(n, "%s: expected a string, found %s", field, describe(n))
	}
	return n.Value, nil
}

// strList parses a list of non-empty strings, or one string standing for
// a list of one.
func (p *parser) strList(n *yaml.Node, field string) ([]string, error) {
	items := []*yaml.Node{n}
	if n.Kind == yaml.SequenceNode {
		items = n.Content
		if len(items) == 0 {
			return nil, p.errAt(n, "%s: the list is empty; leave the key out to match any", field)
		}
		if len(items) > MaxListEntries {
			return nil, p.errAt(items[MaxListEntries], "%s: more than %d entries", field, MaxListEntries)
		}
	}
	out := make([]string, 0, len(items))
	for _, it := range items {
		if it.Kind != yaml.ScalarNode || it.Tag != "!!str" || it.Value == "" {
			return nil, p.errAt(it, "%s: expected a non-empty string or a list of them, found %s", field, describe(it))
		}
		out = append(out, it.Value)
	}
	return out, nil
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.Tag == "!!null" }

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.ScalarNode:
		return describe(n)
	}
	return "nothing"
}

// describe names a node's type for an error, with a short scalar's value.
func describe(n *yaml.Node) string {
	if n.Kind != yaml.ScalarNode {
		return kindName(n)
	}
	kind := map[string]string{"!!str": "a string", "!!int": "a number", "!!float": "a number",
		"!!bool": "a boolean", "!!null": "nothing", "!!timestamp": "a timestamp"}[n.Tag]
	if kind == "" {
		kind = "a value tagged " + n.Tag
	}
	if n.Tag == "!!null" || len(n.Value) > 40 {
		return kind
	}
	return fmt.Sprintf("%s (%s)", kind, n.Value)
}
