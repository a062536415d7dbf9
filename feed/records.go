package feed

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"

	"github.com/mandate-authz/mandate/store"
)

// RecordSet is in-memory server state built from store records (capability
// token revocations, approval grants) that the server's follower keeps
// current from the same change stream as the engine: it loads the set's
// kinds once, then applies every later change in revision order.
//
// A set must fail closed on its own: it is fed nothing after Load or Apply
// returns an error (until the follower reloads it), so whatever reads it
// should wait for the revision it needs (see Progress) rather than answer
// from a set that stopped.
type RecordSet interface {
	// Kinds are the record kinds the set keeps (exact kinds).
	Kinds() []string
	// Load replaces the set's contents with the kinds' records at rev.
	Load(records []store.Record, rev store.Revision) error
	// Apply applies one later change, in order. The follower passes every
	// change (so the set's revision advances with the stream) with Records
	// narrowed to the set's kinds and no relationship updates.
	Apply(ch store.Change) error
}

// RecordReader reads the current records of one kind and the revision
// they are current at (store.RecordStore's ReadRecords).
type RecordReader interface {
	ReadRecords(ctx context.Context, kind string) ([]store.Record, store.Revision, error)
}

// Records keeps record sets current from one change stream: the server's
// follower calls Load when it (re)starts following and Apply for every
// change, through ApplyChangesWith. Not safe for concurrent use: one
// follower drives it.
type Records struct {
	src  RecordReader
	sets []*recordFeed
	// failed is told about a set whose Load or Apply failed; that set is
	// fed nothing more until it is reloaded.
	failed func(set RecordSet, err error)
}

// NewRecords feeds sets from src's records. failed, when non-nil, is told
// when a set fails (the server logs it).
func NewRecords(src RecordReader, sets []RecordSet, failed func(RecordSet, error)) *Records {
	r := &Records{src: src, failed: failed}
	for _, s := range sets {
		kinds := make(map[string]bool)
		for _, k := range s.Kinds() {
			kinds[k] = true
		}
		r.sets = append(r.sets, &recordFeed{set: s, kinds: kinds})
	}
	return r
}

// Len is the number of sets fed.
func (r *Records) Len() int {
	if r == nil {
		return 0
	}
	return len(r.sets)
}

// A set is live (fed every change after loadedAt), pending (read but not
// loaded: waiting for the stream to reach the revisions its kinds were
// read at) or failed (fed nothing until reloaded).
type feedState int

const (
	stateFailed feedState = iota
	statePending
	stateLive
)

type recordKey struct{ kind, id string }

type recordFeed struct {
	set   RecordSet
	kinds map[string]bool
	state feedState
	// live: the revision the set was loaded at; later changes only.
	loadedAt store.Revision
	// pending: the revision each kind was read at, the latest of them,
	// and the records as read, brought forward by the changes between.
	readAt  map[string]store.Revision
	until   store.Revision
	pending map[recordKey]store.Record
}

// Load reads every set's kinds afresh (on every start or restart of the
// follower, so that nothing a stopped stream missed is kept). A set whose
// kinds were all read at one revision is loaded at once; otherwise it is
// loaded when the stream reaches the latest of those revisions, its
// records brought forward by the changes between (the store reads each
// kind at its own head). It fails only when the store does.
func (r *Records) Load(ctx context.Context) error {
	for _, f := range r.sets {
		if err := r.read(ctx, f); err != nil {
			return err
		}
	}
	return nil
}

func (r *Records) read(ctx context.Context, f *recordFeed) error {
	f.state, f.readAt, f.until = statePending, make(map[string]store.Revision, len(f.kinds)), 0
	f.pending = make(map[recordKey]store.Record)
	var first store.Revision
	same := true
	for i, kind := range slices.Sorted(maps.Keys(f.kinds)) {
		recs, rev, err := r.src.ReadRecords(ctx, kind)
		if err != nil {
			f.state = stateFailed
			return fmt.Errorf("reading %s records: %w", kind, err)
		}
		for _, rec := range recs {
			f.pending[recordKey{rec.Kind, rec.ID}] = rec
		}
		f.readAt[kind] = rev
		f.until = max(f.until, rev)
		if i == 0 {
			first = rev
		}
		same = same && rev == first
	}
	if same {
		r.load(f, f.until)
	}
	return nil
}

// load hands a pending set its records at rev.
func (r *Records) load(f *recordFeed, rev store.Revision) {
	recs := slices.Collect(maps.Values(f.pending))
	slices.SortFunc(recs, func(a, b store.Record) int {
		return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.ID, b.ID))
	})
	f.pending, f.readAt = nil, nil
	if err := f.set.Load(recs, rev); err != nil {
		r.fail(f, fmt.Errorf("loading at revision %d: %w", rev, err))
		return
	}
	f.state, f.loadedAt = stateLive, rev
}

func (r *Records) fail(f *recordFeed, err error) {
	f.state, f.pending, f.readAt = stateFailed, nil, nil
	if r.failed != nil {
		r.failed(f.set, err)
	}
}

// Apply feeds one change to every set. A failed set is read again when
// the change touches one of its kinds (a bad record may just have been
// fixed). It fails only when the store does.
func (r *Records) Apply(ctx context.Context, ch store.Change) error {
	for _, f := range r.sets {
		switch f.state {
		case stateFailed:
			if touches(f, ch) {
				if err := r.read(ctx, f); err != nil {
					return err
				}
			}
		case statePending:
			for _, u := range ch.Records {
				if f.kinds[u.Record.Kind] && ch.Revision > f.readAt[u.Record.Kind] {
					k := recordKey{u.Record.Kind, u.Record.ID}
					if u.Op == store.Delete {
						delete(f.pending, k)
					} else {
						f.pending[k] = u.Record
					}
				}
			}
			if ch.Revision >= f.until {
				r.load(f, ch.Revision)
			}
		case stateLive:
			if ch.Revision <= f.loadedAt {
				continue
			}
			narrow := store.Change{Revision: ch.Revision}
			for _, u := range ch.Records {
				if f.kinds[u.Record.Kind] {
					narrow.Records = append(narrow.Records, u)
				}
			}
			if err := f.set.Apply(narrow); err != nil {
				r.fail(f, fmt.Errorf("applying revision %d: %w", ch.Revision, err))
			}
		}
	}
	return nil
}

func touches(f *recordFeed, ch store.Change) bool {
	for _, u := range ch.Records {
		if f.kinds[u.Record.Kind] {
			return true
		}
	}
	return false
}
