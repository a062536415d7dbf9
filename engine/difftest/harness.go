package difftest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/mandate-authz/mandate/store/rel"
)

// Disagreement is one query on which the system under test and the oracle
// differ, or a case the system under test failed to load.
type Disagreement struct {
	Case *Case
	// Query is nil when the system under test refused to load a case the
	// oracle accepted.
	Query *Query
	// Want is the oracle's answer; Got the tested system's, or GotErr.
	Want, Got Answer
	GotErr    error
	// OracleErr is set when SpiceDB failed too (the tested system then
	// only has to fail cleanly: GotErr is a panic or a timeout).
	OracleErr error
	// Minimized is set on a disagreement Minimize shrank from the case
	// with Case.Seed.
	Minimized bool
	// Tolerated names the other SpiceDB API that gave the tested system's
	// answer, when SpiceDB contradicts itself on the query; "" otherwise.
	Tolerated string
}

// Class is a short label grouping disagreements of the same shape.
func (d *Disagreement) Class() string {
	if d.Tolerated != "" {
		return d.class() + " [tolerated: as spicedb's " + d.Tolerated + "]"
	}
	return d.class()
}

func (d *Disagreement) class() string {
	if d.Query == nil {
		return "load: rejected a case spicedb accepts"
	}
	ctx := ""
	if d.Query.Context != nil {
		ctx = " (with context)"
	}
	if d.OracleErr != nil {
		return fmt.Sprintf("%s%s: panic or timeout where spicedb failed", d.Query.Kind, ctx)
	}
	if d.GotErr != nil {
		if errors.Is(d.GotErr, ErrPanic) {
			return fmt.Sprintf("%s%s: panic", d.Query.Kind, ctx)
		}
		return fmt.Sprintf("%s%s: error where spicedb answered", d.Query.Kind, ctx)
	}
	if d.Query.Kind == QueryCheck {
		return fmt.Sprintf("%s%s: spicedb=%s got=%s", d.Query.Kind, ctx, d.Want.Outcome, d.Got.Outcome)
	}
	diff := d.Want.Diff(d.Got)
	if len(diff) == 0 {
		// Same memberships, differently named.
		return fmt.Sprintf("%s%s: names subjects differently", d.Query.Kind, ctx)
	}
	k := diff[0]
	return fmt.Sprintf("%s%s: spicedb=%s got=%s", d.Query.Kind, ctx, d.Want.Set[k], d.Got.Set[k])
}

// Replay is the command that reruns the disagreement's case.
func (d *Disagreement) Replay() string {
	return fmt.Sprintf("go test ./engine/difftest -run TestDifferential -difftest.seed=%d -difftest.cases=1", d.Case.Seed)
}

// Reproduction is the disagreement without its provenance: equal
// reproductions found from different seeds are the same finding.
func (d *Disagreement) Reproduction() string {
	q := "load"
	if d.Query != nil {
		q = d.Query.String() + " spicedb=" + d.Want.String() + " got=" + d.Got.String()
		if d.GotErr != nil {
			q += " error"
		}
	}
	return d.Case.SchemaText() + d.Case.RelationshipsText() + q
}

// String reports everything needed to reproduce the disagreement.
func (d *Disagreement) String() string {
	var b strings.Builder
	if d.Minimized {
		fmt.Fprintf(&b, "minimized reproduction [%s]\n  from case seed %d, replay the original: %s\n", d.Class(), d.Case.Seed, d.Replay())
	} else {
		fmt.Fprintf(&b, "case seed %d [%s]\n  replay: %s\n", d.Case.Seed, d.Class(), d.Replay())
	}
	if d.Query == nil {
		fmt.Fprintf(&b, "  load error: %v\n", d.GotErr)
	} else {
		fmt.Fprintf(&b, "  query:   %s\n", d.Query)
		if d.OracleErr != nil {
			fmt.Fprintf(&b, "  spicedb: error: %v\n", d.OracleErr)
		} else {
			fmt.Fprintf(&b, "  spicedb: %s\n", d.Want)
		}
		if d.GotErr != nil {
			fmt.Fprintf(&b, "  got:     error: %v\n", d.GotErr)
		} else {
			fmt.Fprintf(&b, "  got:     %s\n", d.Got)
			if d.Query.Kind != QueryCheck {
				for _, k := range d.Want.Diff(d.Got) {
					fmt.Fprintf(&b, "    %s: spicedb=%s got=%s\n", k, d.Want.Set[k], d.Got.Set[k])
				}
			}
		}
	}
	b.WriteString("schema:\n")
	b.WriteString(indent(d.Case.SchemaText()))
	b.WriteString("relationships:\n")
	b.WriteString(indent(d.Case.RelationshipsText()))
	return b.String()
}

func indent(s string) string {
	var b strings.Builder
	for line := range strings.SplitSeq(strings.TrimRight(s, "\n"), "\n") {
		if line == "" {
			b.WriteString("\n")
			continue
		}
		b.WriteString("  " + line + "\n")
	}
	return b.String()
}

// CaseResult is the outcome of comparing one case.
type CaseResult struct {
	// Discarded is set when the oracle refused the case.
	Discarded error
	// Compared counts queries both systems answered; Skipped those the
	// oracle failed (by reason).
	Compared    int
	Skipped     int
	SkipReasons map[string]int
	// SkipExamples holds one skipped query per reason.
	SkipExamples map[string]string
	// Disagreements lists every query that differs.
	Disagreements []*Disagreement
}

// RunCase loads the case into both systems and compares every query.
func RunCase(ctx context.Context, c *Case, oracle, tested Builder) CaseResult {
	res := CaseResult{SkipReasons: map[string]int{}, SkipExamples: map[string]string{}}
	schema := c.SchemaText()
	want, err := build(ctx, oracle, schema, c.Rels)
	if err != nil {
		res.Discarded = err
		return res
	}
	// A timed-out system may still be busy: closing it would block.
	timedOut := false
	defer func() {
		if !timedOut {
			want.Close()
		}
	}()
	got, err := build(ctx, tested, schema, c.Rels)
	if err != nil {
		res.Disagreements = append(res.Disagreements, &Disagreement{Case: c, GotErr: err})
		return res
	}
	defer func() {
		if !timedOut {
			got.Close()
		}
	}()
	skip := func(q *Query, reason string) {
		res.Skipped++
		res.SkipReasons[reason]++
		if _, ok := res.SkipExamples[reason]; !ok {
			res.SkipExamples[reason] = fmt.Sprintf("seed %d: %s", c.Seed, q)
		}
	}
	for i := range c.Queries {
		q := &c.Queries[i]
		if timedOut {
			// A system may be spinning on the abandoned query; what it
			// answers now would be slow and tell nothing new.
			skip(q, "after a timeout in the same case")
			continue
		}
		pool := c.Pools[q.SubjectType]
		w, err := askWithin(ctx, want, *q, pool)
		if err != nil {
			timedOut = errors.Is(err, ErrTimeout)
			skip(q, skipReason(err))
			// Nothing to compare, but the tested system must still
			// answer or fail cleanly where SpiceDB fails (cycles).
			if !timedOut {
				_, gerr := askWithin(ctx, got, *q, pool)
				if errors.Is(gerr, ErrTimeout) || errors.Is(gerr, ErrPanic) {
					timedOut = errors.Is(gerr, ErrTimeout)
					res.Disagreements = append(res.Disagreements, &Disagreement{Case: c, Query: q, GotErr: gerr, OracleErr: err})
				}
			}
			continue
		}
		res.Compared++
		g, gerr := askWithin(ctx, got, *q, pool)
		if errors.Is(gerr, ErrTimeout) {
			timedOut = true
		}
		if gerr != nil || !w.Equal(g) {
			d := &Disagreement{Case: c, Query: q, Want: w, Got: g, GotErr: gerr}
			if gerr == nil {
				d.Tolerated = corroborate(ctx, want, c, *q, w, g)
			}
			res.Disagreements = append(res.Disagreements, d)
		}
	}
	return res
}

// corroborate looks for the tested system's answer g in SpiceDB's other
// APIs. SpiceDB is not always self-consistent (see the package doc): where
// its check and its lookups contradict each other, matching one of them is
// the best any system can do. Every element on which w and g differ is one
// question (resource, permission, subject); each must be answered as g does
// by at least one SpiceDB API other than the one queried. It returns those
// APIs, or "" when some element is not corroborated.
func corroborate(ctx context.Context, oracle System, c *Case, q Query, w, g Answer) string {
	type element struct {
		resource rel.Object
		subject  rel.Subject
		want     Outcome
	}
	var elems []element
	switch q.Kind {
	case QueryCheck:
		elems = append(elems, element{q.Resource, q.Subject, g.Outcome})
	case QueryLookupResources:
		for _, k := range w.Diff(g) {
			elems = append(elems, element{rel.Object{Type: q.ResourceType, ID: k}, q.Subject, g.Set[k]})
		}
	case QueryLookupSubjects:
		for _, k := range w.Diff(g) {
			id := k
			if k == rel.Wildcard {
				id = freshID // the wildcard is what a subject nobody named gets
			}
			elems = append(elems, element{q.Resource, rel.Subject{Type: q.SubjectType, ID: id, Relation: q.SubjectRelation}, g.Set[k]})
		}
	}
	apis := map[string]bool{}
	for _, e := range elems {
		answers := map[string]func() (Outcome, error){
			"check": func() (Outcome, error) {
				a, err := askWithin(ctx, oracle, Query{Kind: QueryCheck, Resource: e.resource, Permission: q.Permission, Subject: e.subject, Context: q.Context}, nil)
				return a.Outcome, err
			},
			"lookup-resources": func() (Outcome, error) {
				a, err := askWithin(ctx, oracle, Query{Kind: QueryLookupResources, ResourceType: e.resource.Type, Permission: q.Permission, Subject: e.subject, Context: q.Context}, nil)
				return a.Set[e.resource.ID], err
			},
			"lookup-subjects": func() (Outcome, error) {
				pool := c.Pools[e.subject.Type]
				a, err := askWithin(ctx, oracle, Query{Kind: QueryLookupSubjects, Resource: e.resource, Permission: q.Permission, SubjectType: e.subject.Type, SubjectRelation: e.subject.Relation, Context: q.Context}, pool)
				return a.Set[e.subject.ID], err
			},
		}
		found := false
		for _, api := range []string{"check", "lookup-resources", "lookup-subjects"} {
			if api == q.Kind.String() || (api == "lookup-subjects" && e.subject.ID == freshID) {
				continue
			}
			if o, err := answers[api](); err == nil && o == e.want {
				apis[api] = true
				found = true
				break
			}
		}
		if !found {
			return ""
		}
	}
	return strings.Join(slices.Sorted(maps.Keys(apis)), "+")
}

// QueryTimeout bounds one query. SpiceDB's development dispatcher can spin
// for minutes on cycles (it has no memoization), so a query runs in its own
// goroutine, abandoned when the time is up.
const QueryTimeout = 10 * time.Second

// ErrTimeout reports a query abandoned after QueryTimeout.
var ErrTimeout = errors.New("query timed out")

// ErrPanic reports a system that panicked on a query or while loading.
var ErrPanic = errors.New("panicked")

func recovered(r any) error {
	return fmt.Errorf("%w: %v\n%s", ErrPanic, r, debug.Stack())
}

// build runs a builder, turning a panic into an error.
func build(ctx context.Context, b Builder, schema string, rels []rel.Relationship) (s System, err error) {
	defer func() {
		if r := recover(); r != nil {
			s, err = nil, recovered(r)
		}
	}()
	return b(ctx, schema, rels)
}

func askWithin(ctx context.Context, s System, q Query, pool []string) (Answer, error) {
	ctx, cancel := context.WithTimeout(ctx, QueryTimeout)
	defer cancel()
	type result struct {
		a   Answer
		err error
	}
	done := make(chan result, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				done <- result{err: recovered(r)}
			}
		}()
		a, err := Ask(ctx, s, q, pool)
		done <- result{a, err}
	}()
	select {
	case r := <-done:
		return r.a, r.err
	case <-ctx.Done():
		return Answer{}, fmt.Errorf("%w after %v: %s", ErrTimeout, QueryTimeout, q)
	}
}

// WithoutTestFlags returns args without go test's -test.* flags, for a test
// binary's TestMain to set as os.Args once flags are parsed. SpiceDB's
// spiceerrors.MustBugf, which reports a bug in SpiceDB itself, panics when
// os.Args holds such a flag and returns an error otherwise, as deployed. It
// panics in goroutines SpiceDB's dispatcher starts, where no recover in the
// harness can reach, so a single case ended the whole run ("check hint for
// resource ID ..., which already exists", seed 5002492). Without the flags
// the oracle fails that query with a "BUG:" error instead, which RunCase
// skips and counts like any other oracle error.
func WithoutTestFlags(args []string) []string {
	out := make([]string, 0, len(args))
	for _, a := range args {
		if !strings.HasPrefix(a, "-test.") {
			out = append(out, a)
		}
	}
	return out
}

// skipReason groups oracle errors for the summary.
func skipReason(err error) string {
	msg := err.Error()
	switch {
	case errors.Is(err, ErrTimeout):
		return "timeout (spicedb hung)"
	case strings.Contains(msg, "BUG: "):
		// SpiceDB's own bug report; its first line names it.
		msg = "spicedb bug: " + strings.TrimSpace(strings.SplitN(msg[strings.Index(msg, "BUG: ")+len("BUG: "):], "\n", 2)[0])
	case strings.Contains(msg, "depth"), strings.Contains(msg, "recursion"):
		return "max depth (cycle)"
	}
	if len(msg) > 80 {
		msg = msg[:80]
	}
	return msg
}

// sameDisagreement is the predicate Minimize preserves: the candidate case
// still disagrees on the query in the same way as d.
func sameDisagreement(ctx context.Context, d *Disagreement, c *Case, q *Query, oracle, tested Builder) (*Disagreement, bool) {
	schema := c.SchemaText()
	want, err := build(ctx, oracle, schema, c.Rels)
	if err != nil {
		return nil, false
	}
	defer want.Close()
	got, gerr := build(ctx, tested, schema, c.Rels)
	if d.Query == nil {
		if gerr == nil {
			got.Close()
			return nil, false
		}
		return &Disagreement{Case: c, GotErr: gerr}, true
	}
	if gerr != nil {
		return nil, false
	}
	defer got.Close()
	pool := c.Pools[q.SubjectType]
	w, err := askWithin(ctx, want, *q, pool)
	if d.OracleErr != nil {
		if err == nil {
			return nil, false
		}
		_, gerr := askWithin(ctx, got, *q, pool)
		return &Disagreement{Case: c, Query: q, GotErr: gerr, OracleErr: err}, errors.Is(gerr, ErrPanic) || errors.Is(gerr, ErrTimeout)
	}
	if err != nil {
		return nil, false
	}
	g, gerr := askWithin(ctx, got, *q, pool)
	nd := &Disagreement{Case: c, Query: q, Want: w, Got: g, GotErr: gerr}
	if gerr == nil && !w.Equal(g) {
		nd.Tolerated = corroborate(ctx, want, c, *q, w, g)
		if (nd.Tolerated == "") != (d.Tolerated == "") {
			return nil, false
		}
	}
	switch {
	case d.GotErr != nil:
		return nd, gerr != nil && errors.Is(gerr, ErrPanic) == errors.Is(d.GotErr, ErrPanic)
	case gerr != nil:
		return nil, false
	case q.Kind == QueryCheck:
		return nd, w.Outcome == d.Want.Outcome && g.Outcome == d.Got.Outcome
	}
	// For lookups, keep the first differing element and how it differs.
	diff := d.Want.Diff(d.Got)
	if len(diff) == 0 {
		// Differently named: keep a name one side lists and the other not.
		return nd, len(w.Diff(g)) == 0 && namingDiffers(d.Want.Named, d.Got.Named, w.Named, g.Named)
	}
	k := diff[0]
	return nd, w.Set[k] != g.Set[k] && w.Set[k] == d.Want.Set[k] && g.Set[k] == d.Got.Set[k]
}

// namingDiffers reports whether the first name that spicedb lists and the
// tested system not (or the reverse) in the original still differs so.
func namingDiffers(want, got, nowWant, nowGot []string) bool {
	for _, n := range want {
		if !slices.Contains(got, n) {
			return slices.Contains(nowWant, n) && !slices.Contains(nowGot, n)
		}
	}
	for _, n := range got {
		if !slices.Contains(want, n) {
			return slices.Contains(nowGot, n) && !slices.Contains(nowWant, n)
		}
	}
	return false
}
