package engine_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/store/rel"
)

const benchSchema = `
definition user {}

definition agent {
  relation acts_for: user | agent
}

definition group {
  relation member: user | group#member
}

definition folder {
  relation parent: folder
  relation viewer: user | group#member
  permission view = viewer + parent->view
}

definition document {
  relation folder: folder
  relation owner: user
  relation viewer: user | group#member | agent:*
  permission edit = owner
  permission view = edit + viewer + folder->view
}
`

// benchWorkload is a scaled-down version of the bench/ workload: users in
// nested groups, a folder tree, documents with owners, group grants and
// folder inheritance, and agents acting for users through 2-link chains.
type benchWorkload struct {
	rels   []rel.Relationship
	checks []engine.CheckRequest
	agents []engine.CheckRequest
}

func newBenchWorkload(users, groups, folders, docs int) benchWorkload {
	r := rand.New(rand.NewPCG(42, 7))
	var w benchWorkload
	add := func(s string) {
		x, err := rel.Parse(s)
		if err != nil {
			panic(err)
		}
		w.rels = append(w.rels, x)
	}
	for g := 1; g < groups; g++ {
		// Each group nests in a lower-numbered one: a forest of depth ~log.
		add(fmt.Sprintf("group:g%d#member@group:g%d#member", r.IntN(g), g))
	}
	for u := 0; u < users; u++ {
		add(fmt.Sprintf("group:g%d#member@user:u%d", r.IntN(groups), u))
	}
	for f := 1; f < folders; f++ {
		add(fmt.Sprintf("folder:f%d#parent@folder:f%d", f, r.IntN(f)))
		if f%10 == 0 {
			add(fmt.Sprintf("folder:f%d#viewer@group:g%d#member", f, r.IntN(groups)))
		}
	}
	for d := 0; d < docs; d++ {
		add(fmt.Sprintf("document:d%d#owner@user:u%d", d, r.IntN(users)))
		add(fmt.Sprintf("document:d%d#folder@folder:f%d", d, r.IntN(folders)))
		if d%3 == 0 {
			add(fmt.Sprintf("document:d%d#viewer@group:g%d#member", d, r.IntN(groups)))
		}
	}
	add("document:d0#viewer@agent:*")
	for i := 0; i < 1000; i++ {
		d := r.IntN(docs)
		w.checks = append(w.checks, engine.CheckRequest{
			Resource: rel.Object{Type: "document", ID: fmt.Sprintf("d%d", d)}, Permission: "view",
			Subject: rel.Subject{Type: "user", ID: fmt.Sprintf("u%d", r.IntN(users))},
		})
	}
	// Agents: agent:sN acts for agent:pN, which acts for a user; every agent
	// may view every document (agent:* grants), so the user's rights decide.
	for i := 0; i < 100; i++ {
		u := r.IntN(users)
		add(fmt.Sprintf("agent:p%d#acts_for@user:u%d", i, u))
		add(fmt.Sprintf("agent:s%d#acts_for@agent:p%d", i, i))
	}
	for d := 0; d < docs; d += 1 {
		if d > 0 {
			add(fmt.Sprintf("document:d%d#viewer@agent:*", d))
		}
	}
	for i := 0; i < 1000; i++ {
		base := w.checks[i]
		w.agents = append(w.agents, engine.CheckRequest{
			Resource: base.Resource, Permission: "view",
			Subject: rel.Subject{Type: "agent", ID: fmt.Sprintf("s%d", r.IntN(100))},
		})
	}
	return w
}

func loadBench(b *testing.B) (*engine.Engine, benchWorkload) {
	w := newBenchWorkload(10_000, 1_000, 1_000, 10_000)
	e, err := engine.Load(context.Background(), benchSchema, w.rels)
	if err != nil {
		b.Fatal(err)
	}
	return e, w
}

func runChecks(b *testing.B, e *engine.Engine, reqs []engine.CheckRequest) {
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	allowed := 0
	for i := 0; i < b.N; i++ {
		res, err := e.Check(ctx, reqs[i%len(reqs)])
		if err != nil {
			b.Fatal(err)
		}
		if res.Decision == engine.Allowed {
			allowed++
		}
	}
	b.ReportMetric(float64(allowed)/float64(b.N), "allowed/op")
}

// BenchmarkCheck measures a plain check of document#view by users.
func BenchmarkCheck(b *testing.B) {
	e, w := loadBench(b)
	runChecks(b, e, w.checks)
}

// BenchmarkCheckAgentChain measures the same checks made by agents through a
// 2-link delegation chain (agent -> agent -> user).
func BenchmarkCheckAgentChain(b *testing.B) {
	e, w := loadBench(b)
	runChecks(b, e, w.agents)
}

// BenchmarkCheckParallel measures plain checks from all cores at once.
func BenchmarkCheckParallel(b *testing.B) {
	e, w := loadBench(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := e.Check(ctx, w.checks[i%len(w.checks)]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}
