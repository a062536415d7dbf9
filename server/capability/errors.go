package capability

import (
	"errors"
	"fmt"
)

// Reason is a reason code for a token-based decision, reported in
// explanations and the audit beside the engine's own codes.
type Reason string

// Reason codes. The first group are defects of the token itself; the rest
// are denials of a well-formed token for one request.
const (
	ReasonNone          Reason = ""
	ReasonMalformed     Reason = "token_malformed"
	ReasonTooLong       Reason = "token_too_long"
	ReasonUnknownKey    Reason = "token_unknown_key"
	ReasonBadSignature  Reason = "token_bad_signature"
	ReasonUnknownFacts  Reason = "token_unknown_facts"
	ReasonWidening      Reason = "token_widening"
	ReasonUnknownType   Reason = "token_unknown_type"
	ReasonExpired       Reason = "token_expired"
	ReasonRevoked       Reason = "token_revoked"
	ReasonWrongHolder   Reason = "token_wrong_holder"
	ReasonOutOfScope    Reason = "token_out_of_scope"
	ReasonTaskMismatch  Reason = "token_task_mismatch"
	ReasonCheckFailed   Reason = "token_check_failed"
	ReasonTimeout       Reason = "token_datalog_timeout"
	ReasonUsesExhausted Reason = "token_uses_exhausted"
	// ReasonRevocationsBehind: this replica has not yet applied the
	// revocations up to the revision the check answered at.
	ReasonRevocationsBehind Reason = "revocations_behind"
	// ReasonPrincipalDenied: the principal's live chain does not hold the
	// permission; Decision.EngineReason says why when the engine knows.
	ReasonPrincipalDenied Reason = "principal_denied"
)

// Invalid reports whether r is a defect of the token (bad input) rather
// than a denial of a sound token.
func (r Reason) Invalid() bool {
	switch r {
	case ReasonMalformed, ReasonTooLong, ReasonUnknownKey, ReasonBadSignature, ReasonUnknownFacts, ReasonWidening:
		return true
	}
	return false
}

// Sentinel errors, wrapped by Error.
var (
	ErrUnknownKey = errors.New("unknown root key")
	ErrWidening   = errors.New("block widens its parent")
)

// Error is a token that does not verify or does not allow a request.
type Error struct {
	Reason Reason
	// Block is the index of the block at fault (0: authority), -1 for the
	// token as a whole.
	Block int
	Err   error
}

func (e *Error) Error() string {
	if e.Block >= 0 {
		return fmt.Sprintf("capability token: %s: block %d: %v", e.Reason, e.Block, e.Err)
	}
	return fmt.Sprintf("capability token: %s: %v", e.Reason, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

func malformed(block int, err error) *Error {
	return &Error{Reason: ReasonMalformed, Block: block, Err: err}
}

// reasonOf extracts the reason of err (ReasonMalformed for foreign errors).
func reasonOf(err error) (Reason, int) {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason, e.Block
	}
	return ReasonMalformed, -1
}
