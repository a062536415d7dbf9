package op

import (
	"fmt"
	"time"

	"github.com/mandate-authz/mandate/server/audit"
	"github.com/mandate-authz/mandate/store/rel"
)

// DefaultMaxContextualRelationships bounds a request's contextual
// relationships when Limits leaves it zero: OpenFGA's limit on contextual
// tuples.
const DefaultMaxContextualRelationships = 100

// contextualWithin refuses contextual relationships over the limit, or
// combined with a capability token (the token checker answers from stored
// relationships only, so it would silently ignore them).
func (c *Core) contextualWithin(rels []rel.Relationship, token string) error {
	if len(rels) == 0 {
		return nil
	}
	if token != "" {
		return fmt.Errorf("%w: contextual_relationships: not allowed with a capability token", ErrInvalidTokenCheck)
	}
	return c.within(LimitContextual, len(rels), c.lim.MaxContextualRelationships)
}

// describeContextual names a request's contextual relationships in its
// audit event: each as resource#relation@subject with its caveat's name and
// its expiration, never its caveat context, which may carry request data
// the trail's context hashing does not reach.
func describeContextual(ev *audit.Event, rels []rel.Relationship) {
	if len(rels) == 0 {
		return
	}
	ev.Contextual = make([]string, len(rels))
	for i, r := range rels {
		s := r.Key().String()
		if r.Caveat != nil {
			s += "[" + r.Caveat.Name + "]"
		}
		if !r.Expiration.IsZero() {
			s += "[expiration:" + r.Expiration.UTC().Format(time.RFC3339) + "]"
		}
		ev.Contextual[i] = s
	}
}
