package authzen

// The AuthZEN 1.0 wire shapes. Members the PDP does not use are accepted
// and ignored (the spec is extensible); members it uses must have the
// spec's JSON types.

type entity struct {
	Type       string         `json:"type"`
	ID         string         `json:"id"`
	Properties map[string]any `json:"properties,omitempty"`
}

type action struct {
	Name       string         `json:"name"`
	Properties map[string]any `json:"properties,omitempty"`
}

type evaluationRequest struct {
	Subject  *entity        `json:"subject"`
	Action   *action        `json:"action"`
	Resource *entity        `json:"resource"`
	Context  map[string]any `json:"context"`
}

type evaluationsRequest struct {
	Subject     *entity             `json:"subject"`
	Action      *action             `json:"action"`
	Resource    *entity             `json:"resource"`
	Context     map[string]any      `json:"context"`
	Evaluations []evaluationRequest `json:"evaluations"`
	Options     struct {
		EvaluationsSemantic string `json:"evaluations_semantic"`
	} `json:"options"`
}

// Semantics of an evaluations request (AuthZEN 1.0, Evaluations options).
const (
	executeAll          = "execute_all"
	denyOnFirstDeny     = "deny_on_first_deny"
	permitOnFirstPermit = "permit_on_first_permit"
)

// decision is one answer. Context is set only on a single evaluation:
// the interop compares evaluations items as exactly {"decision": bool}.
type decision struct {
	Decision bool             `json:"decision"`
	Context  *decisionContext `json:"context,omitempty"`
}

// decisionContext explains a decision: why it was denied and, for an
// agent, the delegation chain it was decided along.
type decisionContext struct {
	// Reason is a Mandate reason code: an agent's (no_delegation,
	// out_of_scope, ...) or conditional (the missing caveat context).
	Reason string `json:"reason,omitempty"`
	// Missing lists caveat parameters that would have decided it.
	Missing []string `json:"missing_context,omitempty"`
	// Chain runs from the agent to its principal.
	Chain []chainLink `json:"chain,omitempty"`
	// ResolvableByApproval: only the agents' own grants are missing.
	ResolvableByApproval bool `json:"resolvable_by_approval,omitempty"`
	// Approval is the approval hint: what to file for a decision a
	// person's approval would lift, or the grant that allowed it.
	Approval *approvalHint `json:"approval,omitempty"`
	// TokenID names the capability token the decision was made with.
	TokenID string `json:"token_id,omitempty"`
	// Contextual lists the contextual relationships the mapping made from
	// the request, which the decision was computed with.
	Contextual []string `json:"contextual_relationships,omitempty"`
}

type chainLink struct {
	Subject  entityRef `json:"subject"`
	Decision bool      `json:"decision"`
	Failed   bool      `json:"failed,omitempty"`
}

type evaluationsResponse struct {
	Evaluations []decision `json:"evaluations"`
}

type searchRequest struct {
	Subject  *entity        `json:"subject"`
	Action   *action        `json:"action"`
	Resource *entity        `json:"resource"`
	Context  map[string]any `json:"context"`
	Page     *struct {
		Token string `json:"token"`
		Limit int    `json:"limit"`
	} `json:"page"`
}

// entityRef is a search result: exactly type and id, in that order.
type entityRef struct {
	Type string `json:"type"`
	ID   string `json:"id"`
}

type actionRef struct {
	Name string `json:"name"`
}

type page struct {
	NextToken string `json:"next_token"`
}

type entitySearchResponse struct {
	Results []entityRef `json:"results"`
	Page    page        `json:"page"`
}

type actionSearchResponse struct {
	Results []actionRef `json:"results"`
	Page    page        `json:"page"`
}

type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Status  int    `json:"status"`
	Code    string `json:"code"`
	Message string `json:"message"`
}
