package audit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Place locates a record: a file and line, or a table row.
type Place struct {
	File string
	Line int
	// Table and Chain locate a PostgreSQL record (File is empty).
	Table, Chain string
	Seq          uint64
}

func (p Place) String() string {
	if p.File != "" {
		return fmt.Sprintf("%s:%d", p.File, p.Line)
	}
	s := p.Table
	if p.Chain != "" {
		s += " chain " + p.Chain
	}
	return fmt.Sprintf("%s seq %d", s, p.Seq)
}

// Problem is a finding of Verify.
type Problem struct {
	At  Place
	Msg string
}

func (p Problem) String() string { return p.At.String() + ": " + p.Msg }

// Report is the outcome of verifying a trail.
type Report struct {
	Records int
	Files   int
	// Chains maps each chain (by chain_id; "" in a file trail) to its last
	// valid record.
	Heads map[string]Head
	// Failure is the first broken, altered or missing record; nil when the
	// trail verifies.
	Failure *Problem
	// Warnings do not fail verification: a torn last line (a write cut
	// short by a crash), a single file whose chain starts in an earlier
	// file.
	Warnings []Problem
}

// Head is the last record of a chain.
type Head struct {
	Seq  uint64
	Hash string
	At   Place
}

// OK reports whether the trail verified.
func (r *Report) OK() bool { return r.Failure == nil }

// chainVerifier checks records one by one, per chain.
type chainVerifier struct {
	report *Report
	// partialStart accepts a chain whose first record is not seq 1 (one
	// file of a rotated trail).
	partialStart bool
	heads        map[string]*Head
	// starts are chains that begin after seq 1, until an audit_retention
	// record accounts for the deleted prefix.
	starts map[string]*retainedStart
}

// retainedStart is where a chain with a deleted prefix begins.
type retainedStart struct {
	at       Place
	seq      uint64
	prevHash string
	// by is the retention record that accounts for it (nil until seen).
	by *Place
}

func newChainVerifier(partialStart bool) *chainVerifier {
	return &chainVerifier{report: &Report{Heads: map[string]Head{}}, partialStart: partialStart, heads: map[string]*Head{},
		starts: map[string]*retainedStart{}}
}

// fail records the first failure; it returns false to stop. A chain start
// no retention record has accounted for yet comes first: the records after
// a break cannot account for it.
func (v *chainVerifier) fail(at Place, format string, args ...any) bool {
	for _, st := range v.starts {
		if st.by == nil {
			v.report.Failure = &Problem{At: st.at, Msg: st.missing()}
			return false
		}
	}
	v.report.Failure = &Problem{At: at, Msg: fmt.Sprintf(format, args...)}
	return false
}

func (st *retainedStart) missing() string {
	return fmt.Sprintf("records missing before this line: the trail starts at seq %d, expected seq 1, and no audit_retention record accounts for records 1 to %d (an earlier file or its first records were removed)", st.seq, st.seq-1)
}

// check verifies one record (decoded with Decode, err its result); it
// returns false once verification has failed.
func (v *chainVerifier) check(at Place, ev *Event, err error) bool {
	if errors.Is(err, ErrAltered) {
		at.Seq = ev.Seq
		return v.fail(at, "record seq %d altered: its hash does not match its content", ev.Seq)
	}
	if err != nil {
		return v.fail(at, "%v", err)
	}
	at.Seq = ev.Seq
	v.report.Records++
	h, seen := v.heads[ev.ChainID]
	switch {
	case !seen && ev.Seq == 1:
		if ev.PrevHash != "" {
			return v.fail(at, "record seq 1 must start its chain (empty prev_hash), but names a predecessor")
		}
	case !seen && v.partialStart:
		v.report.Warnings = append(v.report.Warnings, Problem{At: at, Msg: fmt.Sprintf(
			"the chain starts at seq %d here; records 1 to %d are in earlier files, not checked (verify the directory to check them)", ev.Seq, ev.Seq-1)})
	case !seen:
		// Retention may have deleted the records before it; a later
		// audit_retention record must say so (checked at the end).
		v.starts[ev.ChainID] = &retainedStart{at: at, seq: ev.Seq, prevHash: ev.PrevHash}
	case ev.Seq > h.Seq+1:
		if ev.Seq == h.Seq+2 {
			return v.fail(at, "record missing before this line: expected seq %d, found seq %d (record seq %d, after %s, was removed)", h.Seq+1, ev.Seq, h.Seq+1, h.At)
		}
		return v.fail(at, "records missing before this line: expected seq %d, found seq %d (records %d to %d, after %s, were removed)", h.Seq+1, ev.Seq, h.Seq+1, ev.Seq-1, h.At)
	case ev.Seq <= h.Seq:
		return v.fail(at, "record out of order: expected seq %d, found seq %d (a record was inserted or duplicated)", h.Seq+1, ev.Seq)
	case ev.PrevHash != h.Hash:
		return v.fail(at, "chain broken: prev_hash does not match the hash of the record before it (%s, seq %d): that record was altered or replaced", h.At, h.Seq)
	}
	if h == nil {
		h = &Head{}
		v.heads[ev.ChainID] = h
	}
	*h = Head{Seq: ev.Seq, Hash: ev.Hash, At: at}
	if st := v.starts[ev.ChainID]; st != nil && st.by == nil && ev.Operation == OpRetention && ev.Count >= 0 {
		// The record names the last record deleted and its hash; when that
		// is the record just before the start, the hashes must agree. (A
		// crash between the record and the deletion leaves more records
		// than it names deleted: harmless.)
		through := uint64(ev.Count)
		if through+1 > st.seq || (through+1 == st.seq && ev.Detail == st.prevHash) {
			st.by = &at
		}
	}
	return true
}

func (v *chainVerifier) finish() Report {
	if v.report.Failure == nil {
		for _, st := range v.starts {
			if st.by == nil {
				v.report.Failure = &Problem{At: st.at, Msg: st.missing()}
				break
			}
			v.report.Warnings = append(v.report.Warnings, Problem{At: st.at, Msg: fmt.Sprintf(
				"the trail starts at seq %d, following hash %s: records 1 to %d were deleted by retention (%s)", st.seq, st.prevHash, st.seq-1, st.by)})
		}
	}
	for id, h := range v.heads {
		v.report.Heads[id] = *h
	}
	return *v.report
}

// Verify checks a trail directory (every file, in order, as one chain per
// chain_id) or a single trail file. It returns an error only when the trail
// cannot be read; a broken trail is a Report with a Failure naming the first
// broken, altered or missing record.
//
// A hash chain shows edits, insertions and removals anywhere but at the end:
// records cut off the end of the newest file leave a shorter valid chain.
// Compare the head with the one the server logs at rotation and shutdown
// ("audit trail closed", head_seq, head_hash) to catch that.
func Verify(ctx context.Context, path string) (Report, error) {
	st, err := os.Stat(path)
	if err != nil {
		return Report{}, fmt.Errorf("audit trail: %w", err)
	}
	files, err := trailPaths(path)
	if err != nil {
		return Report{}, err
	}
	v := newChainVerifier(!st.IsDir())
	if st.IsDir() {
		// A file's name is the seq of its first record: a mismatch means a
		// file was renamed or its first records removed.
		listed, err := listTrail(path)
		if err != nil {
			return Report{}, err
		}
		names := map[string]uint64{}
		for _, f := range listed {
			names[f.path] = f.firstSeq
		}
		return verifyFiles(ctx, v, files, names)
	}
	return verifyFiles(ctx, v, files, nil)
}

func verifyFiles(ctx context.Context, v *chainVerifier, files []string, firstSeqs map[string]uint64) (Report, error) {
	for _, path := range files {
		if err := ctx.Err(); err != nil {
			return Report{}, err
		}
		v.report.Files++
		name := filepath.Base(path)
		first := true
		var pendingTorn *Problem
		goOn, err := scanFile(path, func(n int, text []byte, complete bool) (bool, error) {
			at := Place{File: name, Line: n}
			if len(text) == 0 && complete {
				return v.fail(at, "empty line: not an audit record"), nil
			}
			ev, derr := Decode(text)
			if !complete && derr != nil {
				// A torn last line: a write cut short. Later files, if
				// any, must chain on from the record before it.
				pendingTorn = &Problem{At: at, Msg: "incomplete last line (a write was cut short, e.g. by a crash); not a record"}
				return true, nil
			}
			if first && derr == nil && firstSeqs != nil {
				if want, ok := firstSeqs[path]; ok && want != ev.Seq {
					return v.fail(at, "file name says its first record is seq %d but it holds seq %d (a file was renamed or its first records removed)", want, ev.Seq), nil
				}
			}
			first = false
			return v.check(at, ev, derr), nil
		})
		if err != nil {
			return Report{}, err
		}
		if !goOn {
			return v.finish(), nil
		}
		if pendingTorn != nil {
			v.report.Warnings = append(v.report.Warnings, *pendingTorn)
		}
	}
	return v.finish(), nil
}
