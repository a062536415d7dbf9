package capability

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mandate-authz/mandate/feed"
	"github.com/mandate-authz/mandate/store"
)

// RevocationKind is the store record kind of revocations.
const RevocationKind = "capability.revocation"

// RevokeBy says what a revocation matches.
type RevokeBy string

// What a revocation can match. A token is revoked when any of its blocks
// matches: revoking a token's id revokes every token derived from it, since
// derived tokens carry its block; revoking a holder revokes every token any
// block of which names that holder.
const (
	RevokeToken     RevokeBy = "token"
	RevokeHolder    RevokeBy = "holder"
	RevokePrincipal RevokeBy = "principal"
	RevokeTask      RevokeBy = "task"
)

// Revocation is one durable revocation.
type Revocation struct {
	By    RevokeBy `json:"by"`
	Value string   `json:"value"`
	// Reason is free text for the audit.
	Reason    string    `json:"reason,omitempty"`
	RevokedAt time.Time `json:"revoked_at"`
	// Until, when set, is when the revocation stops mattering (the revoked
	// token's expiry): PruneRevocations deletes it after then.
	Until time.Time `json:"until,omitzero"`
	// Revision is the store revision that wrote the revocation.
	Revision store.Revision `json:"-"`
}

func (r Revocation) recordID() string { return string(r.By) + ":" + r.Value }

func (r Revocation) validate() error {
	switch r.By {
	case RevokeToken:
		if len(r.Value) != 32 || strings.Trim(r.Value, "0123456789abcdef") != "" {
			return fmt.Errorf("token id %q: expected 32 lowercase hex digits", r.Value)
		}
	case RevokeHolder, RevokePrincipal:
		if _, err := parseObject(r.Value); err != nil {
			return fmt.Errorf("%s: %w", r.By, err)
		}
	case RevokeTask:
		if r.Value == "" || len(r.Value) > MaxTaskLength {
			return fmt.Errorf("task: expected 1 to %d bytes", MaxTaskLength)
		}
	default:
		return fmt.Errorf("revoke by %q: expected token, holder, principal or task", r.By)
	}
	return nil
}

// ErrInvalidRevocation refuses a revocation that names nothing valid.
var ErrInvalidRevocation = errors.New("invalid revocation")

// RecordWriter is the part of a store that Revoke needs.
type RecordWriter interface {
	WriteRecords(ctx context.Context, mutations []store.RecordMutation) (store.Revision, error)
}

// Revoke stores revocations durably at one new revision and returns it: a
// check at least as fresh as that revision is denied on every replica.
// Revoking what is already revoked keeps the first revocation's time and
// reason but is still a new revision.
func Revoke(ctx context.Context, w RecordWriter, revs ...Revocation) (store.Revision, error) {
	if len(revs) == 0 {
		return 0, fmt.Errorf("revoke: %w: nothing to revoke", ErrInvalidRevocation)
	}
	muts := make([]store.RecordMutation, len(revs))
	for i, r := range revs {
		if err := r.validate(); err != nil {
			return 0, fmt.Errorf("revoke: %w: %w", ErrInvalidRevocation, err)
		}
		if r.RevokedAt.IsZero() {
			r.RevokedAt = time.Now().UTC()
		}
		data, err := json.Marshal(r)
		if err != nil {
			return 0, fmt.Errorf("revoke: %w", err)
		}
		muts[i] = store.RecordMutation{Op: store.Touch, Record: store.Record{Kind: RevocationKind, ID: r.recordID(), Data: data}}
	}
	rev, err := w.WriteRecords(ctx, muts)
	if err != nil {
		return 0, fmt.Errorf("revoke: %w", err)
	}
	return rev, nil
}

// RevocationSet is the in-memory set of revocations a replica checks on
// every call, fed by the store's change stream: it is a feed.RecordSet the
// server's follower keeps current. It knows the revision it has applied
// through, so that a check answered at a revision waits until the set has
// caught up with it (or fails closed: a set the follower stopped feeding
// never catches up). Safe for concurrent use.
type RevocationSet struct {
	mu       sync.RWMutex
	byID     map[string]Revocation // by recordID
	progress feed.Progress
}

// NewRevocationSet returns an empty set at revision zero.
func NewRevocationSet() *RevocationSet {
	return &RevocationSet{byID: make(map[string]Revocation)}
}

// Kinds is the one record kind the set keeps (feed.RecordSet).
func (s *RevocationSet) Kinds() []string { return []string{RevocationKind} }

// Load replaces the set with the revocation records current at rev.
func (s *RevocationSet) Load(records []store.Record, rev store.Revision) error {
	byID := make(map[string]Revocation, len(records))
	for _, rec := range records {
		if rec.Kind != RevocationKind {
			continue
		}
		r, err := decodeRevocation(rec)
		if err != nil {
			return err
		}
		byID[rec.ID] = r
	}
	s.mu.Lock()
	s.byID = byID
	s.mu.Unlock()
	s.progress.Advance(rev)
	return nil
}

// Apply applies one change of the stream: its revocation records, and the
// revision it brings the set to. A change that fails leaves the set as it
// was, at the revision before.
func (s *RevocationSet) Apply(ch store.Change) error {
	if ch.Revision <= s.progress.Revision() {
		return nil
	}
	decoded := make([]Revocation, len(ch.Records))
	for i, u := range ch.Records {
		if u.Record.Kind != RevocationKind || u.Op == store.Delete {
			continue
		}
		r, err := decodeRevocation(u.Record)
		if err != nil {
			return err
		}
		decoded[i] = r
	}
	s.mu.Lock()
	for i, u := range ch.Records {
		switch {
		case u.Record.Kind != RevocationKind:
		case u.Op == store.Delete:
			delete(s.byID, u.Record.ID)
		default:
			s.byID[u.Record.ID] = decoded[i]
		}
	}
	s.mu.Unlock()
	s.progress.Advance(ch.Revision)
	return nil
}

func decodeRevocation(rec store.Record) (Revocation, error) {
	var r Revocation
	if err := json.Unmarshal(rec.Data, &r); err != nil {
		return Revocation{}, fmt.Errorf("revocation record %s: %w", rec.ID, err)
	}
	if r.recordID() != rec.ID {
		return Revocation{}, fmt.Errorf("revocation record %s describes %s", rec.ID, r.recordID())
	}
	r.Revision = rec.Revision
	return r, nil
}

// Revision is the store revision the set has applied through.
func (s *RevocationSet) Revision() store.Revision { return s.progress.Revision() }

// WaitFor waits until the set has applied rev, or ctx ends.
func (s *RevocationSet) WaitFor(ctx context.Context, rev store.Revision) error {
	if err := s.progress.WaitFor(ctx, rev); err != nil {
		return fmt.Errorf("revocations %w", err)
	}
	return nil
}

// Revoked returns the revocation matching t, with the index of the block
// it matched, first by block order.
func (s *RevocationSet) Revoked(t *Token) (Revocation, int, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if len(s.byID) == 0 {
		return Revocation{}, -1, false
	}
	if r, ok := s.byID[string(RevokePrincipal)+":"+t.Principal()]; ok {
		return r, 0, true
	}
	for i, b := range t.Blocks {
		if r, ok := s.byID[string(RevokeToken)+":"+b.ID]; ok {
			return r, i, true
		}
		if b.Holder != "" {
			if r, ok := s.byID[string(RevokeHolder)+":"+b.Holder]; ok {
				return r, i, true
			}
		}
		if b.Task != "" {
			if r, ok := s.byID[string(RevokeTask)+":"+b.Task]; ok {
				return r, i, true
			}
		}
	}
	return Revocation{}, -1, false
}

// List returns every revocation, oldest revision first.
func (s *RevocationSet) List() []Revocation {
	s.mu.RLock()
	out := make([]Revocation, 0, len(s.byID))
	for _, r := range s.byID {
		out = append(out, r)
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b Revocation) int {
		if a.Revision != b.Revision {
			return int(a.Revision) - int(b.Revision)
		}
		return strings.Compare(a.recordID(), b.recordID())
	})
	return out
}

// RevocationSource is what Follow reads: the store's records and change
// stream.
type RevocationSource interface {
	ReadRecords(ctx context.Context, kind string) ([]store.Record, store.Revision, error)
	Watch(ctx context.Context, after store.Revision) iter.Seq2[store.Change, error]
}

// Follow loads the current revocations into s and applies the change
// stream until ctx ends. It returns the error that ended the stream (nil
// when ctx did); callers restart it, and s fails closed meanwhile since its
// revision stops advancing.
func Follow(ctx context.Context, src RevocationSource, s *RevocationSet) error {
	recs, rev, err := src.ReadRecords(ctx, RevocationKind)
	if err != nil {
		return fmt.Errorf("loading revocations: %w", err)
	}
	if err := s.Load(recs, rev); err != nil {
		return fmt.Errorf("loading revocations: %w", err)
	}
	for ch, err := range src.Watch(ctx, rev) {
		if err != nil {
			return fmt.Errorf("following revocations: %w", err)
		}
		if err := s.Apply(ch); err != nil {
			return fmt.Errorf("following revocations: %w", err)
		}
	}
	return nil
}

// PruneRevocations deletes the revocations whose Until has passed: the
// tokens they revoked have expired, so no check needs them. It returns how
// many it deleted (at one new revision; none: no write).
func PruneRevocations(ctx context.Context, rs interface {
	RecordWriter
	ReadRecords(ctx context.Context, kind string) ([]store.Record, store.Revision, error)
}, now time.Time) (int, error) {
	recs, _, err := rs.ReadRecords(ctx, RevocationKind)
	if err != nil {
		return 0, fmt.Errorf("pruning revocations: %w", err)
	}
	var muts []store.RecordMutation
	for _, rec := range recs {
		r, err := decodeRevocation(rec)
		if err != nil {
			return 0, fmt.Errorf("pruning revocations: %w", err)
		}
		if !r.Until.IsZero() && now.After(r.Until) {
			muts = append(muts, store.RecordMutation{Op: store.Delete, Record: store.Record{Kind: RevocationKind, ID: rec.ID}})
		}
		if len(muts) == store.MaxRecordMutations {
			break
		}
	}
	if len(muts) == 0 {
		return 0, nil
	}
	if _, err := rs.WriteRecords(ctx, muts); err != nil {
		return 0, fmt.Errorf("pruning revocations: %w", err)
	}
	return len(muts), nil
}
