package authzen

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/mandate-authz/mandate/store/rel"
)

// A mapping's relationships: templates turn request members into
// contextual relationships, which hold for that request only (the core
// validates them against the schema as a write, and never stores them).
// A template is a relationship in the text form with placeholders:
//
//	group:{subject.properties.groups}#member@user:{subject.id}
//
// {subject.id}, {subject.type}, {resource.id}, {resource.type} and
// {action.name} are the request's own members (AuthZEN names, before the
// mapping); {subject.properties.P}, {resource.properties.P} and
// {context.P} its properties. A template whose placeholders are not all
// present makes no relationship; an array of strings makes one per
// element. Every value must be an object ID (never "*"), so no value can
// add a relation, a subject, a caveat or a wildcard the template does not
// spell out.

var placeholder = regexp.MustCompile(`\{([^{}]*)\}`)

var placeholderName = regexp.MustCompile(`^((subject|resource)\.(id|type)|action\.name|(subject|resource)\.properties\.[A-Za-z0-9_\-]+|context\.[A-Za-z0-9_\-]+)$`)

// valueID is what a placeholder's value may be: an object ID, not "*".
var valueID = regexp.MustCompile(`^[a-zA-Z0-9/_|\-=+]+$`)

// checkTemplate validates a template: its placeholders, and that it is a
// relationship once they are filled.
func checkTemplate(t string) error {
	for _, m := range placeholder.FindAllStringSubmatch(t, -1) {
		if !placeholderName.MatchString(m[1]) {
			return fmt.Errorf("placeholder {%s}: expected {subject.id}, {subject.type}, {resource.id}, {resource.type}, {action.name}, {subject.properties.NAME}, {resource.properties.NAME} or {context.NAME}", m[1])
		}
	}
	if strings.ContainsAny(placeholder.ReplaceAllString(t, ""), "{}") {
		return fmt.Errorf("%q: an unmatched brace", t)
	}
	if _, err := rel.Parse(placeholder.ReplaceAllString(t, "x")); err != nil {
		return fmt.Errorf("%q is not a relationship once its placeholders are filled: %v", t, err)
	}
	return nil
}

// requestMembers is what a template's placeholders read.
type requestMembers struct {
	subject, resource *entity
	action            *action
	context           map[string]any
	// at prefixes member names in errors ("evaluations[2].").
	at string
}

// lookup returns a placeholder's values (nil: absent) and the member it
// names.
func (m requestMembers) lookup(name string) ([]string, string, error) {
	member := m.at + name
	var v any
	var ok bool
	head, rest, _ := strings.Cut(name, ".")
	var e *entity
	switch head {
	case "subject":
		e = m.subject
	case "resource":
		e = m.resource
	case "action":
		if m.action != nil && m.action.Name != "" {
			v, ok = m.action.Name, true
		}
	case "context":
		v, ok = m.context[rest]
	}
	if e != nil {
		switch {
		case rest == "id" && e.ID != "":
			v, ok = e.ID, true
		case rest == "type" && e.Type != "":
			v, ok = e.Type, true
		case strings.HasPrefix(rest, "properties."):
			v, ok = e.Properties[strings.TrimPrefix(rest, "properties.")]
		}
	}
	if !ok || v == nil {
		return nil, member, nil
	}
	var vals []string
	switch x := v.(type) {
	case string:
		vals = []string{x}
	case []any:
		for i, el := range x {
			s, isStr := el.(string)
			if !isStr {
				return nil, member, badRequest(fmt.Sprintf("%s[%d]", member, i), "expected a string (an object ID) for a mapping relationship")
			}
			vals = append(vals, s)
		}
	default:
		return nil, member, badRequest(member, "expected a string or an array of strings (object IDs) for a mapping relationship")
	}
	for _, s := range vals {
		if !valueID.MatchString(s) {
			return nil, member, badRequest(member, "%q is not an object ID (letters, digits and /_|-=+; never *), so no mapping relationship can name it", s)
		}
	}
	return vals, member, nil
}

// contextual fills the mapping's templates from a request, making at most
// max+1 relationships (the core refuses more than max, naming the limit).
func (mp *Mapping) contextual(m requestMembers, max int) ([]rel.Relationship, error) {
	var out []rel.Relationship
	for _, t := range mp.Relationships {
		refs := placeholder.FindAllStringSubmatchIndex(t, -1)
		values := make([][]string, len(refs))
		absent := false
		for i, r := range refs {
			vals, _, err := m.lookup(t[r[2]:r[3]])
			if err != nil {
				return nil, err
			}
			if len(vals) == 0 {
				absent = true
				break
			}
			values[i] = vals
		}
		if absent {
			continue
		}
		// Every combination of the placeholders' values, in order.
		pick := make([]int, len(refs))
		for {
			var b strings.Builder
			last := 0
			for i, r := range refs {
				b.WriteString(t[last:r[0]])
				b.WriteString(values[i][pick[i]])
				last = r[1]
			}
			b.WriteString(t[last:])
			r, err := rel.Parse(b.String())
			if err != nil {
				return nil, badRequest(m.at+"context", "mapping relationship %q: %v", b.String(), err)
			}
			out = append(out, r)
			if len(out) > max {
				return out, nil
			}
			i := len(pick) - 1
			for ; i >= 0; i-- {
				if pick[i]++; pick[i] < len(values[i]) {
					break
				}
				pick[i] = 0
			}
			if i < 0 {
				break
			}
		}
	}
	return dedupe(out), nil
}

// dedupe drops repeated relationships (two templates, or an array
// repeating a value, may make the same one).
func dedupe(rs []rel.Relationship) []rel.Relationship {
	seen := make(map[string]bool, len(rs))
	out := rs[:0]
	for _, r := range rs {
		if k := r.String(); !seen[k] {
			seen[k] = true
			out = append(out, r)
		}
	}
	return out
}
