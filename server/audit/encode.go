package audit

import (
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"
)

// appendPrefix appends an event's record up to (not including) its hash
// field: the JSON of Event without the closing brace, in Event's field order
// with its omitempty rules. It is encoding/json's output for the same event
// (which TestEncoderMatchesEncodingJSON checks) written without reflection,
// since it runs for every audited call.
func appendPrefix(b []byte, ev *Event) ([]byte, error) {
	b = append(b, `{"v":`...)
	b = strconv.AppendInt(b, int64(ev.V), 10)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, ev.Seq, 10)
	b = appendStrField(b, "chain_id", ev.ChainID, true)
	b = append(b, `,"time":"`...)
	b = ev.Time.AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	b = appendStrField(b, "request_id", ev.RequestID, true)
	b = appendStrField(b, "caller", ev.Caller, true)
	b = appendStrField(b, "source", ev.Source, true)
	b = appendStrField(b, "transport", ev.Transport, true)
	b = appendStrField(b, "operation", string(ev.Operation), false)
	b = appendStrField(b, "resource", ev.Resource, true)
	b = appendStrField(b, "permission", ev.Permission, true)
	b = appendStrField(b, "subject", ev.Subject, true)
	b = appendStrField(b, "subject_kind", string(ev.SubjectKind), true)
	b = appendStrField(b, "on_behalf_of", ev.OnBehalfOf, true)
	b = appendStrField(b, "principal", ev.Principal, true)
	b = appendStrField(b, "token_id", ev.TokenID, true)
	b = appendStrField(b, "approval_id", ev.ApprovalID, true)
	b = appendStrField(b, "evaluation_id", ev.EvaluationID, true)
	b = appendStrField(b, "rule", ev.Rule, true)
	b = appendStrField(b, "decider", ev.Decider, true)
	if len(ev.Chain) > 0 {
		b = append(b, `,"chain":[`...)
		for i, l := range ev.Chain {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"subject":`...)
			b = appendString(b, l.Subject)
			b = appendStrField(b, "grant", string(l.Grant), true)
			b = appendStrField(b, "link", string(l.Link), true)
			b = appendStrList(b, "missing", l.Missing)
			if l.Failed {
				b = append(b, `,"failed":true`...)
			}
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	if len(ev.Context) > 0 {
		ctx, err := json.Marshal(ev.Context)
		if err != nil {
			return b, err
		}
		b = append(b, `,"context":`...)
		b = append(b, ctx...)
	}
	b = appendStrField(b, "decision", string(ev.Decision), false)
	b = appendStrField(b, "reason", ev.Reason, true)
	b = appendStrList(b, "missing", ev.Missing)
	if ev.ResolvableByApproval {
		b = append(b, `,"resolvable_by_approval":true`...)
	}
	b = appendStrField(b, "code", ev.Code, true)
	b = appendStrField(b, "error", ev.Error, true)
	if ev.Revision != 0 {
		b = append(b, `,"revision":`...)
		b = strconv.AppendUint(b, ev.Revision, 10)
	}
	b = appendStrField(b, "update", ev.Update, true)
	b = appendStrField(b, "caveat", ev.Caveat, true)
	if ev.ExpiresAt != nil {
		b = append(b, `,"expires_at":"`...)
		b = ev.ExpiresAt.AppendFormat(b, time.RFC3339Nano)
		b = append(b, '"')
	}
	if ev.Count != 0 {
		b = append(b, `,"count":`...)
		b = strconv.AppendInt(b, ev.Count, 10)
	}
	b = appendStrField(b, "detail", ev.Detail, true)
	b = appendStrField(b, "prev_hash", ev.PrevHash, false)
	return b, nil
}

func appendStrField(b []byte, name, v string, omitEmpty bool) []byte {
	if omitEmpty && v == "" {
		return b
	}
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, '"', ':')
	return appendString(b, v)
}

func appendStrList(b []byte, name string, vs []string) []byte {
	if len(vs) == 0 {
		return b
	}
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, `":[`...)
	for i, v := range vs {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, v)
	}
	return append(b, ']')
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string exactly as encoding/json does:
// HTML-sensitive characters, control characters, U+2028 and U+2029 escaped,
// invalid UTF-8 replaced by U+FFFD.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
