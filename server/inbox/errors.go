package inbox

import "errors"

// The approval service's refusals the inbox words for people. They become
// approval.ErrNotFound, ErrNotAllowed, ErrNotPending and ErrInvalid once
// the approval service is merged.
var (
	errNotFound   = errors.New("approval request not found")
	errNotAllowed = errors.New("not allowed to decide this approval request")
	errNotPending = errors.New("approval request is not pending")
	errInvalid    = errors.New("invalid approval request")
)
