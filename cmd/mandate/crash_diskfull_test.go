//go:build linux

package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
)

// setFileSizeLimit sets the file size limit (RLIMIT_FSIZE) of a running
// process: past it the kernel fails its writes with EFBIG ("file too
// large"), as a full disk fails them with ENOSPC, for every file it writes
// (the embedded store's and the audit trail's alike). Raising it again is
// space coming back. Unlike a small file system this needs no mount, and
// unlike a fault-injecting writer it fails the real system calls of the
// real binary. 0 lifts the limit.
func setFileSizeLimit(t *testing.T, pid int, bytes uint64) {
	t.Helper()
	lim := unix.Rlimit{Cur: unix.RLIM_INFINITY, Max: unix.RLIM_INFINITY}
	if bytes > 0 {
		lim.Cur = bytes
	}
	if err := unix.Prlimit(pid, unix.RLIMIT_FSIZE, &lim, nil); err != nil {
		t.Skipf("cannot set the file size limit of the server process (prlimit: %v): no way to fill its disk", err)
	}
}

// largestFile is the size of the largest file under dir.
func largestFile(t *testing.T, dir string) int64 {
	t.Helper()
	var max int64
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err == nil && info.Size() > max {
			max = info.Size()
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return max
}

// TestCrashDiskFull fills the disk under a running `mandate serve` (its
// file size limit, see setFileSizeLimit) while it takes writes with the
// audit trail on: writes then fail with an error that says why, and are
// never acknowledged unless both the store and the trail hold them; the
// server keeps answering reads; when space returns it takes writes again
// without a restart. Then the disk fills again and the server is killed
// with SIGKILL among failing writes: after the restart every acknowledged
// write is in the store and in the audit trail, no batch is half applied,
// and `mandate audit verify` passes.
func TestCrashDiskFull(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and restarts it; skipped with -short")
	}
	bin := buildMandate(t)
	for _, tc := range []struct {
		name string
		// audit is whether the audit trail is on; without it the store's
		// file is the one that fills.
		audit bool
	}{
		{"audit trail and store", true},
		{"store alone", false},
	} {
		t.Run(tc.name, func(t *testing.T) { diskFull(t, bin, tc.audit) })
	}
}

func diskFull(t *testing.T, bin string, audited bool) {
	dir := filepath.Join(t.TempDir(), "data")
	dsArgs := []string{"--datastore-engine", "embedded", "--data-dir", dir}
	args := append([]string{"--grpc-preshared-key", crashKey, "--grpc-addr", "127.0.0.1:0", "--http-addr", "",
		"--audit-max-file-size", "64MiB"}, dsArgs...)
	if !audited {
		args = append(args, "--audit-sink", "none")
	}
	ledger := &crashLedger{acked: map[int]bool{}, inDoubt: map[int]bool{}, absent: map[int]bool{}, answered: map[int]bool{}}

	p := startProcess(t, bin, args...)
	conn := dial(t, p.waitReady(t, 30*time.Second), crashKey)
	rels := pb.NewRelationshipServiceClient(conn)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := pb.NewSchemaServiceClient(conn).WriteSchema(ctx, &pb.WriteSchemaRequest{Schema: crashSchema}); err != nil {
		t.Fatal(err)
	}
	write := func() (int, error) { return bookWrite(rels, ledger) }
	for range 10 {
		if n, err := write(); err != nil {
			t.Fatalf("batch %d with space to spare: %v", n, err)
		}
	}

	// The disk fills: past 64 KiB more of the audit file, which every
	// write appends to (the store's file, larger, fails on writes past
	// that offset too).
	full := func() {
		if audited {
			setFileSizeLimit(t, p.cmd.Process.Pid, uint64(largestFile(t, filepath.Join(dir, "audit")))+64<<10)
		} else {
			setFileSizeLimit(t, p.cmd.Process.Pid, uint64(largestFile(t, dir))) // the store's file, which may not grow
		}
	}
	full()
	seen := map[string]bool{}
	failed := 0
	for i := 0; failed < 5; i++ {
		if i == 5000 {
			t.Fatalf("5,000 batches written past the file size limit without 5 failures: the limit did not take")
		}
		n, err := write()
		if err == nil {
			continue
		}
		failed++
		msg := status.Convert(err).Message()
		if !seen[msg] {
			seen[msg] = true
			t.Logf("batch %d on a full disk: %v", n, err)
		}
		if c := status.Code(err); (c != codes.Unavailable && c != codes.Internal && c != codes.ResourceExhausted) || !strings.Contains(msg, "file too large") {
			t.Errorf("batch %d on a full disk: %v; want Unavailable, Internal or ResourceExhausted saying the file is too large", n, err)
		}
	}
	// Reads still work.
	if _, err := pb.NewSchemaServiceClient(conn).ReadSchema(t.Context(), &pb.ReadSchemaRequest{}); err != nil {
		t.Errorf("ReadSchema on a full disk: %v", err)
	}
	t.Logf("disk full after %d batches acknowledged; %d writes failed", ledger.ackedCount(), failed)

	// Space returns: writes succeed again, without a restart.
	setFileSizeLimit(t, p.cmd.Process.Pid, 0)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := write(); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("no write succeeded within 30s of space returning: %v; log:\n%s", err, p.logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	for range 10 {
		if n, err := write(); err != nil {
			t.Fatalf("batch %d after space returned: %v", n, err)
		}
	}

	// Full again, and killed among failing writes from several writers.
	full()
	var fails atomic.Int64
	var dead atomic.Bool
	var writers sync.WaitGroup
	for range crashWriters {
		writers.Go(func() {
			for !dead.Load() {
				if _, err := write(); err != nil {
					fails.Add(1)
				}
			}
		})
	}
	for giveUp := time.Now().Add(30 * time.Second); fails.Load() < 10 && time.Now().Before(giveUp); {
		time.Sleep(time.Millisecond)
	}
	p.kill()
	dead.Store(true)
	writers.Wait()
	if fails.Load() == 0 {
		t.Fatal("no write failed on the second full disk: the test proved nothing")
	}

	// Restarted with space: everything acknowledged is there.
	p = startProcess(t, bin, args...)
	conn = dial(t, p.waitReady(t, 30*time.Second), crashKey)
	verifyCrashState(t, 1, pb.NewRelationshipServiceClient(conn), ledger, 0)
	if audited {
		verifyCrashAudit(t, 1, pb.NewAuditServiceClient(conn), ledger, auditVerifyArgs(dsArgs))
	}
	t.Logf("after the restart: %d batches acknowledged, all there", ledger.ackedCount())
	p.stop(t)
}
