package schema

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/mandate-authz/mandate/store/rel"
)

// ValidateRelationship checks a relationship against the schema: the resource
// type and relation exist and are a relation (not a permission), the subject
// type is allowed, the caveat is the one the allowed type requires and its
// context is well typed, and expiration appears only where the relation allows
// it. Errors name the part that is wrong and what was expected.
func (s *Schema) ValidateRelationship(r rel.Relationship) error {
	if err := r.Validate(); err != nil {
		return err
	}
	def := s.Definitions[r.Resource.Type]
	if def == nil {
		return fmt.Errorf("resource type %q is not defined in the schema", r.Resource.Type)
	}
	relation := def.Relations[r.Relation]
	if relation == nil {
		return fmt.Errorf("relation %q is not defined on %q", r.Relation, r.Resource.Type)
	}
	if relation.IsPermission {
		return fmt.Errorf("%s#%s is a permission; relationships can only be written to relations", r.Resource.Type, r.Relation)
	}
	if s.Definitions[r.Subject.Type] == nil {
		return fmt.Errorf("subject type %q is not defined in the schema", r.Subject.Type)
	}
	if r.Subject.Relation != "" && s.Relation(r.Subject.Type, r.Subject.Relation) == nil {
		return fmt.Errorf("subject relation %q is not defined on %q", r.Subject.Relation, r.Subject.Type)
	}

	caveatName := ""
	if r.Caveat != nil {
		caveatName = r.Caveat.Name
	}
	var allowedAny bool
	for _, a := range relation.Allowed {
		if !a.matchesSubject(r.Subject) {
			continue
		}
		allowedAny = true
		if a.Caveat != caveatName || a.Expiration != !r.Expiration.IsZero() {
			continue
		}
		if r.Caveat != nil {
			c := s.Caveats[r.Caveat.Name]
			if c == nil {
				return fmt.Errorf("caveat %q is not defined in the schema", r.Caveat.Name)
			}
			if err := s.checkContextSize(r.Caveat.Context); err != nil {
				return err
			}
			if err := c.ValidateContext(r.Caveat.Context); err != nil {
				return err
			}
		}
		return nil
	}
	subject := r.Subject.Type
	switch {
	case r.Subject.IsWildcard():
		subject += ":*"
	case r.Subject.Relation != "":
		subject += "#" + r.Subject.Relation
	}
	if !allowedAny {
		return fmt.Errorf("subjects of type %s are not allowed on %s#%s (allowed: %s)", subject, r.Resource.Type, r.Relation, relation.allowedList())
	}
	written := subject
	if caveatName != "" {
		written += " with " + caveatName
	}
	if !r.Expiration.IsZero() {
		if caveatName != "" {
			written += " and expiration"
		} else {
			written += " with expiration"
		}
	}
	return fmt.Errorf("%s is not allowed on %s#%s (allowed: %s)", written, r.Resource.Type, r.Relation, relation.allowedList())
}

// checkContextSize bounds a relationship's caveat context: it is evaluated
// on every check that meets the relationship.
func (s *Schema) checkContextSize(ctx map[string]any) error {
	if len(ctx) == 0 {
		return nil
	}
	b, err := json.Marshal(ctx)
	if err != nil {
		return fmt.Errorf("caveat context: %w", err)
	}
	if maxBytes := s.limits.withDefaults().MaxRelationshipContextBytes; len(b) > maxBytes {
		return fmt.Errorf("caveat context is %d bytes as JSON, over the maximum of %d (limit MaxRelationshipContextBytes)", len(b), maxBytes)
	}
	return nil
}

func (a AllowedSubject) matchesSubject(s rel.Subject) bool {
	if a.Type != s.Type {
		return false
	}
	if s.IsWildcard() {
		return a.Wildcard
	}
	return !a.Wildcard && a.Relation == s.Relation
}

func (r *Relation) allowedList() string {
	parts := make([]string, len(r.Allowed))
	for i, a := range r.Allowed {
		parts[i] = a.String()
	}
	return strings.Join(parts, " | ")
}
