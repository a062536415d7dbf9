package schema

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// sumSchema is `permission perm = rel + rel + ...` with n operands, which
// SpiceDB's compiler takes quadratic time over (60,000: 105 s).
func sumSchema(n int) string {
	return "definition user {}\ndefinition doc {\n  relation rel: user\n  permission perm = rel" +
		strings.Repeat(" + rel", n-1) + "\n}\n"
}

func TestLimitsRefuseBeforeCompiling(t *testing.T) {
	many := func(n int, f func(i int) string) string {
		var b strings.Builder
		for i := range n {
			b.WriteString(f(i))
		}
		return b.String()
	}
	small := Limits{MaxBytes: 4000, MaxDefinitions: 3, MaxRelations: 4, MaxTerms: 5, MaxNesting: 3}
	for _, tt := range []struct {
		name, text string
		limits     Limits
		limit      string
		want       string // in the message
		line       int
	}{
		{"60,000 terms: the size", sumSchema(60_000), DefaultLimits(), "MaxBytes", "the schema's size in bytes: 360077 is over the maximum of 262144", 0},
		{"30,000 terms", sumSchema(30_000), DefaultLimits(), "MaxTerms", "permission doc#perm: operands: 30000 is over the maximum of 128", 4},
		{"bytes", sumSchema(1000), small, "MaxBytes", "is over the maximum of 4000", 0},
		{"definitions", many(4, func(i int) string { return fmt.Sprintf("definition def%d {}\n", i) }), small, "MaxDefinitions", "definitions and caveats: 4 is over the maximum of 3", 4},
		{"caveats count as definitions", "definition user {}\n" + many(3, func(i int) string { return fmt.Sprintf("caveat cav%d(x int) { x > 1 }\n", i) }), small, "MaxDefinitions", "4 is over the maximum of 3", 4},
		{"relations", "definition user {}\ndefinition doc {\n" + many(5, func(i int) string { return fmt.Sprintf("  relation rel%d: user\n", i) }) + "}\n", small, "MaxRelations", "relations and permissions in the schema: 5 is over the maximum of 4", 0},
		{"parentheses", "definition user {}\ndefinition doc {\n  relation rel: user\n  permission perm = ((((rel))))\n}\n", small, "MaxNesting", "parentheses nest: 4 is over the maximum of 3", 4},
		{"deep parentheses never reach the parser", sumSchema(1)[:60] + strings.Repeat("(", 200_000), DefaultLimits(), "MaxNesting", "parentheses nest: 33 is over the maximum of 32", 4},
		{"operators", "definition user {}\ndefinition doc {\n  relation rel: user\n  permission perm = rel & (rel + (rel - (rel & rel)))\n}\n", small, "MaxNesting", "permission doc#perm: operators nest: 4 is over the maximum of 3", 4},
		{"terms", "definition user {}\ndefinition doc {\n  relation rel: user\n  relation parent: doc\n  permission perm = rel + parent->perm + nil + rel + rel + rel\n}\n", small, "MaxTerms", "operands: 6 is over the maximum of 5", 5},
	} {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			_, err := CompileWithin(context.Background(), tt.text, tt.limits)
			var se *Error
			if !errors.As(err, &se) {
				t.Fatalf("got %v, want a *schema.Error", err)
			}
			if se.Limit != tt.limit || !strings.Contains(se.Message, tt.want) || !strings.Contains(se.Message, "limit "+tt.limit) {
				t.Errorf("got limit %q, %q; want limit %q, message with %q", se.Limit, se.Message, tt.limit, tt.want)
			}
			if tt.line != 0 && se.Line != tt.line {
				t.Errorf("line %d, want %d", se.Line, tt.line)
			}
			t.Logf("refused in %v: %v", time.Since(start), err)
		})
	}
}

// TestLimitsAdmitWhatTheyAllow: a schema at the limits compiles, and
// operators of one kind in a row are one level of nesting.
func TestLimitsAdmitWhatTheyAllow(t *testing.T) {
	l := Limits{MaxTerms: 5, MaxNesting: 2, MaxRelations: 3, MaxDefinitions: 2}
	text := "definition user {}\ndefinition doc {\n  relation rel: user\n  relation other: user\n  permission perm = (rel + rel + rel + other) - rel\n}\n"
	if _, err := CompileWithin(context.Background(), text, l); err != nil {
		t.Fatal(err)
	}
	if _, err := Compile(context.Background(), sumSchema(DefaultLimits().MaxTerms)); err != nil {
		t.Fatal(err)
	}
}

func TestCompileHonoursContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Compile(ctx, sumSchema(10)); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want %v", err, context.Canceled)
	}
}

// TestCompilerBoundsConcurrency: past its slots, a compilation waits, and
// gives up when its caller's context ends.
func TestCompilerBoundsConcurrency(t *testing.T) {
	c := NewCompiler(Limits{}, 1)
	release, err := c.Admit(context.Background(), sumSchema(10))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.Compile(ctx, sumSchema(10)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("with every slot taken: %v, want %v", err, context.DeadlineExceeded)
	}
	release()
	if _, err := c.Compile(context.Background(), sumSchema(10)); err != nil {
		t.Fatalf("after release: %v", err)
	}
	if _, err := c.Admit(context.Background(), sumSchema(1000)); err == nil {
		t.Fatal("Admit took a schema over MaxTerms")
	}
	// A refused Admit gives its slot back.
	if _, err := c.Compile(context.Background(), sumSchema(10)); err != nil {
		t.Fatalf("after a refused Admit: %v", err)
	}
}

// BenchmarkCompileTerms measures what one permission's operands cost
// SpiceDB's compiler, which DefaultLimits().MaxTerms is chosen from.
func BenchmarkCompileTerms(b *testing.B) {
	for _, n := range []int{64, 256, 1024, 4096} {
		text := sumSchema(n)
		b.Run(fmt.Sprintf("terms=%d", n), func(b *testing.B) {
			for b.Loop() {
				if _, err := CompileWithin(context.Background(), text, Limits{MaxTerms: n}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

const cubicCaveat = `caveat costly(l list<int>) {
  l.all(x, l.all(y, l.all(z, x + y + z >= 0)))
}
definition user {}`

func intList(n int) []any {
	l := make([]any, n)
	for i := range l {
		l[i] = float64(i)
	}
	return l
}

// TestCaveatCostAndDeadline: over 400 elements the cubic caveat took 40 s;
// now it stops at its cost limit, and with the limit lifted, at its
// context's deadline.
func TestCaveatCostAndDeadline(t *testing.T) {
	s, err := Compile(context.Background(), cubicCaveat)
	if err != nil {
		t.Fatal(err)
	}
	ctx := map[string]any{"l": intList(400)}
	if _, err := s.Caveats["costly"].Evaluate(context.Background(), ctx, nil, nil); !errors.Is(err, ErrCaveatCost) {
		t.Fatalf("got %v, want %v", err, ErrCaveatCost)
	}
	// Unknown parameters take the partial evaluation, bounded alike.
	rel := map[string]any{"l": intList(400)}
	if _, err := s.Caveats["costly"].Evaluate(context.Background(), nil, rel, nil); !errors.Is(err, ErrCaveatCost) {
		t.Fatalf("relationship context: got %v, want %v", err, ErrCaveatCost)
	}

	unbounded, err := CompileWithin(context.Background(), cubicCaveat, Limits{MaxCaveatCost: 1 << 50})
	if err != nil {
		t.Fatal(err)
	}
	dctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := unbounded.Caveats["costly"].Evaluate(dctx, ctx, nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want %v", err, context.DeadlineExceeded)
	}
}
