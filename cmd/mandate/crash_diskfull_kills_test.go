//go:build linux

package main

import (
	"context"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
)

// diskFullKillRounds is how many times TestCrashDiskFullRandomKills kills
// each server: a few, to run in seconds in CI; -crash.seed replays one run.
const diskFullKillRounds = 4

// bookWrite sends batch ledger.take() and books its outcome: acknowledged,
// or in doubt (a failed write may have been applied, all or nothing).
func bookWrite(rels pb.RelationshipServiceClient, ledger *crashLedger) (int, error) {
	n := ledger.take()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	resp, err := rels.WriteRelationships(ctx, &pb.WriteRelationshipsRequest{Updates: crashBatch(n)})
	cancel()
	ledger.mu.Lock()
	defer ledger.mu.Unlock()
	if err != nil {
		ledger.inDoubt[n] = true
		return n, err
	}
	ledger.acked[n], ledger.answered[n] = true, true
	ledger.lastToken = resp.GetWrittenAt()
	return n, nil
}

// TestCrashDiskFullRandomKills kills `mandate serve` with SIGKILL at random
// points while several writers write and its disk fills (see
// setFileSizeLimit) with a random headroom, sometimes with space returning
// just before the kill, restarting it on the same data each round. After
// every restart every acknowledged write is in the store and in the audit
// trail, no batch is half applied (one in doubt is all there or absent, and
// stays so), and `mandate audit verify` passes. The seed is logged; rerun
// a failure with -crash.seed.
func TestCrashDiskFullRandomKills(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and restarts it several times; skipped with -short")
	}
	seed := *crashSeed
	if seed == 0 {
		seed = rand.Uint64()
	}
	t.Logf("seed %d (rerun with -crash.seed %d)", seed, seed)
	bin := buildMandate(t)
	for i, tc := range []struct {
		name    string
		audited bool
	}{
		{"audit trail and store", true},
		{"store alone", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			diskFullKills(t, bin, tc.audited, rand.New(rand.NewPCG(seed, uint64(i))))
		})
	}
}

func diskFullKills(t *testing.T, bin string, audited bool, rng *rand.Rand) {
	dir := filepath.Join(t.TempDir(), "data")
	dsArgs := []string{"--datastore-engine", "embedded", "--data-dir", dir}
	args := append([]string{"--grpc-preshared-key", crashKey, "--grpc-addr", "127.0.0.1:0", "--http-addr", "",
		"--audit-max-file-size", "64MiB"}, dsArgs...)
	if !audited {
		args = append(args, "--audit-sink", "none")
	}
	ledger := &crashLedger{acked: map[int]bool{}, inDoubt: map[int]bool{}, absent: map[int]bool{}, answered: map[int]bool{}}
	// fullFails counts writes refused for the full disk before a kill.
	var fullFails int64
	// In one round, at random, the kill waits for the full disk to have
	// failed a write (with the audit trail, whose file fills surely), so
	// that at least one kill lands among failing writes.
	amongFailures := rng.IntN(diskFullKillRounds)
	for round := range diskFullKillRounds + 1 {
		p := startProcess(t, bin, args...)
		conn := dial(t, p.waitReady(t, 30*time.Second), crashKey)
		rels := pb.NewRelationshipServiceClient(conn)
		if round == 0 {
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			_, err := pb.NewSchemaServiceClient(conn).WriteSchema(ctx, &pb.WriteSchemaRequest{Schema: crashSchema})
			cancel()
			if err != nil {
				t.Fatal(err)
			}
		} else {
			verifyCrashState(t, round, rels, ledger, 0)
			if audited {
				verifyCrashAudit(t, round, pb.NewAuditServiceClient(conn), ledger, auditVerifyArgs(dsArgs))
			}
		}
		if round == diskFullKillRounds {
			p.stop(t)
			break
		}
		// With space to spare, every write is acknowledged.
		for range 1 + rng.IntN(5) {
			if n, err := bookWrite(rels, ledger); err != nil {
				t.Fatalf("round %d: batch %d with space to spare: %v", round, n, err)
			}
		}

		// The kill points: writers start; after fillAfter the disk fills
		// with a random headroom (the audit file's, or none for the
		// store's file); sometimes space returns; the kill comes at a
		// random point after that.
		fillAfter := time.Duration(rng.IntN(200)) * time.Millisecond
		headroom := uint64(rng.IntN(96 << 10))
		spaceReturns := rng.IntN(3) == 0
		killAfter := time.Duration(rng.IntN(400)) * time.Millisecond
		var fails, full atomic.Int64
		var dead atomic.Bool
		var writers sync.WaitGroup
		for range crashWriters {
			writers.Go(func() {
				for !dead.Load() {
					n, err := bookWrite(rels, ledger)
					if err == nil {
						continue
					}
					fails.Add(1)
					if dead.Load() {
						return
					}
					// Before the kill, a write fails only for the full disk,
					// saying so.
					msg := status.Convert(err).Message()
					if c := status.Code(err); (c != codes.Unavailable && c != codes.Internal && c != codes.ResourceExhausted) || !strings.Contains(msg, "file too large") {
						t.Errorf("round %d: batch %d failed before the kill: %v; want the full disk's error", round, n, err)
						return
					}
					full.Add(1)
				}
			})
		}
		time.Sleep(fillAfter)
		pid := p.cmd.Process.Pid
		if audited {
			setFileSizeLimit(t, pid, uint64(largestFile(t, filepath.Join(dir, "audit")))+headroom)
		} else {
			setFileSizeLimit(t, pid, uint64(largestFile(t, dir)))
		}
		if audited && round == amongFailures {
			for giveUp := time.Now().Add(30 * time.Second); full.Load() == 0 && time.Now().Before(giveUp); {
				time.Sleep(time.Millisecond)
			}
		}
		time.Sleep(killAfter)
		if spaceReturns {
			setFileSizeLimit(t, pid, 0)
			time.Sleep(time.Duration(rng.IntN(100)) * time.Millisecond)
		}
		dead.Store(true)
		p.kill()
		writers.Wait()
		fullFails += full.Load()
		ledger.mu.Lock()
		acked, doubt := len(ledger.acked), len(ledger.inDoubt)
		ledger.mu.Unlock()
		t.Logf("round %d: disk filled after %v (headroom %d bytes), killed %v later (space returned: %v): %d batches acknowledged in all, %d in doubt, %d writes failed (%d for the full disk)",
			round, fillAfter, headroom, killAfter, spaceReturns, acked, doubt, fails.Load(), full.Load())
	}
	if len(ledger.answered) == 0 {
		t.Fatal("the test proved nothing: no batch was acknowledged")
	}
	// The store's file grows in large steps, so a full disk rarely fails
	// its writes within a round (TestCrashDiskFull waits for that); the
	// audit file, appended to by every write, fills within the headroom.
	if audited && fullFails == 0 {
		t.Fatal("the test proved nothing: no write failed for the full disk before a kill")
	}
}
