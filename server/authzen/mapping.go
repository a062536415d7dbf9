package authzen

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"

	yaml "go.yaml.in/yaml/v3"
)

// Mapping is the declarative link between AuthZEN's vocabulary and a
// schema's: which object type (and, for resources, which fixed object) an
// AuthZEN subject or resource type names, which permission an action names,
// and which request properties become caveat context. Everything a
// scenario needs lives in this data; types and actions it does not list
// keep their own names. The zero Mapping maps every name onto itself.
type Mapping struct {
	// Subjects by AuthZEN subject type.
	Subjects map[string]SubjectMapping `yaml:"subjects"`
	// Resources by AuthZEN resource type.
	Resources map[string]ResourceMapping `yaml:"resources"`
	// Actions maps AuthZEN action names onto permissions for every
	// resource type (a resource's own actions win).
	Actions map[string]string `yaml:"actions"`
	// Context maps members of the request's context onto caveat
	// parameters; unlisted members are not passed.
	Context map[string]string `yaml:"context"`
	// Relationships are templates of contextual relationships filled from
	// each request's members (relationships.go).
	Relationships []string `yaml:"relationships"`
}

// SubjectMapping maps one AuthZEN subject type.
type SubjectMapping struct {
	// Type is the object type ("": the AuthZEN type).
	Type string `yaml:"type"`
	// Properties maps subject.properties members onto caveat parameters.
	Properties map[string]string `yaml:"properties"`
	// OnBehalfOf names the subject property holding an agent's principal,
	// an entity {"type","id"} ("": on_behalf_of).
	OnBehalfOf string `yaml:"on_behalf_of"`
}

// ResourceMapping maps one AuthZEN resource type.
type ResourceMapping struct {
	// Type is the object type ("": the AuthZEN type).
	Type string `yaml:"type"`
	// ID, when set, is the one object every resource of this type stands
	// for: its permissions come from the request's properties and the
	// subject's relationships, not from relationships of the resource's
	// own id (which the PDP never sees beforehand).
	ID string `yaml:"id"`
	// Properties maps resource.properties members onto caveat parameters.
	Properties map[string]string `yaml:"properties"`
	// Actions maps AuthZEN action names onto permissions; when set it is
	// also the list an action search tries.
	Actions map[string]string `yaml:"actions"`
}

// DefaultOnBehalfOf is the subject property naming an agent's principal
// when the mapping does not name another.
const DefaultOnBehalfOf = "on_behalf_of"

var (
	typeName  = regexp.MustCompile(`^([a-z][a-z0-9_]{1,62}[a-z0-9]/)*[a-z][a-z0-9_]{1,62}[a-z0-9]$`)
	relName   = regexp.MustCompile(`^[a-z][a-z0-9_]{1,62}[a-z0-9]$`)
	paramName = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)
	objectID  = regexp.MustCompile(`^([a-zA-Z0-9/_|\-=+]+|\*)$`)
)

// LoadMapping reads and validates a mapping file.
func LoadMapping(path string) (*Mapping, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("AuthZEN mapping: %w", err)
	}
	m, err := ParseMapping(b)
	if err != nil {
		return nil, fmt.Errorf("AuthZEN mapping %s: %w", path, err)
	}
	return m, nil
}

// ParseMapping parses and validates a mapping; its errors name the line.
func ParseMapping(b []byte) (*Mapping, error) {
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return &Mapping{}, nil
		}
		return nil, err
	}
	m := &Mapping{}
	strict := yaml.NewDecoder(bytes.NewReader(b))
	strict.KnownFields(true)
	if err := strict.Decode(m); err != nil {
		return nil, err
	}
	if err := validate(&root, m); err != nil {
		return nil, err
	}
	return m, nil
}

// validate checks every name, reporting the line it is written on.
func validate(root *yaml.Node, m *Mapping) error {
	doc := root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) > 0 {
		doc = doc.Content[0]
	}
	var errs []error
	bad := func(n *yaml.Node, format string, args ...any) {
		line := 0
		if n != nil {
			line = n.Line
		}
		errs = append(errs, fmt.Errorf("line %d: %s", line, fmt.Sprintf(format, args...)))
	}
	check := func(n *yaml.Node, what string, re *regexp.Regexp, v, expected string) {
		if v != "" && !re.MatchString(v) {
			bad(n, "%s %q: expected %s", what, v, expected)
		}
	}
	names := func(parent *yaml.Node, key, what, expected string, re *regexp.Regexp) {
		mp := child(parent, key)
		if mp == nil {
			return
		}
		for i := 0; i+1 < len(mp.Content); i += 2 {
			k, v := mp.Content[i], mp.Content[i+1]
			if k.Value == "" {
				bad(k, "%s: an empty name", key)
			}
			if v.Value == "" {
				bad(v, "%s %q: an empty %s", key, k.Value, what)
			}
			check(v, what, re, v.Value, expected)
		}
	}
	const typeExpect = "a schema type name (lower case letters, digits and _, 3 to 64 characters)"
	const relExpect = "a permission name (lower case letters, digits and _, 3 to 64 characters)"
	const paramExpect = "a caveat parameter name (letters, digits and _)"
	for _, section := range []string{"subjects", "resources"} {
		sec := child(doc, section)
		if sec == nil {
			continue
		}
		for i := 0; i+1 < len(sec.Content); i += 2 {
			k, v := sec.Content[i], sec.Content[i+1]
			if k.Value == "" {
				bad(k, "%s: an empty AuthZEN type", section)
			}
			if t := child(v, "type"); t != nil {
				check(t, section+"."+k.Value+".type", typeName, t.Value, typeExpect)
			} else {
				check(k, section+" AuthZEN type (used as the schema type)", typeName, k.Value, typeExpect)
			}
			names(v, "properties", "caveat parameter", paramExpect, paramName)
			if section == "resources" {
				if id := child(v, "id"); id != nil {
					check(id, section+"."+k.Value+".id", objectID, id.Value, "an object id (letters, digits and /_|-=+)")
					if id.Value == "*" {
						bad(id, "%s.%s.id: a resource cannot be the wildcard", section, k.Value)
					}
				}
				names(v, "actions", "permission", relExpect, relName)
			} else if obo := child(v, "on_behalf_of"); obo != nil && obo.Value == "" {
				bad(obo, "%s.%s.on_behalf_of: an empty property name", section, k.Value)
			}
		}
	}
	names(doc, "actions", "permission", relExpect, relName)
	names(doc, "context", "caveat parameter", paramExpect, paramName)
	if rs := child(doc, "relationships"); rs != nil {
		for i, n := range rs.Content {
			if err := checkTemplate(n.Value); err != nil {
				bad(n, "relationships[%d]: %v", i, err)
			}
		}
	}
	return errors.Join(errs...)
}

// child returns the value of key in a mapping node, or nil.
func child(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

func (m *Mapping) subject(authzenType string) (objectType string, sm SubjectMapping) {
	sm = m.Subjects[authzenType]
	if sm.Type == "" {
		sm.Type = authzenType
	}
	if sm.OnBehalfOf == "" {
		sm.OnBehalfOf = DefaultOnBehalfOf
	}
	return sm.Type, sm
}

func (m *Mapping) resource(authzenType string) ResourceMapping {
	rm := m.Resources[authzenType]
	if rm.Type == "" {
		rm.Type = authzenType
	}
	return rm
}

// permission names the permission an action on a resource type checks.
func (m *Mapping) permission(rm ResourceMapping, action string) string {
	if p, ok := rm.Actions[action]; ok {
		return p
	}
	if p, ok := m.Actions[action]; ok {
		return p
	}
	return action
}

// actionsOf lists the AuthZEN actions a resource mapping names, sorted, or
// nil when it names none.
func (rm ResourceMapping) actionsOf() []string {
	if len(rm.Actions) == 0 {
		return nil
	}
	out := make([]string, 0, len(rm.Actions))
	for a := range rm.Actions {
		out = append(out, a)
	}
	sort.Strings(out)
	return out
}
