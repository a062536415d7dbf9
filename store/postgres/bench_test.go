package postgres_test

import (
	"context"
	"flag"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/feed"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/postgres"
	"github.com/mandate-authz/mandate/store/rel"
)

// loadN sizes BenchmarkLoad; the figure is -load-n=1000000.
var loadN = flag.Int("load-n", 100_000, "relationships BenchmarkLoad stores and then loads into the engine")

const benchSchema = `definition user {}

definition group {
	relation member: user
}

definition doc {
	relation owner: user
	relation viewer: user | group#member
}
`

// importBatch is the server's ImportRelationships batch: one store.Write
// of this many CREATEs per message.
const importBatch = 10_000

// benchRel returns the i-th relationship of a synthetic store: mostly
// direct viewers, some owners and group memberships, over 10,000 users.
func benchRel(i int) rel.Relationship {
	r := rel.Relationship{
		Resource: rel.Object{Type: "doc", ID: fmt.Sprintf("d%d", i)},
		Relation: "viewer",
		Subject:  rel.Subject{Type: "user", ID: fmt.Sprintf("u%d", i%10_000)},
	}
	switch i % 10 {
	case 0:
		r.Relation = "owner"
	case 1:
		r.Resource = rel.Object{Type: "group", ID: fmt.Sprintf("g%d", i)}
		r.Relation = "member"
	case 2:
		r.Subject = rel.Subject{Type: "group", ID: fmt.Sprintf("g%d", i/10*10+1), Relation: "member"}
	}
	return r
}

func benchBatch(start, n int) []store.Mutation {
	muts := make([]store.Mutation, n)
	for i := range muts {
		muts[i] = store.Mutation{Op: store.Create, Rel: benchRel(start + i)}
	}
	return muts
}

func openBench(b *testing.B) *postgres.Store {
	b.Helper()
	s := open(b, postgres.Options{MaxConns: 4})
	if _, err := s.WriteSchema(context.Background(), benchSchema); err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkImport measures the import path: store.Write of 10,000 CREATEs
// at a time, as ImportRelationships issues them, into a growing table.
// Each iteration is one batch; rels/s is the figure to quote.
func BenchmarkImport(b *testing.B) {
	s := openBench(b)
	ctx := context.Background()
	n := 0
	for b.Loop() {
		b.StopTimer()
		muts := benchBatch(n, importBatch)
		b.StartTimer()
		if _, err := s.Write(ctx, nil, muts); err != nil {
			b.Fatal(err)
		}
		n += importBatch
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "rels/s")
}

// BenchmarkLoad stores -load-n relationships, then measures what a server
// does at startup: a new engine loading a snapshot of the head
// (feed.LoadSnapshot: Engine.LoadSnapshot over store.Read). It reports
// the load time and the engine's heap per relationship (HeapInuse after GC,
// minus the same before loading).
func BenchmarkLoad(b *testing.B) {
	s := openBench(b)
	ctx := context.Background()
	for start := 0; start < *loadN; start += importBatch {
		if _, err := s.Write(ctx, nil, benchBatch(start, min(importBatch, *loadN-start))); err != nil {
			b.Fatal(err)
		}
	}
	head, err := s.Head(ctx)
	if err != nil {
		b.Fatal(err)
	}
	var perRel float64
	for b.Loop() {
		b.StopTimer()
		var before runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		b.StartTimer()

		eng := engine.New()
		lctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		if err := feed.LoadSnapshot(lctx, eng, s, head, nil); err != nil {
			b.Fatal(err)
		}
		cancel()

		b.StopTimer()
		var after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&after)
		perRel = float64(int64(after.HeapInuse)-int64(before.HeapInuse)) / float64(*loadN)
		runtime.KeepAlive(eng)
		b.StartTimer()
	}
	b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/load")
	b.ReportMetric(float64(*loadN)*float64(b.N)/b.Elapsed().Seconds(), "rels/s")
	b.ReportMetric(perRel, "heap-bytes/rel")
}

// BenchmarkWriteParallel measures what the bench harness's write row
// measures, without gRPC: 16 callers each writing one TOUCH per call into
// a store of 10,000 relationships. writes/s is the figure to quote.
func BenchmarkWriteParallel(b *testing.B) {
	s := openBench(b)
	ctx := context.Background()
	if _, err := s.Write(ctx, nil, benchBatch(0, importBatch)); err != nil {
		b.Fatal(err)
	}
	var next atomic.Int64
	b.SetParallelism(16 / runtime.GOMAXPROCS(0))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r := benchRel(int(next.Add(1)) % (4 * importBatch))
			if _, err := s.Write(ctx, nil, []store.Mutation{{Op: store.Touch, Rel: r}}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
}
