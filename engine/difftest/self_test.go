package difftest

import (
	"context"
	"flag"
	"regexp"
	"testing"
)

var flagSelfCases = flag.Int("difftest.selfcases", 150, "random cases with `self` TestSelfChecks compares")

// TestSelfChecks compares Check answers in random cases that use `self`.
// SpiceDB v1.56.1's lookups mishandle `self` (see Config.SelfRate), so
// TestDifferential leaves it out; its checks are sound, and checks are what
// this compares.
func TestSelfChecks(t *testing.T) {
	ctx := context.Background()
	cfg := DefaultConfig()
	cfg.SelfRate = 1
	n := *flagSelfCases
	if testing.Short() {
		n = min(n, 30)
	}
	compared, withSelf := 0, 0
	for seed := int64(1); seed <= int64(n); seed++ {
		c := Generate(seed, cfg)
		text := c.SchemaText()
		oracle, err := SpiceDB(ctx, text, c.Rels)
		if err != nil {
			continue // SpiceDB rejects the case
		}
		got, err := loadEngine(ctx, text, c.Rels)
		if err != nil {
			t.Fatalf("seed %d: the engine rejects a case SpiceDB accepts: %v", seed, err)
		}
		if permissionUsesSelf.MatchString(text) {
			withSelf++
		}
		for _, q := range c.Queries {
			if q.Kind != QueryCheck {
				continue
			}
			w, werr := askWithin(ctx, oracle, q, nil)
			if werr != nil {
				continue // SpiceDB fails it (a depth error on a cycle)
			}
			g, gerr := askWithin(ctx, got, q, nil)
			if gerr != nil || g.Outcome != w.Outcome {
				t.Errorf("seed %d: %s: engine %v (%v), spicedb %v\n%s%s", seed, q, g.Outcome, gerr, w.Outcome, text, c.RelationshipsText())
			}
			compared++
		}
	}
	if withSelf < n/4 {
		t.Errorf("only %d of %d cases use self", withSelf, n)
	}
	t.Logf("%d checks compared in %d cases, %d using self", compared, n, withSelf)
}

// permissionUsesSelf matches a permission whose expression uses self.
var permissionUsesSelf = regexp.MustCompile(`(?m)^\s*permission \w+ = .*\bself\b`)
