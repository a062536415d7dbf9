package workload

import (
	"context"
	"reflect"
	"testing"

	"github.com/openfga/language/pkg/go/transformer"

	"github.com/mandate-authz/mandate/schema"
)

func small() Config {
	return Config{Seed: 3, Users: 50, Groups: 10, Folders: 30, Documents: 200, Agents: 10, Checks: 300, AgentChecks: 60, Lookups: 5}
}

func TestGenerateIsSeeded(t *testing.T) {
	a, err := Generate(small())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Generate(small())
	if !reflect.DeepEqual(a.Rels, b.Rels) || !reflect.DeepEqual(a.Checks, b.Checks) || !reflect.DeepEqual(a.AgentChecks, b.AgentChecks) {
		t.Fatal("the same config generated two different workloads")
	}
	other := small()
	other.Seed++
	c, _ := Generate(other)
	if reflect.DeepEqual(a.Rels, c.Rels) {
		t.Fatal("a different seed generated the same relationships")
	}
}

func TestGenerateShape(t *testing.T) {
	w, err := Generate(small())
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, r := range w.Rels {
		k := r.Key().String()
		if seen[k] {
			t.Fatalf("relationship %s generated twice", k)
		}
		seen[k] = true
	}
	if len(w.Checks) != 300 || len(w.AgentChecks) != 60 || len(w.LookupUsers) != 5 {
		t.Fatalf("pool sizes %d/%d/%d, want 300/60/5", len(w.Checks), len(w.AgentChecks), len(w.LookupUsers))
	}
	kinds := map[CheckKind]int{}
	for _, c := range w.Checks {
		kinds[c.Kind]++
	}
	if kinds[Owner] < 100 || kinds[RandomUser] != 100 {
		t.Fatalf("check kinds %v: want a third owners, a third group members (or owners), a third random users", kinds)
	}
	// 2 delegations per agent plus the agents' own grant.
	if len(w.AgentRels) != 2*10+1 {
		t.Fatalf("%d agent relationships, want 21", len(w.AgentRels))
	}
}

func TestDefaultSizeIsTheIssues(t *testing.T) {
	if testing.Short() {
		t.Skip("generates the full workload")
	}
	w, err := Generate(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if n := len(w.Rels); n < 280_000 || n > 320_000 {
		t.Fatalf("%d relationships; the issue's workload has about 300k", n)
	}
}

func TestSchemasCompile(t *testing.T) {
	for name, text := range map[string]string{"spicedb": SpiceDBSchema, "mandate": MandateSchema} {
		if _, err := schema.Compile(context.Background(), text); err != nil {
			t.Errorf("%s schema: %v", name, err)
		}
	}
	if _, err := transformer.TransformDSLToProto(OpenFGAModel); err != nil {
		t.Errorf("OpenFGA model: %v", err)
	}
}

func TestValidateNamesTheField(t *testing.T) {
	c := small()
	c.Folders = 0
	if _, err := Generate(c); err == nil || err.Error() != "workload: folders is 0; expected at least 1" {
		t.Fatalf("got %v", err)
	}
}
