package server_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/server/audit"
)

// memChildEnv marks the process TestMemoryPlateauUnderSustainedWrites
// measures in.
const memChildEnv = "MANDATE_MEMORY_TEST_CHILD"

var memFull = flag.Bool("mem.full", false, "TestMemoryPlateau: 20,000 relationships and 20 passes (the README's figures) instead of CI's 4,000 and 8")

// heapBytes is the live heap after a full collection.
func heapBytes() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestMemoryPlateauUnderSustainedWrites rewrites a fixed set of
// relationships again and again through a running server (each pass
// changes every relationship's caveat context, so each is a new version),
// with the audit trail on, and measures the live heap after each pass. With
// history released a short while after it is superseded the heap stays
// flat; with the history kept (the baseline, in the same run) it grows by
// the versions kept. The figures (bytes per relationship, per version of
// history) are logged for the README's memory formula. It asserts memory,
// never time.
//
// The heap is the process's, so the measurement runs in a process of its
// own (this test binary, run again for this test alone): other tests'
// servers and garbage would otherwise be in it.
func TestMemoryPlateauUnderSustainedWrites(t *testing.T) {
	if os.Getenv(memChildEnv) == "" {
		args := []string{"-test.run", "^TestMemoryPlateauUnderSustainedWrites$", "-test.v"}
		if *memFull {
			args = append(args, "-mem.full")
		}
		cmd := exec.Command(os.Args[0], args...)
		cmd.Env = append(os.Environ(), memChildEnv+"=1")
		out, err := cmd.CombinedOutput()
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, "memory_test.go") {
				t.Log(strings.TrimSpace(line))
			}
		}
		if err != nil {
			t.Fatalf("the measuring process failed: %v\n%s", err, out)
		}
		return
	}
	rels, passes := 4000, 8
	if *memFull {
		rels, passes = 20000, 20
	}
	// run measures with history kept for retention, bounded to limit
	// superseded versions (0: unbounded); writes refused for history are
	// counted, not failed.
	run := func(t *testing.T, retention time.Duration, limit int) (perRel float64, series []uint64, refused int) {
		dir := t.TempDir()
		sink, err := audit.OpenFileSink(dir, 1<<20, nil)
		if err != nil {
			t.Fatal(err)
		}
		sink.SetRetention(audit.Retention{MaxBytes: 4 << 20})
		trail, err := audit.New(context.Background(), audit.Options{Sink: sink})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { trail.Close(context.Background()) })
		ts := startServer(t, func(c *server.Config) {
			c.RevisionRetention, c.Audit, c.Limits.MaxHistoryVersions = retention, trail, limit
		})
		ts.writeSchema(testSchema)
		base := heapBytes()
		writePass := func(pass int) {
			const batch = 1000
			for lo := 0; lo < rels; lo += batch {
				ups := make([]*pb.RelationshipUpdate, 0, batch)
				for i := lo; i < min(lo+batch, rels); i++ {
					ups = append(ups, &pb.RelationshipUpdate{Operation: touch, Relationship: &pb.Relationship{
						Resource: obj("doc", fmt.Sprintf("d%d", i/10)), Relation: "viewer", Subject: subj("user", fmt.Sprintf("u%d", i%1000)),
						OptionalCaveat: &pb.ContextualizedCaveat{CaveatName: "within_limit", Context: mustStruct(map[string]any{"limit": pass})},
					}})
				}
				_, err := ts.rels.WriteRelationships(ts.ctx(), &pb.WriteRelationshipsRequest{Updates: ups})
				switch {
				case limit > 0 && status.Code(err) == codes.ResourceExhausted:
					refused++
				case err != nil:
					t.Fatalf("WriteRelationships: %v", err)
				}
			}
			// Long enough for the retention window and a release to pass
			// when the window is short; the measurement, not the wait, is
			// what the test checks.
			time.Sleep(3 * min(retention, time.Second/10))
		}
		writePass(0)
		loaded := heapBytes()
		perRel = float64(loaded-base) / float64(rels)
		for p := 1; p <= passes; p++ {
			writePass(p)
			series = append(series, heapBytes())
		}
		return perRel, series, refused
	}
	var released, kept, bounded []uint64
	var perRel float64
	var refused int
	t.Run("history released", func(t *testing.T) {
		perRel, released, _ = run(t, 30*time.Millisecond, 0)
	})
	t.Run("history kept (baseline)", func(t *testing.T) {
		_, kept, _ = run(t, time.Hour, 0)
	})
	// Kept for an hour but bounded to two passes' versions: writes past
	// them are refused, and the heap stops growing there.
	t.Run("history kept, bounded by --max-history-versions", func(t *testing.T) {
		_, bounded, refused = run(t, time.Hour, 2*rels)
	})
	if len(released) < 4 || len(kept) < 4 || len(bounded) < 4 {
		t.Fatal("a run did not finish")
	}
	mib := func(b uint64) string { return fmt.Sprintf("%.1f", float64(b)/(1<<20)) }
	growth := func(s []uint64) int64 { return int64(s[len(s)-1]) - int64(s[1]) }
	perVersion := float64(growth(kept)) / float64((len(kept)-2)*rels)
	t.Logf("%d relationships, %d passes of %d writes: %.0f bytes per relationship (server, engine and memory store)", rels, passes, rels, perRel)
	for i := range released {
		t.Logf("after pass %2d: live heap %s MiB with history released, %s MiB with it kept, %s MiB with it kept to %d versions", i+1, mib(released[i]), mib(kept[i]), mib(bounded[i]), 2*rels)
	}
	t.Logf("history kept: %.0f bytes per superseded version", perVersion)
	// The plateau: after the first two passes, the released run's heap
	// grows by less than a tenth of what the kept run's grows.
	if g, k := growth(released), growth(kept); k <= 0 || g*10 > k {
		t.Errorf("heap growth over passes 2 to %d: %d bytes with history released, %d with it kept; want released under a tenth of kept", passes, g, k)
	}
	// The bound: past the limit, writes are refused and the heap stays
	// flat although nothing is released.
	t.Logf("history bounded to %d versions: %d writes of %d refused", 2*rels, refused, passes*((rels+999)/1000))
	if refused == 0 {
		t.Error("no write was refused with history bounded")
	}
	if b, k := growth(bounded), growth(kept); b*10 > k {
		t.Errorf("heap growth over passes 2 to %d: %d bytes with history bounded, %d with it kept; want bounded under a tenth of kept", passes, b, k)
	}
}
