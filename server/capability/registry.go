package capability

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/mandate-authz/mandate/store"
)

// MintedKind is the store record kind of the minted-token registry.
const MintedKind = "capability.minted"

// Minted is a registry entry: what a token is, never the token itself (its
// bytes are a bearer secret and stay with whoever it was handed to). Mint
// registers every token it signs; a token attenuated offline is not in the
// registry (no server saw it) until a check on a server allows it, which
// registers it then (server/op).
type Minted struct {
	ID string `json:"id"`
	// Parent is the id of the token it was attenuated from; empty for a
	// minted token.
	Parent    string    `json:"parent,omitempty"`
	RootID    string    `json:"root_id"`
	Holder    string    `json:"holder"`
	Principal string    `json:"principal"`
	Rights    []Right   `json:"rights"`
	Expires   time.Time `json:"expires"`
	Task      string    `json:"task,omitempty"`
	MaxUses   int       `json:"max_uses,omitempty"`
	IssuedAt  time.Time `json:"issued_at"`
	// Blocks and Holders are the ids of its blocks and the holders they
	// name, first to last: what a revocation may match.
	Blocks  []string `json:"blocks"`
	Holders []string `json:"holders"`
	// Revision is the store revision that registered it.
	Revision store.Revision `json:"-"`
}

// MintedOf describes t as a registry entry.
func MintedOf(t *Token) Minted {
	last := t.Blocks[len(t.Blocks)-1]
	m := Minted{
		ID: t.ID(), Parent: last.Parent, RootID: t.RootID(), Holder: t.Holder(), Principal: t.Principal(),
		Rights: t.Rights(), Expires: t.Expires(), Task: t.Task(), IssuedAt: last.IssuedAt, Holders: t.Holders(),
	}
	for _, b := range t.Blocks {
		m.Blocks = append(m.Blocks, b.ID)
		if b.MaxUses > 0 && (m.MaxUses == 0 || b.MaxUses < m.MaxUses) {
			m.MaxUses = b.MaxUses
		}
	}
	return m
}

// MintedFilter selects registry entries: every set field must match.
type MintedFilter struct {
	Principal string
	Holder    string
	Task      string
}

func (f MintedFilter) match(m Minted) bool {
	return (f.Principal == "" || f.Principal == m.Principal) &&
		(f.Holder == "" || f.Holder == m.Holder) &&
		(f.Task == "" || f.Task == m.Task)
}

// Register records t in the registry (again: a no-op change of the same
// entry) and returns the revision.
func Register(ctx context.Context, w RecordWriter, t *Token) (store.Revision, error) {
	data, err := json.Marshal(MintedOf(t))
	if err != nil {
		return 0, fmt.Errorf("registering token %s: %w", t.ID(), err)
	}
	rev, err := w.WriteRecords(ctx, []store.RecordMutation{{Op: store.Touch, Record: store.Record{Kind: MintedKind, ID: t.ID(), Data: data}}})
	if err != nil {
		return 0, fmt.Errorf("registering token %s: %w", t.ID(), err)
	}
	return rev, nil
}

// ListMinted returns the registered tokens matching f that have not
// expired at now, soonest expiry first, and the revision they are current
// at. It reads the store, so it is as fresh as the store's head.
func ListMinted(ctx context.Context, rs RecordStore, f MintedFilter, now time.Time) ([]Minted, store.Revision, error) {
	recs, rev, err := rs.ReadRecords(ctx, MintedKind)
	if err != nil {
		return nil, 0, fmt.Errorf("listing tokens: %w", err)
	}
	var out []Minted
	for _, rec := range recs {
		m, err := decodeMinted(rec)
		if err != nil {
			return nil, 0, fmt.Errorf("listing tokens: %w", err)
		}
		if f.match(m) && now.Before(m.Expires) {
			out = append(out, m)
		}
	}
	slices.SortFunc(out, func(a, b Minted) int { return cmp.Or(a.Expires.Compare(b.Expires), cmp.Compare(a.ID, b.ID)) })
	return out, rev, nil
}

func decodeMinted(rec store.Record) (Minted, error) {
	var m Minted
	if err := json.Unmarshal(rec.Data, &m); err != nil {
		return Minted{}, fmt.Errorf("token record %s: %w", rec.ID, err)
	}
	if m.ID != rec.ID {
		return Minted{}, fmt.Errorf("token record %s describes %s", rec.ID, m.ID)
	}
	m.Revision = rec.Revision
	return m, nil
}

// PruneMinted deletes the registry entries that expired before now (at
// most store.MaxRecordMutations at one new revision; none: no write) and
// returns how many it deleted.
func PruneMinted(ctx context.Context, rs RecordStore, now time.Time) (int, error) {
	recs, _, err := rs.ReadRecords(ctx, MintedKind)
	if err != nil {
		return 0, fmt.Errorf("pruning tokens: %w", err)
	}
	var muts []store.RecordMutation
	for _, rec := range recs {
		m, err := decodeMinted(rec)
		// An entry that cannot be read lists nothing; it goes too.
		if err == nil && now.Before(m.Expires) {
			continue
		}
		muts = append(muts, store.RecordMutation{Op: store.Delete, Record: store.Record{Kind: MintedKind, ID: rec.ID}})
		if len(muts) == store.MaxRecordMutations {
			break
		}
	}
	if len(muts) == 0 {
		return 0, nil
	}
	if _, err := rs.WriteRecords(ctx, muts); err != nil {
		return 0, fmt.Errorf("pruning tokens: %w", err)
	}
	return len(muts), nil
}

// RevokedMinted reports whether a revocation in the set matches the
// registered token m (as Revoked does a token).
func (s *RevocationSet) RevokedMinted(m Minted) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if _, ok := s.byID[string(RevokePrincipal)+":"+m.Principal]; ok {
		return true
	}
	if _, ok := s.byID[string(RevokeTask)+":"+m.Task]; ok && m.Task != "" {
		return true
	}
	for _, id := range m.Blocks {
		if _, ok := s.byID[string(RevokeToken)+":"+id]; ok {
			return true
		}
	}
	for _, h := range m.Holders {
		if _, ok := s.byID[string(RevokeHolder)+":"+h]; ok {
			return true
		}
	}
	return false
}
