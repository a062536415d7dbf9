package validation

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// Evaluator is the part of the engine a validation run exercises.
// *engine.Engine implements it; tests may substitute their own.
type Evaluator interface {
	Schema(rev store.Revision) *schema.Schema
	Check(ctx context.Context, req engine.CheckRequest) (engine.CheckResult, error)
	LookupResources(ctx context.Context, req engine.LookupResourcesRequest) ([]engine.LookupResult, store.Revision, error)
	LookupSubjects(ctx context.Context, req engine.LookupSubjectsRequest) ([]engine.LookupResult, store.Revision, error)
	Expand(ctx context.Context, obj rel.Object, relation string, rev store.Revision, recursive bool) (*engine.ExpandNode, error)
}

var _ Evaluator = (*engine.Engine)(nil)

// Options tune a run.
type Options struct {
	// Consistency also checks that Check, LookupResources and LookupSubjects
	// agree over every resource, permission and subject of each document.
	Consistency bool
	// EngineOptions are passed to engine.Load.
	EngineOptions []engine.Option
}

// Failure kinds.
const (
	KindAssertion   = "assertion"
	KindValidation  = "validation"
	KindConsistency = "consistency"
	KindLoad        = "load"
)

// Failure is one thing that did not hold.
type Failure struct {
	File string
	// Document is the 1-based number of the document in a file holding
	// several, 0 in a file holding one.
	Document int
	// Line is the file line of the assertion or validation entry, 0 when
	// not known.
	Line int
	// Kind is KindAssertion, KindValidation, KindConsistency or KindLoad.
	Kind string
	// What names what failed: the assertion as written, the validation key
	// and subject, or the consistency question.
	What     string
	Expected string
	Got      string
}

// String renders the failure as FILE:LINE: WHAT: expected X, got Y.
func (f Failure) String() string {
	var b strings.Builder
	b.WriteString(f.File)
	if f.Line > 0 {
		fmt.Fprintf(&b, ":%d", f.Line)
	}
	b.WriteString(": ")
	if f.Document > 0 {
		fmt.Fprintf(&b, "document %d: ", f.Document)
	}
	b.WriteString(f.What)
	fmt.Fprintf(&b, ": expected %s, got %s", f.Expected, f.Got)
	return b.String()
}

// Result summarises a run.
type Result struct {
	File      string
	Documents int
	// Assertions, Validations and Comparisons count the assertions run, the
	// validation keys compared and the consistency comparisons made.
	Assertions  int
	Validations int
	Comparisons int
	Failures    []Failure
}

// Failed reports whether anything failed.
func (r *Result) Failed() bool { return len(r.Failures) > 0 }

func (r *Result) add(o *Result) {
	r.Documents += o.Documents
	r.Assertions += o.Assertions
	r.Validations += o.Validations
	r.Comparisons += o.Comparisons
	r.Failures = append(r.Failures, o.Failures...)
}

// Run loads each document of f into a fresh engine and runs its assertions,
// its validation block and, when asked, the consistency check.
func Run(ctx context.Context, f *File, opts Options) *Result {
	out := &Result{File: f.Name}
	for _, doc := range f.Documents {
		var r *Result
		eng, err := engine.Load(ctx, doc.Schema, doc.Relationships, opts.EngineOptions...)
		if err != nil {
			r = &Result{Documents: 1, Failures: []Failure{{
				Line: doc.Line, Kind: KindLoad, What: "loading the schema and relationships",
				Expected: "success", Got: err.Error(),
			}}}
		} else {
			r = RunDocument(ctx, eng, doc, opts)
		}
		for i := range r.Failures {
			r.Failures[i].File = f.Name
			if len(f.Documents) > 1 {
				r.Failures[i].Document = doc.Index + 1
			}
		}
		out.add(r)
	}
	return out
}

// RunDocument runs one document's assertions, validation block and, when
// asked, the consistency check against ev, which must hold the document's
// schema and relationships. Failures carry no file name.
func RunDocument(ctx context.Context, ev Evaluator, doc *Document, opts Options) *Result {
	r := &Result{Documents: 1}
	for _, a := range doc.Assertions {
		r.Assertions++
		r.Failures = append(r.Failures, runAssertion(ctx, ev, a)...)
	}
	for _, er := range doc.Expected {
		r.Validations++
		r.Failures = append(r.Failures, runExpected(ctx, ev, er)...)
	}
	if opts.Consistency {
		c := CheckConsistency(ctx, ev, doc.Relationships)
		r.Comparisons += c.Comparisons
		r.Failures = append(r.Failures, c.Failures...)
		a := checkAssertionLookups(ctx, ev, doc.Assertions)
		r.Comparisons += a.Comparisons
		r.Failures = append(r.Failures, a.Failures...)
	}
	return r
}

func runAssertion(ctx context.Context, ev Evaluator, a Assertion) []Failure {
	what := a.Kind + " " + a.Text
	res, err := ev.Check(ctx, engine.CheckRequest{
		Resource: a.Resource, Permission: a.Permission, Subject: a.Subject, Context: a.Context, Explain: true,
	})
	if err != nil {
		return []Failure{{Line: a.Line, Kind: KindAssertion, What: what, Expected: a.Want.String(), Got: "error: " + err.Error()}}
	}
	if res.Decision != a.Want {
		return []Failure{{Line: a.Line, Kind: KindAssertion, What: what, Expected: a.Want.String(), Got: describe(res)}}
	}
	return nil
}

// describe renders a check result with what explains it: the missing
// caveat parameters and, for an agent, the chain and the reason.
func describe(res engine.CheckResult) string {
	s := res.Decision.String()
	var notes []string
	if len(res.Missing) > 0 {
		notes = append(notes, "missing context: "+strings.Join(res.Missing, ", "))
	}
	if d := res.Delegation; d != nil {
		if chain := d.String(); chain != "" {
			notes = append(notes, "chain "+chain)
		}
		if d.Reason != engine.ReasonNone {
			notes = append(notes, "reason "+string(d.Reason))
		}
	}
	if len(notes) > 0 {
		s += " (" + strings.Join(notes, "; ") + ")"
	}
	return s
}

func describeLookup(r engine.LookupResult) string {
	if len(r.Missing) > 0 {
		return r.Decision.String() + " (missing context: " + strings.Join(r.Missing, ", ") + ")"
	}
	return r.Decision.String()
}

// runExpected compares one validation key with the recursive expansion of
// its object and relation, with `zed validate`'s rules: the same subjects,
// each found on the same object#relation leaves, with the same wildcard
// exclusions and the same caveated-ness.
func runExpected(ctx context.Context, ev Evaluator, er ExpectedRelation) []Failure {
	fail := func(line int, what, expected, got string) Failure {
		return Failure{Line: line, Kind: KindValidation, What: "validation " + er.Key + what, Expected: expected, Got: got}
	}
	tree, err := ev.Expand(ctx, er.Object, er.Relation, 0, true)
	if err != nil {
		return []Failure{fail(er.Line, "", "an expansion", "error: "+err.Error())}
	}
	found, err := foundSubjects(tree, onrString(er.Object.Type, er.Object.ID, er.Relation))
	if err != nil {
		return []Failure{fail(er.Line, "", "a well-formed expansion", "error: "+err.Error())}
	}

	var out []Failure
	listed := map[string]bool{}
	for _, es := range er.Subjects {
		if es.Subject == nil {
			out = append(out, fail(es.Line, " "+es.Text, "a [subject] in the entry", "none"))
			continue
		}
		name := es.Subject.String()
		listed[name] = true
		what := " subject " + name
		f, ok := found.get(*es.Subject)
		if !ok {
			out = append(out, fail(es.Line, what, "the subject to be found", "not found"))
			continue
		}
		want := append([]string(nil), es.Resources...)
		sort.Strings(want)
		got := f.resourceList()
		if strings.Join(want, "\x00") != strings.Join(got, "\x00") {
			out = append(out, fail(es.Line, what, "found on "+wrapONRs(want), "found on "+wrapONRs(got)))
		}
		if es.Subject.IsWildcard() {
			wantX := make([]string, len(es.Exclusions))
			for i, x := range es.Exclusions {
				wantX[i] = x.String()
			}
			sort.Strings(wantX)
			gotX := f.exclusionStrings()
			if strings.Join(wantX, "\x00") != strings.Join(gotX, "\x00") {
				out = append(out, fail(es.Line, what, "excluded subjects {"+strings.Join(wantX, ", ")+"}", "{"+strings.Join(gotX, ", ")+"}"))
			}
		} else if len(es.Exclusions) > 0 {
			out = append(out, fail(es.Line, what, "no excluded subjects (only a wildcard has them)", fmt.Sprintf("%d listed", len(es.Exclusions))))
		}
		if es.Caveated != f.caveated {
			out = append(out, fail(es.Line, what, caveatedWord(es.Caveated), caveatedWord(f.caveated)))
		}
	}
	for _, f := range found.list() {
		if listed[f.subject.String()] {
			continue
		}
		out = append(out, fail(er.Line, " subject "+f.subject.String(), "only the listed subjects",
			fmt.Sprintf("unlisted [%s] is %s", f, wrapONRs(f.resourceList()))))
	}
	return out
}

func caveatedWord(c bool) string {
	if c {
		return "caveated"
	}
	return "not caveated"
}

// wrapONRs renders object#relation strings as <a>/<b>, as in the file.
func wrapONRs(onrs []string) string {
	if len(onrs) == 0 {
		return "nothing"
	}
	parts := make([]string, len(onrs))
	for i, o := range onrs {
		parts[i] = "<" + o + ">"
	}
	return strings.Join(parts, "/")
}

// contextString renders caveat context for messages.
func contextString(ctx map[string]any) string {
	if len(ctx) == 0 {
		return ""
	}
	b, err := json.Marshal(ctx)
	if err != nil {
		return fmt.Sprint(ctx)
	}
	return " with " + string(b)
}
