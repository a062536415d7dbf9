// Package audit records Mandate's audit trail: one event per decision, lookup,
// relationship change and schema change, naming the calling service, the
// subject, whether it is a person or an agent, the agent's whole delegation
// chain up to the person it acts for, the (redacted) task context, the
// decision and its reason, and the revision.
//
// Events pass through a Log, which writes them asynchronously and in batches
// to one Sink (a JSON-lines file with size-based rotation, a writer such as
// stdout, or a PostgreSQL table), under an overflow policy (block, or drop
// with a counted and logged loss that the trail itself records). Every record
// carries the SHA-256 hash of its predecessor, so Verify finds the first
// edited, inserted or missing record. The package also answers queries over
// a trail and exports events as OCSF API Activity.
package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// FormatVersion is the record format written in every record's "v" field.
const FormatVersion = 1

// Operation names what was audited: one of the Op constants.
type Operation string

// Operations audited. Relationship writes get one event per update;
// CheckBulk one per item.
const (
	OpCheck               Operation = "check"
	OpCheckBulk           Operation = "check_bulk"
	OpLookupResources     Operation = "lookup_resources"
	OpLookupSubjects      Operation = "lookup_subjects"
	OpExpand              Operation = "expand"
	OpWriteRelationships  Operation = "write_relationships"
	OpDeleteRelationships Operation = "delete_relationships"
	OpImportRelationships Operation = "import_relationships"
	OpReadRelationships   Operation = "read_relationships"
	OpExportRelationships Operation = "export_relationships"
	OpWatch               Operation = "watch"
	OpWriteSchema         Operation = "write_schema"
	OpReadSchema          Operation = "read_schema"
	OpValidateSchema      Operation = "validate_schema"
	OpAuditQuery          Operation = "audit_query"
	// The steps of an approval request (server/approval).
	OpApprovalRequested Operation = "approval_requested"
	OpApprovalApproved  Operation = "approval_approved"
	OpApprovalDenied    Operation = "approval_denied"
	OpApprovalExpired   Operation = "approval_expired"
	OpApprovalRedeemed  Operation = "approval_redeemed"
	OpApprovalRevoked   Operation = "approval_revoked"
	// Capability tokens (mandate.v1 TokenService): events name the token's
	// id, never its text.
	OpTokenMint            Operation = "token_mint"
	OpTokenRevoke          Operation = "token_revoke"
	OpTokenList            Operation = "token_list"
	OpTokenInspect         Operation = "token_inspect"
	OpTokenListRevocations Operation = "token_list_revocations"
	// OpEventsDropped is written by the Log itself when the drop policy
	// discarded events: Count says how many, since the previous record.
	OpEventsDropped Operation = "audit_events_dropped"
	// OpRetention is written by the Log before retention deletes the
	// oldest files of a trail: Count is the last record deleted (the
	// first kept follows it), Detail that record's hash, Reason age or
	// size. Verify accepts a trail starting after seq 1 only when such a
	// record, later in the chain, accounts for the missing prefix.
	OpRetention Operation = "audit_retention"
)

// Decision is an event's outcome: allowed, denied or conditional for a
// check; ok or error for anything else (and error for a failed check).
type Decision string

// Decisions.
const (
	Allowed     Decision = "allowed"
	Denied      Decision = "denied"
	Conditional Decision = "conditional"
	OK          Decision = "ok"
	Error       Decision = "error"
)

// Kind says what a subject is.
type Kind string

// Subject kinds: a person (any object whose type is not an agent type),
// an agent (a type with an acts_for relation), or a userset
// (group:eng#member).
const (
	Person  Kind = "person"
	Agent   Kind = "agent"
	Userset Kind = "userset"
)

// Link is one member of a delegation chain, from the agent checked to the
// principal it acts for, with the member's own result.
type Link struct {
	// Subject is type:id.
	Subject string `json:"subject"`
	// Grant is the member's own check of the permission.
	Grant Decision `json:"grant,omitempty"`
	// Link is the outcome of the acts_for edge to the next member (empty
	// for the principal).
	Link Decision `json:"link,omitempty"`
	// Missing lists caveat parameters this member lacked.
	Missing []string `json:"missing,omitempty"`
	// Failed marks the first failing member of a denied chain.
	Failed bool `json:"failed,omitempty"`
}

// Event is one audit record. Field order is the record's JSON field order;
// PrevHash and Hash come last so that a record's hash covers every other
// byte of its line.
type Event struct {
	V   int    `json:"v"`
	Seq uint64 `json:"seq"`
	// Chain names the hash chain the record belongs to when a sink holds
	// several (one per server writing a PostgreSQL table); empty in files.
	ChainID string    `json:"chain_id,omitempty"`
	Time    time.Time `json:"time"`
	// RequestID is the client's x-request-id, or one the server assigned.
	RequestID string `json:"request_id,omitempty"`
	// Caller is the name of the preshared key the call presented (never
	// the key).
	Caller string `json:"caller,omitempty"`
	// Source is the client's address (for REST, as the gateway saw it).
	Source    string    `json:"source,omitempty"`
	Transport string    `json:"transport,omitempty"`
	Operation Operation `json:"operation"`
	// Resource is type:id, or just a type for LookupResources and filters.
	Resource   string `json:"resource,omitempty"`
	Permission string `json:"permission,omitempty"`
	// Subject is type:id or type:id#relation (a type for LookupSubjects).
	Subject     string `json:"subject,omitempty"`
	SubjectKind Kind   `json:"subject_kind,omitempty"`
	OnBehalfOf  string `json:"on_behalf_of,omitempty"`
	// Principal is the person a decision ties to: the end of an agent's
	// chain, or the subject itself when it is a person.
	Principal string `json:"principal,omitempty"`
	// TokenID is the capability token a check was made with (its id, not
	// its text, which is a credential).
	TokenID string `json:"token_id,omitempty"`
	// ApprovalID names the approval request (and its grant) an approval
	// step is about, or the grant that allowed a check.
	ApprovalID string `json:"approval_id,omitempty"`
	// EvaluationID identifies a check answered "approval required"; the
	// agent's request quotes it.
	EvaluationID string `json:"evaluation_id,omitempty"`
	// Rule is the escalation rule that matched.
	Rule string `json:"rule,omitempty"`
	// Decider is the person who approved, denied or revoked.
	Decider string `json:"decider,omitempty"`
	// Chain runs from the agent checked to its principal.
	Chain []Link `json:"chain,omitempty"`
	// Contextual names the request's contextual relationships (held for
	// that request only): key, caveat name and expiration, never the
	// caveat's context.
	Contextual []string `json:"contextual,omitempty"`
	// Context is the request's caveat context (a check's task context, or
	// a written relationship's caveat context), with the values of the
	// configured keys replaced by keyed hashes.
	Context              map[string]any `json:"context,omitempty"`
	Decision             Decision       `json:"decision"`
	Reason               string         `json:"reason,omitempty"`
	Missing              []string       `json:"missing,omitempty"`
	ResolvableByApproval bool           `json:"resolvable_by_approval,omitempty"`
	// Code and Error describe a failed operation (the gRPC status).
	Code  string `json:"code,omitempty"`
	Error string `json:"error,omitempty"`
	// Revision is the store revision the answer was computed at, or the
	// write produced.
	Revision uint64 `json:"revision,omitempty"`
	// Update is create, touch or delete for a relationship write.
	Update    string     `json:"update,omitempty"`
	Caveat    string     `json:"caveat,omitempty"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	// Count is the number of results returned, relationships deleted or
	// imported, or events dropped.
	Count int64 `json:"count,omitempty"`
	// Detail is operation-specific text: a delete's filter, a schema's
	// digest.
	Detail   string `json:"detail,omitempty"`
	PrevHash string `json:"prev_hash"`
	Hash     string `json:"hash,omitempty"`
}

// hashField is what follows a record's prefix: `,"hash":"<64 hex>"}`.
const (
	hashFieldOpen = `,"hash":"`
	hashHexLen    = 2 * sha256.Size
	hashSuffixLen = len(hashFieldOpen) + hashHexLen + len(`"}`)
)

// encode fills in Seq, V and PrevHash, computes the record's hash and
// appends its line (with a trailing newline) to buf. The hash is the SHA-256
// of the line's bytes before `,"hash":`, so verification needs no canonical
// form: it hashes the bytes as stored.
func encode(buf []byte, ev *Event, seq uint64, prev string) ([]byte, error) {
	ev.V = FormatVersion
	ev.Seq = seq
	ev.PrevHash = prev
	ev.Hash = ""
	start := len(buf)
	buf, err := appendPrefix(buf, ev)
	if err != nil {
		return buf[:start], fmt.Errorf("encoding audit event %d (%s): %w", seq, ev.Operation, err)
	}
	sum := sha256.Sum256(buf[start:])
	var hexSum [hashHexLen]byte
	hex.Encode(hexSum[:], sum[:])
	ev.Hash = string(hexSum[:])
	buf = append(buf, hashFieldOpen...)
	buf = append(buf, hexSum[:]...)
	buf = append(buf, '"', '}', '\n')
	return buf, nil
}

// Errors of decoding a record; Verify reports them with the record's place.
var (
	ErrMalformed = errors.New("not an audit record")
	ErrAltered   = errors.New("record altered: its hash does not match its content")
)

// Decode parses one record (without its newline) and checks its own hash.
// It returns ErrMalformed when the line is not a record at all and
// ErrAltered, with the decoded event, when its content does not match its
// hash.
func Decode(line []byte) (*Event, error) {
	line = bytes.TrimRight(line, "\r")
	n := len(line)
	if n < hashSuffixLen+2 || line[0] != '{' || !bytes.HasSuffix(line, []byte(`"}`)) ||
		!bytes.Equal(line[n-hashSuffixLen:n-hashSuffixLen+len(hashFieldOpen)], []byte(hashFieldOpen)) {
		return nil, fmt.Errorf("%w: expected a JSON object ending in %s<hash>\"}", ErrMalformed, hashFieldOpen)
	}
	var ev Event
	if err := json.Unmarshal(line, &ev); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if ev.V != FormatVersion {
		return nil, fmt.Errorf("%w: unsupported format version %d (expected %d)", ErrMalformed, ev.V, FormatVersion)
	}
	sum := sha256.Sum256(line[:n-hashSuffixLen])
	if hex.EncodeToString(sum[:]) != ev.Hash {
		return &ev, ErrAltered
	}
	return &ev, nil
}

// Agents returns every agent an event involves: its subject when that is an
// agent, and every member of its chain but the principal. (A chain that
// failed before reaching a person has no principal: all its members are
// agents.)
func (e *Event) Agents() []string {
	var out []string
	if e.SubjectKind == Agent {
		out = append(out, e.Subject)
	}
	for i, l := range e.Chain {
		if i == len(e.Chain)-1 && l.Subject == e.Principal {
			break
		}
		if l.Subject != e.Subject || e.SubjectKind != Agent {
			out = append(out, l.Subject)
		}
	}
	return out
}
