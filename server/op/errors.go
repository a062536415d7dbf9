package op

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/mandate-authz/mandate/store"
)

// Errors the core adds to the engine's and the store's (which pass through
// wrapped, to be tested with errors.Is). Each API maps them to its own codes.
var (
	// ErrUnavailable: the operation cannot be served now (the engine has
	// not applied the revision asked for within the wait, the store cannot
	// be reached, the audit trail refuses the event); retry.
	ErrUnavailable = errors.New("unavailable")
)

// unavailableError is an ErrUnavailable whose message is its own.
type unavailableError struct{ msg string }

func (e *unavailableError) Error() string        { return e.msg }
func (e *unavailableError) Is(target error) bool { return target == ErrUnavailable }

func unavailable(format string, args ...any) error {
	return &unavailableError{msg: fmt.Sprintf(format, args...)}
}

// TokenAheadError reports a revision token naming a revision the store has
// not reached: it was not issued by this store.
type TokenAheadError struct {
	// Field names the request field the token came from.
	Field          string
	Revision, Head store.Revision
}

func (e *TokenAheadError) Error() string {
	return fmt.Sprintf("%s: the token names revision %d but the store is at %d; it was not issued by this store", e.Field, e.Revision, e.Head)
}

// Limit names one of Limits' bounds.
type Limit string

// Limits a request can exceed.
const (
	LimitCheckBulkItems Limit = "check_bulk_items"
	LimitWriteUpdates   Limit = "write_updates"
	LimitPreconditions  Limit = "preconditions"
	LimitLookup         Limit = "lookup_limit"
	LimitRead           Limit = "read_limit"
	LimitDelete         Limit = "delete_limit"
	LimitBulkBatch      Limit = "bulk_batch"
	LimitContextual     Limit = "contextual_relationships"
)

// LimitError reports a request over one of the core's limits.
type LimitError struct {
	Limit    Limit
	Got, Max int
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("%s: %d is over the maximum of %d", e.Limit, e.Got, e.Max)
}

// HistoryFullError refuses a write because the engine already keeps
// MaxHistoryVersions superseded versions; it succeeds again once revision
// retention releases older history, about RetryAfter from now.
type HistoryFullError struct {
	Held, Adding, Max int
	RetryAfter        time.Duration
}

func (e *HistoryFullError) Error() string {
	return fmt.Sprintf("the server keeps %d superseded relationship versions for history and this write could add %d, over its maximum of %d; "+
		"writes resume once revision retention releases older history", e.Held, e.Adding, e.Max)
}

// historyRoom refuses a write of n updates that could take the superseded
// versions the engine keeps over the limit. The engine's count lags writes
// it has not applied yet, so concurrent writes can overshoot by their own
// updates; the bound is on memory, not exact.
func (c *Core) historyRoom(n int) error {
	if c.lim.MaxHistoryVersions <= 0 {
		return nil
	}
	if held := c.eng.Superseded(); held+n > c.lim.MaxHistoryVersions {
		after := c.lim.HistoryRetryAfter
		if after <= 0 {
			after = time.Second
		}
		return &HistoryFullError{Held: held, Adding: n, Max: c.lim.MaxHistoryVersions, RetryAfter: after}
	}
	return nil
}

func (c *Core) within(l Limit, got, max int) error {
	if got > max {
		return &LimitError{Limit: l, Got: got, Max: max}
	}
	return nil
}

// storeUnreachable reports an error from losing the store's database rather
// than from the request: a network error, a connection cut mid-reply, a
// driver error raised before anything was sent (SafeToRetry, as pgx reports
// a closed connection), or the database refusing work while it shuts down
// or starts (SQLSTATE class 08 and 57P01-57P03). Clients may retry these;
// a write cut off mid-commit may or may not have committed.
func storeUnreachable(err error) bool {
	var netErr net.Error
	if errors.As(err, &netErr) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return true
	}
	var retry interface{ SafeToRetry() bool }
	if errors.As(err, &retry) && retry.SafeToRetry() {
		return true
	}
	var sql interface{ SQLState() string }
	if errors.As(err, &sql) {
		code := sql.SQLState()
		return strings.HasPrefix(code, "08") || code == "57P01" || code == "57P02" || code == "57P03"
	}
	return false
}

// StoreUnreachable reports whether err comes from losing the store (see
// storeUnreachable), for the APIs' error mapping.
func StoreUnreachable(err error) bool { return storeUnreachable(err) }
