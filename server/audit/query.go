package audit

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Query selects events. Empty fields match everything; set fields must all
// match.
type Query struct {
	// Agent (type:id) matches events whose subject is that agent, whose
	// delegation chain contains it, or whose resource it is (a delegation
	// written to it).
	Agent string
	// Principal (type:id) matches every decision tied to that person: its
	// own, and those of every agent acting for it through any chain.
	Principal string
	// Subject (type:id or type:id#relation) matches the event's subject.
	Subject string
	// Resource matches type:id exactly, or, given a bare type, every
	// resource of that type.
	Resource string
	// Caller is the name of a preshared key.
	Caller string
	// Operations and Decisions match any of their values.
	Operations []Operation
	Decisions  []Decision
	// Since (inclusive) and Until (exclusive) bound the event time.
	Since, Until time.Time
	// Limit bounds the events returned (DefaultLimit when 0; at most
	// MaxLimit).
	Limit int
	// After is a page's Next cursor: the query resumes after it.
	After string
	// Descending returns the newest events first.
	Descending bool
}

// Page is one page of a query's answer.
type Page struct {
	Events []*Event
	// Next resumes the query after the last event; empty when there is no
	// more.
	Next string
}

// Query limits. A page holds at most Limit events and, past its first
// event, at most MaxPageBytes of stored records; Next resumes after the
// last event returned either way.
const (
	DefaultLimit = 100
	MaxLimit     = 1000
	MaxPageBytes = 1 << 20
)

// Validate checks the query and applies the default limit. Errors name the
// field.
func (q *Query) Validate() error {
	switch {
	case q.Limit < 0:
		return fmt.Errorf("limit: %d is negative", q.Limit)
	case q.Limit > MaxLimit:
		return fmt.Errorf("limit: %d is over the maximum of %d", q.Limit, MaxLimit)
	case q.Limit == 0:
		q.Limit = DefaultLimit
	}
	for _, f := range []struct{ name, v string }{{"agent", q.Agent}, {"principal", q.Principal}} {
		if f.v != "" && !isObject(f.v) {
			return fmt.Errorf("%s: %q: expected type:id", f.name, f.v)
		}
	}
	if q.Subject != "" && !strings.Contains(q.Subject, ":") {
		return fmt.Errorf("subject: %q: expected type:id or type:id#relation", q.Subject)
	}
	for _, d := range q.Decisions {
		switch d {
		case Allowed, Denied, Conditional, OK, Error:
		default:
			return fmt.Errorf("decision: %q: expected allowed, denied, conditional, ok or error", d)
		}
	}
	if !q.Since.IsZero() && !q.Until.IsZero() && !q.Until.After(q.Since) {
		return fmt.Errorf("until: %s is not after since %s", q.Until.Format(time.RFC3339Nano), q.Since.Format(time.RFC3339Nano))
	}
	return nil
}

func isObject(s string) bool {
	typ, id, ok := strings.Cut(s, ":")
	return ok && typ != "" && id != "" && !strings.Contains(s, "#")
}

// Match reports whether ev satisfies the query's filters (not its paging).
func (q *Query) Match(ev *Event) bool {
	if !q.Since.IsZero() && ev.Time.Before(q.Since) {
		return false
	}
	if !q.Until.IsZero() && !ev.Time.Before(q.Until) {
		return false
	}
	if q.Principal != "" && ev.Principal != q.Principal {
		return false
	}
	if q.Subject != "" && ev.Subject != q.Subject {
		return false
	}
	if q.Caller != "" && ev.Caller != q.Caller {
		return false
	}
	if q.Resource != "" {
		if strings.Contains(q.Resource, ":") {
			if ev.Resource != q.Resource {
				return false
			}
		} else if typ, _, _ := strings.Cut(ev.Resource, ":"); typ != q.Resource {
			return false
		}
	}
	if len(q.Operations) > 0 && !slices.Contains(q.Operations, ev.Operation) {
		return false
	}
	if len(q.Decisions) > 0 && !slices.Contains(q.Decisions, ev.Decision) {
		return false
	}
	if q.Agent != "" && ev.Resource != q.Agent && !slices.Contains(ev.Agents(), q.Agent) {
		return false
	}
	return true
}
