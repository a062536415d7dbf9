// Package approval keeps the requests agents file when a check needs a
// person's consent, and the grants people give by approving them. A grant
// is scoped to exactly one (agent, principal, resource, permission),
// expires, and may be single-use; requests and grants are store records,
// so they survive restarts and reach every replica through the change
// stream.
//
// The types here are the contract between the approval service, its
// gRPC/REST facade, the CLI and the web inbox (server/inbox).
package approval

import (
	"time"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// Status is where a request stands.
type Status string

// Statuses of a request. Pending is the only one that can change by a
// person's decision; Approved becomes Redeemed (single-use grants),
// Expired or Revoked.
const (
	Pending  Status = "pending"
	Approved Status = "approved"
	Denied   Status = "denied"
	Expired  Status = "expired"
	Redeemed Status = "redeemed"
	Revoked  Status = "revoked"
)

// Request is one approval request and, once approved, its grant.
type Request struct {
	ID string
	// Agent asks; Principal is the person (or agent) it acts for; Chain is
	// the delegation chain the check named, agent first, principal last.
	Agent     rel.Object
	Principal rel.Object
	Chain     []rel.Object
	// Resource and Permission are what the agent asks to do.
	Resource   rel.Object
	Permission string
	Task       string
	// Reason is the agent's own text for the person.
	Reason string
	// Rule names the escalation rule that matched; empty when the request
	// resolves a denial (the agent's own grant is missing).
	Rule string
	// EvaluationID is the id of the check answered "approval required"
	// that the agent quotes (the audit trail's evaluation_id), if any.
	EvaluationID string
	// MaxDuration is the matched rule's bound on the grant (0: the
	// server's maximum).
	MaxDuration time.Duration
	// Duration is the grant duration the agent asks for.
	Duration time.Duration
	Created  time.Time
	// Expires is when a pending request lapses.
	Expires time.Time
	Status  Status

	// Set by the decision.
	Decider rel.Object
	Note    string
	Decided time.Time
	// GrantExpires is when an approved grant stops allowing.
	GrantExpires time.Time
	SingleUse    bool
	// Redeemed is when a single-use grant was used.
	Redeemed time.Time

	// Revision is the store revision that wrote this version.
	Revision store.Revision
}

// Filter selects requests for List and Watch; zero fields match all.
// Approver selects the requests a person may decide (the chain's principal,
// or someone who holds the permission on the resource now).
type Filter struct {
	Principal *rel.Object
	Approver  *rel.Object
	Agent     *rel.Object
	Status    Status
	Task      string
}

// Decision is a person's answer to a pending request.
type Decision struct {
	// Approver is the verified person deciding.
	Approver rel.Object
	// Duration of the grant (approve only): zero takes the default, more
	// than the configured maximum is refused.
	Duration  time.Duration
	SingleUse bool
	Note      string
}
