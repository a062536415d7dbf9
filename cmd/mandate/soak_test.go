package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
)

var (
	soakFor       = flag.Duration("soak", 0, "TestSoak: how long to run the mixed load (0 skips it; not for CI)")
	soakRetention = flag.Duration("soak.retention", time.Hour, "TestSoak: the server's --revision-retention")
	soakRels      = flag.Int("soak.rels", 20_000, "TestSoak: the fixed set of relationships written over and over")
	soakAudit     = flag.String("soak.audit-retention", "", "TestSoak: the server's --audit-retention (default keep everything)")
)

const soakSchema = "definition user {}\n\ndefinition doc {\n\trelation viewer: user\n\tpermission view = viewer\n}\n"

// soakWindow gathers one reporting interval's latencies.
type soakWindow struct {
	mu             sync.Mutex
	checks, writes []time.Duration
}

func (w *soakWindow) add(write bool, d time.Duration) {
	w.mu.Lock()
	if write {
		w.writes = append(w.writes, d)
	} else {
		w.checks = append(w.checks, d)
	}
	w.mu.Unlock()
}

func (w *soakWindow) take() (checks, writes []time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	checks, writes = w.checks, w.writes
	w.checks, w.writes = nil, nil
	return checks, writes
}

func p99(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return ds[len(ds)*99/100]
}

// rssMiB reads a process's resident set from /proc.
func rssMiB(pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024
		}
	}
	return -1
}

func dirMiB(dir string) float64 {
	var n int64
	filepath.Walk(dir, func(_ string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			n += info.Size()
		}
		return nil
	})
	return float64(n) / (1 << 20)
}

// TestSoak runs a mixed load through a running `mandate serve` (embedded
// store, audit trail on) for -soak: writers rewrite a fixed set of
// relationships (each write touches or deletes 10 of them, so the set stays
// the same size), checkers check them, and every 5 s it reports checks and
// writes per second (a write is one call of 10 updates), their p99, the
// server's RSS and the size of its store and audit trail on disk. Not for CI: a measurement, with no assertion beyond the load
// running.
//
//	go test ./cmd/mandate -run TestSoak -v -soak 2m -soak.retention 30s -soak.audit-retention 64MiB
func TestSoak(t *testing.T) {
	if *soakFor == 0 {
		t.Skip("a soak benchmark: run with -soak 2m (and -v)")
	}
	bin := buildMandate(t)
	dir := filepath.Join(t.TempDir(), "data")
	args := []string{"--grpc-preshared-key", crashKey, "--grpc-addr", "127.0.0.1:0", "--http-addr", "",
		"--data-dir", dir, "--revision-retention", soakRetention.String()}
	if *soakAudit != "" {
		args = append(args, "--audit-retention", *soakAudit, "--audit-max-file-size", "8MiB")
	}
	p := startProcess(t, bin, args...)
	conn := dial(t, p.waitReady(t, 30*time.Second), crashKey)
	if _, err := pb.NewSchemaServiceClient(conn).WriteSchema(t.Context(), &pb.WriteSchemaRequest{Schema: soakSchema}); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d relationships, revision retention %s, audit retention %q, for %s", *soakRels, *soakRetention, *soakAudit, *soakFor)
	soakLoad(t, pb.NewPermissionServiceClient(conn), pb.NewRelationshipServiceClient(conn), p.cmd.Process.Pid, dir)
	p.stop(t)
}

// soakLoad drives the load and reports; split out for TestSoak.
func soakLoad(t *testing.T, conn pb.PermissionServiceClient, rels pb.RelationshipServiceClient, pid int, dir string) {
	n := *soakRels
	rel := func(i int) *pb.Relationship {
		return &pb.Relationship{Resource: &pb.ObjectReference{ObjectType: "doc", ObjectId: "d" + strconv.Itoa(i/20)}, Relation: "viewer",
			Subject: &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: "user", ObjectId: "u" + strconv.Itoa(i%20)}}}
	}
	for lo := 0; lo < n; lo += 1000 {
		var ups []*pb.RelationshipUpdate
		for i := lo; i < min(lo+1000, n); i++ {
			ups = append(ups, &pb.RelationshipUpdate{Operation: pb.RelationshipUpdate_OPERATION_TOUCH, Relationship: rel(i)})
		}
		if _, err := rels.WriteRelationships(t.Context(), &pb.WriteRelationshipsRequest{Updates: ups}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, stop := context.WithTimeout(t.Context(), *soakFor)
	defer stop()
	var win soakWindow
	var errs atomic.Int64
	var wg sync.WaitGroup
	const writers, checkers = 4, 8
	for w := range writers + checkers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for ctx.Err() == nil {
				start := time.Now()
				var err error
				if w < writers {
					op := pb.RelationshipUpdate_OPERATION_TOUCH
					if rng.IntN(2) == 0 {
						op = pb.RelationshipUpdate_OPERATION_DELETE
					}
					// Ten distinct relationships: one write may change each once.
					ups := make([]*pb.RelationshipUpdate, 10)
					first := rng.IntN(n - len(ups))
					for i := range ups {
						ups[i] = &pb.RelationshipUpdate{Operation: op, Relationship: rel(first + i)}
					}
					_, err = rels.WriteRelationships(ctx, &pb.WriteRelationshipsRequest{Updates: ups})
				} else {
					r := rel(rng.IntN(n))
					_, err = conn.Check(ctx, &pb.CheckRequest{Resource: r.Resource, Permission: "view", Subject: r.Subject})
				}
				if err != nil {
					if ctx.Err() == nil && errs.Add(1) <= 3 {
						t.Logf("call failed during the soak: %v", err)
					}
					continue
				}
				win.add(w < writers, time.Since(start))
			}
		})
	}
	const every = 5 * time.Second
	tick := time.NewTicker(every)
	defer tick.Stop()
	began := time.Now()
	t.Logf("%8s %10s %9s %10s %9s %8s %9s %9s", "elapsed", "checks/s", "p99", "writes/s", "p99", "RSS MiB", "store MiB", "audit MiB")
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-tick.C:
			c, w := win.take()
			audit := dirMiB(filepath.Join(dir, "audit"))
			t.Logf("%8s %10.0f %9s %10.0f %9s %8.1f %9.1f %9.1f", time.Since(began).Round(time.Second), float64(len(c))/every.Seconds(), p99(c).Round(10*time.Microsecond),
				float64(len(w))/every.Seconds(), p99(w).Round(10*time.Microsecond), rssMiB(pid), dirMiB(dir)-audit, audit)
		}
	}
	wg.Wait()
	if e := errs.Load(); e > 0 {
		t.Errorf("%d calls failed during the soak", e)
	}
}
