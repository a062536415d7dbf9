package mcpgateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/mandate-authz/mandate/store/rel"
)

// Mapping says which Mandate check guards each tool, prompt and resource,
// and how a token's claims become Mandate subjects. It is read from YAML
// by ParseMapping; see the README for the format.
type Mapping struct {
	// PrincipalType is the object type of the token's sub (default user).
	PrincipalType string
	// AgentType is the object type of the client (client_id or azp) and of
	// every actor named in act claims (default agent).
	AgentType string
	// Scopes must all be in every token's scope claim.
	Scopes    []string
	Tools     map[string]*Rule
	Prompts   map[string]*Rule
	Resources []*ResourceRule
}

// Rule guards one tool or prompt: Check is what a call must pass, List what
// a listing checks (Check itself when it names no argument).
type Rule struct {
	Name   string
	Check  Target
	List   *Target
	Scopes []string
	// Patterns constrain argument values (anchored regular expressions)
	// before they become object IDs.
	Patterns map[string]*regexp.Regexp
	Line     int
}

// ResourceRule guards the resources whose URI matches a template such as
// calendar://{calendar_id}/events; each {name} matches one path segment.
type ResourceRule struct {
	URI      string
	uri      *regexp.Regexp
	names    []string
	Check    Target
	Scopes   []string
	Patterns map[string]*regexp.Regexp
	Line     int
}

// Target is a resource and permission with {argument} placeholders in the
// object ID: calendar:{calendar_id}#read.
type Target struct {
	Type       string
	ID         []idPart
	Permission string
	text       string
}

// idPart is a literal run of an object ID or a placeholder naming an
// argument.
type idPart struct {
	literal string
	arg     string
}

func (t Target) String() string { return t.text }

// Placeholders lists the arguments the target's ID is built from.
func (t Target) Placeholders() []string {
	var out []string
	for _, p := range t.ID {
		if p.arg != "" {
			out = append(out, p.arg)
		}
	}
	return out
}

// maxArgumentLength bounds one argument value that becomes (part of) an
// object ID; Mandate's own ID limit applies to the whole ID as well.
const maxArgumentLength = 1024

// ArgumentError is an argument value that cannot become an object ID.
type ArgumentError struct {
	Argument string
	Reason   string
}

func (e *ArgumentError) Error() string {
	return fmt.Sprintf("argument %q: %s", e.Argument, e.Reason)
}

// Resolve builds the object a call is checked on from its argument values
// (strings, or integers written as decimals), validating every value: it
// must be present, must match the rule's pattern if any, and the ID it
// yields must be a valid Mandate object ID (no wildcard).
func (t Target) Resolve(args map[string]json.RawMessage, patterns map[string]*regexp.Regexp) (rel.Object, error) {
	var id strings.Builder
	for _, p := range t.ID {
		if p.arg == "" {
			id.WriteString(p.literal)
			continue
		}
		v, err := argumentValue(p.arg, args[p.arg])
		if err != nil {
			return rel.Object{}, err
		}
		if re := patterns[p.arg]; re != nil && !re.MatchString(v) {
			return rel.Object{}, &ArgumentError{Argument: p.arg, Reason: fmt.Sprintf("value does not match the pattern %s", re)}
		}
		id.WriteString(v)
	}
	o := rel.Object{Type: t.Type, ID: id.String()}
	if err := rel.ValidateObject(o); err != nil {
		arg := strings.Join(t.Placeholders(), ", ")
		return rel.Object{}, &ArgumentError{Argument: arg, Reason: fmt.Sprintf("not a valid object ID for %s: %v", t, err)}
	}
	return o, nil
}

// argumentValue reads one argument as text: a JSON string, or an integer.
func argumentValue(name string, raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", &ArgumentError{Argument: name, Reason: "missing: the mapping builds the checked object from it"}
	}
	var s string
	if raw[0] == '"' {
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", &ArgumentError{Argument: name, Reason: "not a valid JSON string"}
		}
	} else {
		var f float64
		if err := json.Unmarshal(raw, &f); err != nil || f != math.Trunc(f) || math.Abs(f) > 1<<53 {
			return "", &ArgumentError{Argument: name, Reason: "expected a string or an integer"}
		}
		s = strconv.FormatInt(int64(f), 10)
	}
	switch {
	case s == "":
		return "", &ArgumentError{Argument: name, Reason: "empty"}
	case len(s) > maxArgumentLength:
		return "", &ArgumentError{Argument: name, Reason: fmt.Sprintf("longer than %d bytes", maxArgumentLength)}
	}
	return s, nil
}

// MatchResource finds the rule of a resource URI and the values its
// placeholders take.
func (m *Mapping) MatchResource(uri string) (*ResourceRule, map[string]json.RawMessage) {
	for _, r := range m.Resources {
		sub := r.uri.FindStringSubmatch(uri)
		if sub == nil {
			continue
		}
		args := make(map[string]json.RawMessage, len(r.names))
		for i, n := range r.names {
			b, _ := json.Marshal(sub[i+1])
			args[n] = b
		}
		return r, args
	}
	return nil, nil
}

// MappingError is a mistake in a mapping file, with its line.
type MappingError struct {
	Line int
	Msg  string
}

func (e *MappingError) Error() string {
	if e.Line == 0 {
		return "mapping: " + e.Msg
	}
	return fmt.Sprintf("mapping line %d: %s", e.Line, e.Msg)
}

func errAt(n *yaml.Node, format string, args ...any) error {
	line := 0
	if n != nil {
		line = n.Line
	}
	return &MappingError{Line: line, Msg: fmt.Sprintf(format, args...)}
}

// ParseMapping reads and validates a mapping file. Every error names its
// line.
func ParseMapping(data []byte) (*Mapping, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, &MappingError{Msg: err.Error()}
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		return nil, &MappingError{Msg: "expected a YAML mapping with tools, prompts or resources"}
	}
	top, err := fields(doc.Content[0], "identity", "scopes", "tools", "prompts", "resources")
	if err != nil {
		return nil, err
	}
	m := &Mapping{PrincipalType: "user", AgentType: "agent", Tools: map[string]*Rule{}, Prompts: map[string]*Rule{}}
	if n := top["identity"]; n != nil {
		id, err := fields(n, "principal_type", "agent_type")
		if err != nil {
			return nil, err
		}
		for key, dst := range map[string]*string{"principal_type": &m.PrincipalType, "agent_type": &m.AgentType} {
			if v := id[key]; v != nil {
				if *dst, err = typeName(v); err != nil {
					return nil, err
				}
			}
		}
	}
	if m.Scopes, err = scopes(top["scopes"]); err != nil {
		return nil, err
	}
	for _, kind := range []string{"tools", "prompts"} {
		n := top[kind]
		if n == nil {
			continue
		}
		if n.Kind != yaml.MappingNode {
			return nil, errAt(n, "%s: expected a mapping from name to rule", kind)
		}
		dst := m.Tools
		if kind == "prompts" {
			dst = m.Prompts
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			name := n.Content[i].Value
			if name == "" {
				return nil, errAt(n.Content[i], "%s: empty name", kind)
			}
			if _, dup := dst[name]; dup {
				return nil, errAt(n.Content[i], "%s: %q is mapped twice", kind, name)
			}
			r, err := parseRule(name, n.Content[i+1])
			if err != nil {
				return nil, err
			}
			dst[name] = r
		}
	}
	if n := top["resources"]; n != nil {
		if n.Kind != yaml.SequenceNode {
			return nil, errAt(n, "resources: expected a list of {uri, check}")
		}
		for _, item := range n.Content {
			r, err := parseResourceRule(item)
			if err != nil {
				return nil, err
			}
			m.Resources = append(m.Resources, r)
		}
	}
	if len(m.Tools)+len(m.Prompts)+len(m.Resources) == 0 {
		return nil, errAt(doc.Content[0], "no tools, prompts or resources mapped: every call would be refused")
	}
	return m, nil
}

// fields reads a YAML mapping whose keys must be among allowed.
func fields(n *yaml.Node, allowed ...string) (map[string]*yaml.Node, error) {
	if n.Kind != yaml.MappingNode {
		return nil, errAt(n, "expected a mapping with keys %s", strings.Join(allowed, ", "))
	}
	out := make(map[string]*yaml.Node, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		if !slices.Contains(allowed, k.Value) {
			return nil, errAt(k, "unknown key %q (expected one of %s)", k.Value, strings.Join(allowed, ", "))
		}
		if _, dup := out[k.Value]; dup {
			return nil, errAt(k, "key %q given twice", k.Value)
		}
		out[k.Value] = n.Content[i+1]
	}
	return out, nil
}

var namePattern = regexp.MustCompile(`^[a-z][a-z0-9_]{1,62}[a-z0-9]$`)

func typeName(n *yaml.Node) (string, error) {
	if n.Kind != yaml.ScalarNode || !namePattern.MatchString(n.Value) {
		return "", errAt(n, "%q: expected an object type name such as user (lowercase letters, digits, _)", n.Value)
	}
	return n.Value, nil
}

func scopes(n *yaml.Node) ([]string, error) {
	if n == nil {
		return nil, nil
	}
	if n.Kind != yaml.SequenceNode {
		return nil, errAt(n, "scopes: expected a list of scope names")
	}
	var out []string
	for _, s := range n.Content {
		if s.Kind != yaml.ScalarNode || s.Value == "" || strings.ContainsAny(s.Value, " \"\\") {
			return nil, errAt(s, "scope %q: expected a non-empty name without spaces, quotes or backslashes", s.Value)
		}
		out = append(out, s.Value)
	}
	return out, nil
}

func patterns(n *yaml.Node) (map[string]*regexp.Regexp, error) {
	if n == nil {
		return nil, nil
	}
	if n.Kind != yaml.MappingNode {
		return nil, errAt(n, "arguments: expected a mapping from argument name to a regular expression")
	}
	out := map[string]*regexp.Regexp{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		v := n.Content[i+1]
		re, err := regexp.Compile(`^(?:` + v.Value + `)$`)
		if err != nil {
			return nil, errAt(v, "argument %q: invalid regular expression: %v", n.Content[i].Value, err)
		}
		out[n.Content[i].Value] = re
	}
	return out, nil
}

func parseRule(name string, n *yaml.Node) (*Rule, error) {
	f, err := fields(n, "check", "list", "scopes", "arguments")
	if err != nil {
		return nil, err
	}
	r := &Rule{Name: name, Line: n.Line}
	if f["check"] == nil {
		return nil, errAt(n, "%q: check is required (type:{argument}#permission)", name)
	}
	if r.Check, err = parseTarget(f["check"]); err != nil {
		return nil, err
	}
	if l := f["list"]; l != nil {
		t, err := parseTarget(l)
		if err != nil {
			return nil, err
		}
		if len(t.Placeholders()) > 0 {
			return nil, errAt(l, "%q: list %s may not name arguments: a listing has none", name, t)
		}
		r.List = &t
	} else if len(r.Check.Placeholders()) == 0 {
		r.List = &r.Check
	} else {
		return nil, errAt(n, "%q: check %s depends on arguments, so list (what tools/list checks) is required", name, r.Check)
	}
	if r.Scopes, err = scopes(f["scopes"]); err != nil {
		return nil, err
	}
	if r.Patterns, err = patterns(f["arguments"]); err != nil {
		return nil, err
	}
	for a := range r.Patterns {
		if !slices.Contains(r.Check.Placeholders(), a) {
			return nil, errAt(f["arguments"], "%q: argument %q has a pattern but check %s does not use it", name, a, r.Check)
		}
	}
	return r, nil
}

var placeholder = regexp.MustCompile(`\{([A-Za-z_][A-Za-z0-9_.-]*)\}`)

// parseTarget reads type:id#permission where id may hold {argument}
// placeholders.
func parseTarget(n *yaml.Node) (Target, error) {
	text := n.Value
	obj, perm, ok := strings.Cut(text, "#")
	typ, id, ok2 := strings.Cut(obj, ":")
	if n.Kind != yaml.ScalarNode || !ok || !ok2 || id == "" {
		return Target{}, errAt(n, "%q: expected type:id#permission, such as calendar:{calendar_id}#read", text)
	}
	if !namePattern.MatchString(typ) {
		return Target{}, errAt(n, "%q: object type %q is not a valid type name", text, typ)
	}
	if !namePattern.MatchString(perm) {
		return Target{}, errAt(n, "%q: permission %q is not a valid permission name", text, perm)
	}
	t := Target{Type: typ, Permission: perm, text: text}
	last := 0
	for _, loc := range placeholder.FindAllStringSubmatchIndex(id, -1) {
		if loc[0] > last {
			t.ID = append(t.ID, idPart{literal: id[last:loc[0]]})
		}
		t.ID = append(t.ID, idPart{arg: id[loc[2]:loc[3]]})
		last = loc[1]
	}
	if last < len(id) {
		t.ID = append(t.ID, idPart{literal: id[last:]})
	}
	for _, p := range t.ID {
		if strings.ContainsAny(p.literal, "{}") {
			return Target{}, errAt(n, "%q: malformed placeholder (expected {argument_name})", text)
		}
	}
	if len(t.Placeholders()) == 0 {
		if err := rel.ValidateObject(rel.Object{Type: typ, ID: id}); err != nil {
			return Target{}, errAt(n, "%q: %v", text, err)
		}
	}
	return t, nil
}

func parseResourceRule(n *yaml.Node) (*ResourceRule, error) {
	f, err := fields(n, "uri", "check", "scopes", "arguments")
	if err != nil {
		return nil, err
	}
	u, c := f["uri"], f["check"]
	if u == nil || c == nil || u.Value == "" {
		return nil, errAt(n, "resource: uri and check are both required")
	}
	r := &ResourceRule{URI: u.Value, Line: n.Line}
	var re strings.Builder
	re.WriteString("^")
	last := 0
	for _, loc := range placeholder.FindAllStringSubmatchIndex(u.Value, -1) {
		re.WriteString(regexp.QuoteMeta(u.Value[last:loc[0]]))
		re.WriteString(`([^/?#]+)`)
		r.names = append(r.names, u.Value[loc[2]:loc[3]])
		last = loc[1]
	}
	re.WriteString(regexp.QuoteMeta(u.Value[last:]))
	re.WriteString("$")
	r.uri = regexp.MustCompile(re.String())
	if r.Check, err = parseTarget(c); err != nil {
		return nil, err
	}
	for _, a := range r.Check.Placeholders() {
		if !slices.Contains(r.names, a) {
			return nil, errAt(c, "check %s uses {%s}, which uri %s does not capture", r.Check, a, u.Value)
		}
	}
	if r.Scopes, err = scopes(f["scopes"]); err != nil {
		return nil, err
	}
	if r.Patterns, err = patterns(f["arguments"]); err != nil {
		return nil, err
	}
	return r, nil
}

// errNoRule is returned for a name the mapping does not cover.
var errNoRule = errors.New("not in the gateway's mapping")
