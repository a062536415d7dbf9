// Package engine answers authorization questions — Check, CheckBulk,
// LookupResources, LookupSubjects, Expand — from an in-memory, revisioned
// index of relationships, following SpiceDB's semantics exactly and adding
// Mandate's agent delegation semantics.
//
// The engine never reads the store on the hot path: it is fed the store's
// change stream through Apply and answers at any revision it still retains.
package engine

import (
	"errors"
	"fmt"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// Decision is the answer to a check.
type Decision uint8

const (
	// Denied: the subject does not have the permission.
	Denied Decision = iota
	// Allowed: the subject has the permission.
	Allowed
	// Conditional: the answer depends on caveat context that was not
	// supplied; Missing names it.
	Conditional
)

func (d Decision) String() string {
	switch d {
	case Allowed:
		return "allowed"
	case Conditional:
		return "conditional"
	}
	return "denied"
}

// CheckRequest asks whether Subject has Permission on Resource.
type CheckRequest struct {
	Resource   rel.Object
	Permission string
	Subject    rel.Subject
	// Context supplies caveat parameters.
	Context map[string]any
	// OnBehalfOf names the principal when an agent subject acts for several.
	OnBehalfOf *rel.Object
	// Revision to answer at; zero means the latest revision applied, and
	// Exact(rev) exactly rev (revision zero included).
	Revision store.Revision
	// Explain asks for the delegation chain and reasons in the result.
	Explain bool
	// Contextual relationships hold for this request only (contextual.go).
	Contextual []rel.Relationship
}

// CheckResult is the answer to a CheckRequest.
type CheckResult struct {
	Decision Decision
	// Missing lists the caveat parameters whose absence made the decision
	// conditional, sorted.
	Missing []string
	// Revision is the revision the answer was computed at.
	Revision store.Revision
	// Delegation explains a check whose subject is an agent; nil otherwise.
	Delegation *Delegation
}

// Reason says why a delegated check was denied.
type Reason string

// Reason codes of PRODUCT.md's agent semantics.
const (
	ReasonNone              Reason = ""
	ReasonNoDelegation      Reason = "no_delegation"
	ReasonDelegationExpired Reason = "delegation_expired"
	ReasonOutOfScope        Reason = "out_of_scope"
	ReasonAgentNotGranted   Reason = "agent_not_granted"
	ReasonPrincipalDenied   Reason = "principal_denied"
	ReasonChainTooDeep      Reason = "chain_too_deep"
	ReasonCycle             Reason = "cycle"
	ReasonAmbiguous         Reason = "ambiguous_principal"
)

// Delegation explains a check made through an agent's delegation chain.
type Delegation struct {
	// Chain lists the chain from the agent checked to its principal:
	// agent:B, agent:A, user:alice.
	Chain []ChainElement
	// Reason is set when the decision is Denied: the first failing
	// element's reason. A Conditional decision has no reason; its missing
	// parameters say what it waits for.
	Reason Reason
	// FailedAt indexes Chain at the first failing element, or -1.
	FailedAt int
	// ResolvableByApproval is set on a denial where only agents' own grants
	// are missing while the principal and every link allow the action.
	ResolvableByApproval bool
}

// ChainElement is one member of a delegation chain and its own result.
type ChainElement struct {
	Subject rel.Object
	// Grant is the member's own check of the permission.
	Grant Decision
	// Link is the outcome of the acts_for edge from this member to the next
	// (Allowed for the principal, which has no outgoing link).
	Link Decision
	// Missing lists parameters this element lacked, when conditional.
	Missing []string
}

// String renders the chain as agent:B -> agent:A -> user:alice.
func (d *Delegation) String() string {
	s := ""
	for i, e := range d.Chain {
		if i > 0 {
			s += " -> "
		}
		s += e.Subject.String()
	}
	return s
}

// LookupResourcesRequest asks which resources of a type Subject has
// Permission on.
type LookupResourcesRequest struct {
	ResourceType string
	Permission   string
	Subject      rel.Subject
	Context      map[string]any
	OnBehalfOf   *rel.Object
	Revision     store.Revision
	// After resumes a paged lookup: only resources whose ID sorts after it
	// are returned, and those before it are not evaluated.
	After string
	// Limit, when positive, bounds the results; the lookup stops
	// evaluating once it has them.
	Limit int
	// Contextual relationships hold for this request only (contextual.go).
	Contextual []rel.Relationship
}

// LookupResult is one resource or subject found by a lookup.
type LookupResult struct {
	ID       string
	Decision Decision // Allowed or Conditional
	Missing  []string
	// Excluded lists, for a wildcard subject result ("*"), the subjects the
	// wildcard does not cover (Decision Allowed: definitely excluded;
	// Conditional: excluded depending on context).
	Excluded []LookupResult
}

// LookupSubjectsRequest asks which subjects of a type (and optional
// relation) have Permission on Resource.
type LookupSubjectsRequest struct {
	Resource        rel.Object
	Permission      string
	SubjectType     string
	SubjectRelation string
	Context         map[string]any
	Revision        store.Revision
	// After resumes a paged lookup: only subjects whose ID sorts after it
	// are returned ("*" sorts first). The wildcard's exclusions need every
	// subject evaluated, so only a first page that includes "*" does so.
	After string
	// Limit, when positive, bounds the results (counting "*").
	Limit int
	// Contextual relationships hold for this request only (contextual.go).
	Contextual []rel.Relationship
}

// ExpandNode is a node of a permission's expansion tree.
type ExpandNode struct {
	// Object and Relation this node expands.
	Object   rel.Object
	Relation string
	// Op is "union", "intersection", "exclusion" for an operation node, or
	// "leaf" for the subjects found directly.
	Op       string
	Children []*ExpandNode
	// Subjects are the direct subjects of a leaf, with their caveat and
	// expiration.
	Subjects []rel.Relationship
	// Via, on a child of an arrow node, is the relationship the arrow
	// followed to reach this node's object; when it is caveated, everything
	// found below holds only under that caveat.
	Via *rel.Relationship
}

// Errors the engine reports; test with errors.Is.
var (
	ErrUnknownType       = errors.New("unknown object type")
	ErrUnknownRelation   = errors.New("unknown relation or permission")
	ErrNoSchema          = errors.New("no schema has been written")
	ErrMaxDepth          = errors.New("maximum recursion depth exceeded")
	ErrRevisionGone      = errors.New("revision is no longer retained by the engine")
	ErrRevisionAhead     = errors.New("revision has not been applied by the engine yet")
	ErrAmbiguousAgent    = errors.New("agent acts for several principals; name one with on_behalf_of")
	ErrInvalidContext    = errors.New("invalid caveat context")
	ErrInvalidOnBehalfOf = errors.New("invalid on_behalf_of")
)

// DefaultMaxDepth bounds recursion through usersets and arrows, as
// SpiceDB's default dispatch depth does.
const DefaultMaxDepth = 50

// DefaultMaxChain bounds the acts_for links followed for an agent.
const DefaultMaxChain = 8

func unknownRelationError(typ, relation string) error {
	return fmt.Errorf("%w: %q has no relation or permission %q", ErrUnknownRelation, typ, relation)
}
