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
// bytes before JSON escaping.
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
	// CapChain-1 and the last), and CapList each list of missing
	// parameters (the last entry kept counts those cut).
	CapChain = 32
	CapList  = 32
)

// refusedCodes are the codes of calls refused before their handler ran: their
// requests come from anyone and are recorded without context.
var refusedCodes = map[string]bool{"Unauthenticated": true, "PermissionDenied": true}

// capString cuts s to at most limit bytes, marker included.
func capString(s string, limit int) string {
	if len(s) <= limit {
		return s
	}
	marker := fmt.Sprintf("…[%d bytes cut]", len(s))
	cut := max(limit-len(marker), 0)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + marker
}

func capList(vs []string, limit int) []string {
	if len(vs) == 0 {
		return vs
	}
	// Over the cap, the last entry kept counts the rest (so capping twice
	// changes nothing).
	n := len(vs)
	if n > CapList {
		n = CapList - 1
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
	ev.Missing = capList(ev.Missing, CapShort)
	if len(ev.Chain) > 0 {
		chain := ev.Chain
		if len(chain) > CapChain {
			// Keep the agent checked and its principal's end of the chain.
			chain = append(append([]Link(nil), chain[:CapChain-1]...), chain[len(chain)-1])
		}
		out := make([]Link, len(chain))
		for i, l := range chain {
			out[i] = Link{Subject: capString(l.Subject, CapObject), Grant: Decision(capString(string(l.Grant), CapShort)),
				Link: Decision(capString(string(l.Link), CapShort)), Missing: capList(l.Missing, CapShort), Failed: l.Failed}
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
