package difftest

import (
	"context"
	"flag"
	"fmt"
	"maps"
	"os/exec"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/store/rel"
)

var (
	flagCases = flag.Int("difftest.cases", 300, "number of random cases TestDifferential compares")
	flagSeed  = flag.Int64("difftest.seed", 1, "seed of the first case; case i uses seed+i")
	// Minimizing runs many extra builds: only a few disagreements of each
	// class are shrunk, each within this many candidate cases.
	flagMinimize = flag.Int("difftest.minimize", 300, "candidate cases tried when minimizing a reported disagreement (0: off)")
	flagReports  = flag.Int("difftest.reports", 12, "disagreement classes reported in full")
	flagPerClass = flag.Int("difftest.perclass", 3, "examples (from distinct cases) minimized and reported per class")
	flagSelf     = flag.Bool("difftest.selfcheck", false, "compare SpiceDB's lookups with its own checks instead of testing the engine (validates the harness; use with -difftest.strict)")
	flagStrict   = flag.Bool("difftest.strict", false, "fail on disagreements SpiceDB contradicts itself about too (tolerated by default)")
	flagUsersets = flag.Bool("difftest.usersets", true, "also query from and for usersets (group:g0#member); false helps triage other classes")
	flagDump     = flag.Bool("difftest.dump", false, "log every case's schema, relationships and queries before running it")
	// Beyond this fraction of oracle errors the comparison says too
	// little: the generator must make fewer cycles.
	flagMaxSkip = flag.Float64("difftest.maxskip", 0.10, "largest tolerated fraction of queries skipped because SpiceDB errored")
)

// engineSystem adapts Mandate's engine to the System interface.
type engineSystem struct{ e *engine.Engine }

func loadEngine(ctx context.Context, schema string, rels []rel.Relationship) (System, error) {
	e, err := engine.Load(ctx, schema, rels)
	if err != nil {
		return nil, err
	}
	return engineSystem{e}, nil
}

func (s engineSystem) Close() {}

func outcomeOf(d engine.Decision) Outcome {
	switch d {
	case engine.Allowed:
		return Has
	case engine.Conditional:
		return Conditional
	}
	return No
}

func (s engineSystem) Check(ctx context.Context, q Query) (Outcome, error) {
	res, err := s.e.Check(ctx, engine.CheckRequest{
		Resource: q.Resource, Permission: q.Permission, Subject: q.Subject, Context: maps.Clone(q.Context),
	})
	if err != nil {
		return No, err
	}
	return outcomeOf(res.Decision), nil
}

func (s engineSystem) LookupResources(ctx context.Context, q Query) (map[string]Outcome, error) {
	found, _, err := s.e.LookupResources(ctx, engine.LookupResourcesRequest{
		ResourceType: q.ResourceType, Permission: q.Permission, Subject: q.Subject, Context: maps.Clone(q.Context),
	})
	if err != nil {
		return nil, err
	}
	out := map[string]Outcome{}
	for _, f := range found {
		out[f.ID] = max(out[f.ID], outcomeOf(f.Decision))
	}
	return out, nil
}

func (s engineSystem) LookupSubjects(ctx context.Context, q Query) ([]FoundSubject, error) {
	found, _, err := s.e.LookupSubjects(ctx, engine.LookupSubjectsRequest{
		Resource: q.Resource, Permission: q.Permission, SubjectType: q.SubjectType,
		SubjectRelation: q.SubjectRelation, Context: maps.Clone(q.Context),
	})
	if err != nil {
		return nil, err
	}
	out := make([]FoundSubject, 0, len(found))
	for _, f := range found {
		fs := FoundSubject{ID: f.ID, Outcome: outcomeOf(f.Decision)}
		for _, x := range f.Excluded {
			fs.Excluded = append(fs.Excluded, FoundSubject{ID: x.ID, Outcome: outcomeOf(x.Decision)})
		}
		out = append(out, fs)
	}
	return out, nil
}

// TestDifferential compares the engine with SpiceDB over random cases.
func TestDifferential(t *testing.T) {
	n := *flagCases
	if testing.Short() && n > 60 {
		n = 60
	}
	cfg := DefaultConfig()
	cfg.UsersetSubjects = *flagUsersets
	ctx := context.Background()

	testedFor := func(c *Case) Builder {
		if *flagSelf {
			return CheckDerived(SpiceDB, c.Pools)
		}
		return loadEngine
	}

	results := make([]CaseResult, n)
	var wg sync.WaitGroup
	next := make(chan int)
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for i := range next {
				c := Generate(*flagSeed+int64(i), cfg)
				if *flagDump {
					t.Logf("case seed %d\nschema:\n%srelationships:\n%squeries:\n%s", c.Seed, indent(c.SchemaText()), indent(c.RelationshipsText()), indent(queriesText(c.Queries)))
				}
				results[i] = RunCase(ctx, c, SpiceDB, testedFor(c))
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()

	var discarded, compared, skipped, disagreeing, tolerated int
	discardReasons := map[string]int{}
	skipReasons := map[string]int{}
	skipExamples := map[string]string{}
	classes := map[string][]*Disagreement{}
	toleratedClasses := map[string][]*Disagreement{}
	for _, r := range results {
		if r.Discarded != nil {
			discarded++
			discardReasons[shorten(r.Discarded.Error())]++
			continue
		}
		compared += r.Compared
		skipped += r.Skipped
		for k, v := range r.SkipReasons {
			skipReasons[k] += v
			if _, ok := skipExamples[k]; !ok {
				skipExamples[k] = r.SkipExamples[k]
			}
		}
		for _, d := range r.Disagreements {
			if d.Tolerated != "" && !*flagStrict {
				tolerated++
				toleratedClasses[d.Class()] = append(toleratedClasses[d.Class()], d)
				continue
			}
			disagreeing++
			classes[d.Class()] = append(classes[d.Class()], d)
		}
	}
	t.Logf("%d cases (seeds %d..%d): %d discarded (spicedb rejected), %d queries compared, %d skipped (spicedb errors), %d disagreements in %d classes, %d tolerated (spicedb contradicts itself)",
		n, *flagSeed, *flagSeed+int64(n)-1, discarded, compared, skipped, disagreeing, len(classes), tolerated)
	for _, k := range slices.Sorted(maps.Keys(discardReasons)) {
		t.Logf("  discarded %d: %s", discardReasons[k], k)
	}
	for _, k := range slices.Sorted(maps.Keys(skipReasons)) {
		t.Logf("  skipped %d: %s (e.g. %s)", skipReasons[k], k, skipExamples[k])
	}

	if len(toleratedClasses) > 0 {
		t.Logf("tolerated disagreements (the engine matches another SpiceDB API; -difftest.strict fails on them):\n%s", classSummary(toleratedClasses))
	}
	if discarded > n/4 {
		t.Errorf("%d of %d cases discarded: the generator makes too many schemas SpiceDB rejects", discarded, n)
	}
	if total := compared + skipped; total > 0 && float64(skipped)/float64(total) > *flagMaxSkip {
		t.Errorf("%d of %d queries skipped because SpiceDB errored (limit %.0f%%): comparisons are too sparse", skipped, total, 100**flagMaxSkip)
	}
	if len(classes) == 0 {
		return
	}

	names := classNames(classes)
	t.Errorf("%d disagreements with SpiceDB in %d classes:\n%s", disagreeing, len(classes), classSummary(classes))

	// Several examples of each class are minimized: one class label can
	// hide several causes. Reproductions already shown are not repeated.
	shown := map[string]bool{}
	for i, name := range names {
		if i >= *flagReports {
			t.Logf("(%d more classes not reported in full; raise -difftest.reports)", len(names)-i)
			break
		}
		var reports []string
		for _, d := range smallestN(classes[name], *flagPerClass) {
			if *flagMinimize <= 0 {
				reports = append(reports, d.String())
				continue
			}
			m := Minimize(ctx, d, SpiceDB, testedFor(d.Case), *flagMinimize)
			key := m.Reproduction()
			if shown[key] {
				reports = append(reports, fmt.Sprintf("case seed %d minimizes to a reproduction shown above\n", d.Case.Seed))
				continue
			}
			shown[key] = true
			reports = append(reports, m.String())
		}
		t.Errorf("class %q, %d occurrences:\n%s", name, len(classes[name]), strings.Join(reports, ""))
	}
}

func queriesText(qs []Query) string {
	var b strings.Builder
	for _, q := range qs {
		b.WriteString(q.String())
		b.WriteString("\n")
	}
	return b.String()
}

// classNames orders classes by decreasing size.
func classNames(classes map[string][]*Disagreement) []string {
	names := slices.Collect(maps.Keys(classes))
	sort.Slice(names, func(i, j int) bool {
		if len(classes[names[i]]) != len(classes[names[j]]) {
			return len(classes[names[i]]) > len(classes[names[j]])
		}
		return names[i] < names[j]
	})
	return names
}

func classSummary(classes map[string][]*Disagreement) string {
	var b strings.Builder
	for _, name := range classNames(classes) {
		ds := classes[name]
		seeds := map[int64]bool{}
		for _, d := range ds {
			seeds[d.Case.Seed] = true
		}
		list := slices.Sorted(maps.Keys(seeds))
		more := ""
		if len(list) > 8 {
			list, more = list[:8], " ..."
		}
		fmt.Fprintf(&b, "  %4d x %s (%d cases; seeds %v%s)\n", len(ds), name, len(seeds), list, more)
	}
	return b.String()
}

// smallestN picks up to n disagreements from distinct cases, those with the
// fewest relationships first: the best starting points for minimization.
func smallestN(ds []*Disagreement, n int) []*Disagreement {
	sorted := slices.Clone(ds)
	sort.SliceStable(sorted, func(i, j int) bool { return len(sorted[i].Case.Rels) < len(sorted[j].Case.Rels) })
	var out []*Disagreement
	seeds := map[int64]bool{}
	for _, d := range sorted {
		if len(out) == max(1, n) {
			break
		}
		if !seeds[d.Case.Seed] {
			seeds[d.Case.Seed] = true
			out = append(out, d)
		}
	}
	return out
}

func shorten(s string) string {
	if len(s) > 160 {
		return s[:160] + "..."
	}
	return s
}

// TestGenerateDeterministic: a seed must replay the same case, or printed
// seeds would be useless.
func TestGenerateDeterministic(t *testing.T) {
	cfg := DefaultConfig()
	for seed := range int64(20) {
		a, b := Generate(seed, cfg), Generate(seed, cfg)
		if a.SchemaText() != b.SchemaText() || a.RelationshipsText() != b.RelationshipsText() {
			t.Fatalf("seed %d generated two different cases", seed)
		}
		if len(a.Queries) != len(b.Queries) {
			t.Fatalf("seed %d generated %d then %d queries", seed, len(a.Queries), len(b.Queries))
		}
		for i := range a.Queries {
			if a.Queries[i].String() != b.Queries[i].String() {
				t.Fatalf("seed %d query %d: %s then %s", seed, i, a.Queries[i], b.Queries[i])
			}
		}
	}
}

// TestEffective pins down how LookupSubjects results expand over a pool.
func TestEffective(t *testing.T) {
	pool := []string{"a", "b", "c"}
	tests := []struct {
		name  string
		found []FoundSubject
		want  map[string]Outcome
	}{
		{"none", nil, map[string]Outcome{}},
		{"concrete", []FoundSubject{{ID: "a", Outcome: Has}, {ID: "b", Outcome: Conditional}},
			map[string]Outcome{"a": Has, "b": Conditional}},
		{"duplicates combine as or", []FoundSubject{{ID: "a", Outcome: Conditional}, {ID: "a", Outcome: Has}},
			map[string]Outcome{"a": Has}},
		{"wildcard covers the pool", []FoundSubject{{ID: "*", Outcome: Has}},
			map[string]Outcome{"*": Has, "a": Has, "b": Has, "c": Has}},
		{"exclusions", []FoundSubject{{ID: "*", Outcome: Has, Excluded: []FoundSubject{{ID: "a", Outcome: Has}, {ID: "b", Outcome: Conditional}}}},
			map[string]Outcome{"*": Has, "b": Conditional, "c": Has}},
		{"concrete beats exclusion", []FoundSubject{{ID: "*", Outcome: Conditional, Excluded: []FoundSubject{{ID: "a", Outcome: Has}}}, {ID: "a", Outcome: Has}},
			map[string]Outcome{"*": Conditional, "a": Has, "b": Conditional, "c": Conditional}},
		{"subject outside the pool", []FoundSubject{{ID: "z", Outcome: Has}},
			map[string]Outcome{"z": Has}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Effective(tt.found, pool)
			if !(Answer{Set: got}).Equal(Answer{Set: tt.want}) {
				t.Errorf("Effective = %v, want %v", Answer{Set: got}, Answer{Set: tt.want})
			}
		})
	}
}

// caveatBlind is SpiceDB with an injected bug: its checks answer "no"
// where the answer depends on caveat context.
type caveatBlind struct{ System }

func (c caveatBlind) Check(ctx context.Context, q Query) (Outcome, error) {
	o, err := c.System.Check(ctx, q)
	if o == Conditional {
		o = No
	}
	return o, err
}

// TestHarnessFindsInjectedBug proves the harness is not vacuous: it finds
// an injected bug, classifies it, and minimizes it to a small case that
// still shows it.
func TestHarnessFindsInjectedBug(t *testing.T) {
	ctx := context.Background()
	blind := func(ctx context.Context, schema string, rels []rel.Relationship) (System, error) {
		s, err := SpiceDB(ctx, schema, rels)
		if err != nil {
			return nil, err
		}
		return caveatBlind{s}, nil
	}
	var found *Disagreement
	for seed := int64(1); seed <= 50 && found == nil; seed++ {
		res := RunCase(ctx, Generate(seed, DefaultConfig()), SpiceDB, blind)
		for _, d := range res.Disagreements {
			if d.Query != nil && d.Query.Kind == QueryCheck {
				found = d
				break
			}
		}
	}
	if found == nil {
		t.Fatal("no disagreement found in 50 cases with checks blind to caveats")
	}
	if want := "check"; !strings.HasPrefix(found.Class(), want) || found.Want.Outcome != Conditional || found.Got.Outcome != No {
		t.Fatalf("class %q (spicedb %s, got %s), want a check answering no where spicedb is conditional", found.Class(), found.Want, found.Got)
	}
	m := Minimize(ctx, found, SpiceDB, blind, 300)
	if !m.Minimized || len(m.Case.Rels) > len(found.Case.Rels) {
		t.Fatalf("minimization did not shrink the case:\n%s", m)
	}
	// A conditional answer needs one caveated relationship: the minimal
	// case has just that.
	if len(m.Case.Rels) != 1 || m.Case.Rels[0].Caveat == nil {
		t.Errorf("minimized case has %d relationships, want one caveated relationship:\n%s", len(m.Case.Rels), m)
	}
	if _, ok := sameDisagreement(ctx, m, m.Case, m.Query, SpiceDB, blind); !ok {
		t.Errorf("minimized case no longer disagrees:\n%s", m)
	}
	if s := m.String(); !strings.Contains(s, "-difftest.seed=") || !strings.Contains(s, "relationships:") {
		t.Errorf("report lacks the replay command or the relationships:\n%s", s)
	}
	t.Logf("injected bug minimized to:\n%s", m)
}

type panicky struct{ System }

func (p panicky) Check(context.Context, Query) (Outcome, error) { panic("injected") }

// TestHarnessSurvivesPanics: a panicking system is a reported disagreement,
// not a crashed test run.
func TestHarnessSurvivesPanics(t *testing.T) {
	ctx := context.Background()
	c := Generate(1, DefaultConfig())
	res := RunCase(ctx, c, SpiceDB, func(ctx context.Context, schema string, rels []rel.Relationship) (System, error) {
		s, err := SpiceDB(ctx, schema, rels)
		return panicky{s}, err
	})
	var panics int
	for _, d := range res.Disagreements {
		if strings.Contains(d.Class(), "panic") && d.Query.Kind == QueryCheck {
			panics++
		}
	}
	if panics == 0 {
		t.Fatalf("no panic reported among %d disagreements", len(res.Disagreements))
	}
	res = RunCase(ctx, c, SpiceDB, func(context.Context, string, []rel.Relationship) (System, error) { panic("load") })
	if len(res.Disagreements) != 1 || res.Disagreements[0].Query != nil || !strings.Contains(res.Disagreements[0].GotErr.Error(), "load") {
		t.Fatalf("a panicking load gave %d disagreements, want one load failure", len(res.Disagreements))
	}
}

// TestOracleStaysOutOfTheBinary: only tests may link SpiceDB's development
// engine. No package but this one imports pkg/development, and no package
// imports this one outside its tests.
func TestOracleStaysOutOfTheBinary(t *testing.T) {
	out, err := exec.Command("go", "list", "-e", "-f", `{{.ImportPath}} {{join .Imports " "}}`, "github.com/mandate-authz/mandate/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	const self = "github.com/mandate-authz/mandate/engine/difftest"
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		pkg, imports, _ := strings.Cut(line, " ")
		for _, imp := range strings.Fields(imports) {
			if imp == self || (imp == "github.com/authzed/spicedb/pkg/development" && pkg != self) {
				t.Errorf("%s imports %s: only tests may link the SpiceDB oracle", pkg, imp)
			}
		}
	}
}
