package authzen

import (
	"github.com/mandate-authz/mandate/server/op"
	"github.com/mandate-authz/mandate/store/rel"
)

// approvalHint is a decision's approval context: for a denial an approval
// would lift (approval required by an escalation rule, or only the agent's
// own grant missing), the request to file at mandate.v1's ApprovalService
// (POST /v1/approvals/request) and the evaluation's id to quote; for a
// decision a grant allowed, the grant's id. After the OpenID AuthZEN
// access-request profile's requestable denial.
type approvalHint struct {
	Required     bool             `json:"required,omitempty"`
	Rule         string           `json:"rule,omitempty"`
	Description  string           `json:"description,omitempty"`
	EvaluationID string           `json:"evaluation_id,omitempty"`
	Request      *approvalRequest `json:"request,omitempty"`
	GrantID      string           `json:"grant_id,omitempty"`
}

// approvalRequest is what to file for the approval.
type approvalRequest struct {
	Agent      entityRef `json:"agent"`
	Principal  entityRef `json:"principal"`
	Resource   entityRef `json:"resource"`
	Permission string    `json:"permission"`
	Task       string    `json:"task,omitempty"`
}

func approvalHintOf(a *op.ApprovalOutcome) *approvalHint {
	ref := func(o rel.Object) entityRef { return entityRef{Type: o.Type, ID: o.ID} }
	h := &approvalHint{Required: a.Required, Rule: a.Rule, Description: a.Description, EvaluationID: a.EvaluationID, GrantID: a.GrantID}
	if a.Required {
		h.Request = &approvalRequest{Agent: ref(a.Request.Agent), Principal: ref(a.Request.Principal),
			Resource: ref(a.Request.Resource), Permission: a.Request.Permission, Task: a.Task}
	}
	return h
}
