package audit

import (
	"encoding/json"
	"fmt"
	"unicode/utf8"
)

// Field caps bound what one record can hold, so that no request, however
// large, makes a large record: a caller without a key could otherwise fill
// the disk with the requests it sends. A value over its cap is cut (at a
// UTF-8 boundary) and ends in a marker giving its original size. Caps count
// bytes as stored, after JSON escaping, so a record is never larger than
// MaxRecordBytes.
const (
	// CapShort bounds identifiers: request ID, caller, source, transport,
	// chain ID, code, update, subject kind, decision, each missing
	// parameter.
	CapShort = 256
	// CapObject bounds objects and names: resource, permission, subject,
	// on_behalf_of, principal, caveat, reason, each chain member.
	CapObject = 1 << 10
	// CapText bounds free text: error and detail.
	CapText = 4 << 10
	// CapContext bounds the encoded (JSON) caveat context. A larger one is
	// replaced by a note of its size; a refused call (Unauthenticated or
	// PermissionDenied before its handler ran) records no context at all.
	CapContext = 8 << 10
	// CapChain bounds the delegation chain members recorded (the first
	// CapChain-1 and the last; the engine follows at most 8 acts_for
	// links), CapList the event's list of missing parameters and
	// CapLinkList each member's (the last entry kept counts those cut).
	CapChain    = 16
	CapList     = 32
	CapLinkList = 8
	// MaxRecordBytes bounds a stored record: every field at its cap, plus
	// field names and the hash.
	MaxRecordBytes = 128 << 10
)

// refusedCodes are the codes of calls refused before their handler ran: their
// requests come from anyone and are recorded without context.
var refusedCodes = map[string]bool{"Unauthenticated": true, "PermissionDenied": true}

// capString cuts s so that its JSON encoding (quotes aside) is at most
// limit bytes, marker included.
func capString(s string, limit int) string {
	if len(s) <= limit/6 { // fits however it escapes
		return s
	}
	marker := fmt.Sprintf("…[%d bytes cut]", len(s))
	width, cut := 0, -1
	for i := 0; i < len(s); {
		w, size := escapedWidth(s[i:])
		if cut < 0 && width+w > limit-len(marker) {
			cut = i
		}
		width += w
		if width > limit {
			return s[:cut] + marker
		}
		i += size
	}
	return s
}

// escapedWidth returns the bytes the first character of s takes once
// encoded as appendString does, and its size in s.
func escapedWidth(s string) (width, size int) {
	c := s[0]
	if c < utf8.RuneSelf {
		switch {
		case c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t' || c == '\b' || c == '\f':
			return 2, 1
		case c < 0x20 || c == '<' || c == '>' || c == '&':
			return 6, 1
		}
		return 1, 1
	}
	r, size := utf8.DecodeRuneInString(s)
	if (r == utf8.RuneError && size == 1) || r == '\u2028' || r == '\u2029' {
		return 6, size
	}
	return size, size
}

func capList(vs []string, limit, entries int) []string {
	if len(vs) == 0 {
		return vs
	}
	// Over the cap, the last entry kept counts the rest (so capping twice
	// changes nothing).
	n := len(vs)
	if n > entries {
		n = entries - 1
	}
	out := make([]string, 0, n+1)
	for _, v := range vs[:n] {
		out = append(out, capString(v, limit))
	}
	if len(vs) > n {
		out = append(out, fmt.Sprintf("…[%d more]", len(vs)-n))
	}
	return out
}

// applyCaps cuts every field of ev to its cap, in place.
func applyCaps(ev *Event) {
	for _, f := range []*string{&ev.RequestID, &ev.Caller, &ev.Source, &ev.Transport, &ev.ChainID, &ev.Code, &ev.Update} {
		*f = capString(*f, CapShort)
	}
	ev.SubjectKind = Kind(capString(string(ev.SubjectKind), CapShort))
	ev.Decision = Decision(capString(string(ev.Decision), CapShort))
	ev.Operation = Operation(capString(string(ev.Operation), CapShort))
	for _, f := range []*string{&ev.Resource, &ev.Permission, &ev.Subject, &ev.OnBehalfOf, &ev.Principal, &ev.Caveat, &ev.Reason} {
		*f = capString(*f, CapObject)
	}
	ev.Error = capString(ev.Error, CapText)
	ev.Detail = capString(ev.Detail, CapText)
	ev.Missing = capList(ev.Missing, CapShort, CapList)
	ev.Contextual = capList(ev.Contextual, CapObject, CapList)
	if len(ev.Chain) > 0 {
		chain := ev.Chain
		if len(chain) > CapChain {
			// Keep the agent checked and its principal's end of the chain.
			chain = append(append([]Link(nil), chain[:CapChain-1]...), chain[len(chain)-1])
		}
		out := make([]Link, len(chain))
		for i, l := range chain {
			out[i] = Link{Subject: capString(l.Subject, CapObject), Grant: Decision(capString(string(l.Grant), CapShort)),
				Link: Decision(capString(string(l.Link), CapShort)), Missing: capList(l.Missing, CapShort, CapLinkList), Failed: l.Failed}
		}
		ev.Chain = out
	}
	switch {
	case len(ev.Context) == 0:
	case refusedCodes[ev.Code]:
		ev.Context = nil
	default:
		if b, err := json.Marshal(ev.Context); err == nil && len(b) > CapContext {
			ev.Context = map[string]any{"context_cut": fmt.Sprintf("a context of %d bytes (over the %d-byte cap) was not recorded", len(b), CapContext)}
		}
	}
}
