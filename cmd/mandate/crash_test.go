package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server/audit"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/embedded"
	"github.com/mandate-authz/mandate/store/rel"
)

var crashSeed = flag.Uint64("crash.seed", 0, "seed of TestCrashRecovery's kill points (0: random, logged)")

const (
	crashKey    = "crash-test-key"
	crashSchema = "definition user {}\n\ndefinition folder {\n\trelation viewer: user\n}\n\ndefinition doc {\n\trelation viewer: user\n}\n"
	// batchSize relationships make one atomic WriteRelationships.
	batchSize = 50
	// crashWriters write batches concurrently, so several are in flight
	// (and may share a commit) when the server dies.
	crashWriters = 3
	crashRounds  = 5
	// preloaded relationships (embedded only) make every restart load a
	// store large enough for startup to report progress.
	preloaded = 60_000
)

// crashDatastore is a datastore the crash test runs `mandate serve` over.
type crashDatastore struct {
	name string
	// setup prepares a fresh datastore and returns the serve arguments that
	// select it, and how many folder relationships it already holds.
	setup func(t *testing.T, bin string) (args []string, preloaded int)
}

// TestCrashRecovery streams acknowledged writes into `mandate serve` while
// killing it with SIGKILL at random points, restarting it on the same data
// each time: every acknowledged batch must be there after the restart, no
// batch may be half applied (one whose acknowledgement was lost may be
// entirely there or entirely absent, and stays so), and revision tokens
// issued before a crash stay valid after it. Every acknowledged batch is in
// the audit trail too (a write's records are durable before its answer),
// and `mandate audit verify` passes on the trail after each crash.
func TestCrashRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and restarts it several times; skipped with -short")
	}
	seed := *crashSeed
	if seed == 0 {
		seed = rand.Uint64()
	}
	t.Logf("seed %d (rerun with -crash.seed %d)", seed, seed)
	bin := buildMandate(t)
	for _, ds := range []crashDatastore{
		{"embedded", setupEmbedded},
		{"postgres", setupPostgres},
	} {
		t.Run(ds.name, func(t *testing.T) {
			args, folders := ds.setup(t, bin)
			runCrashRounds(t, bin, args, folders, rand.New(rand.NewPCG(seed, 0)))
		})
	}
}

func setupEmbedded(t *testing.T, _ string) ([]string, int) {
	dir := filepath.Join(t.TempDir(), "data")
	st, err := embedded.Open(t.Context(), dir, embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.WriteSchema(t.Context(), crashSchema); err != nil {
		t.Fatal(err)
	}
	muts := make([]store.Mutation, 0, 10_000)
	for i := range preloaded {
		muts = append(muts, store.Mutation{Op: store.Touch, Rel: rel.Relationship{
			Resource: rel.Object{Type: "folder", ID: fmt.Sprintf("f%d", i)},
			Relation: "viewer",
			Subject:  rel.Subject{Type: "user", ID: fmt.Sprintf("u%d", i%100)},
		}})
		if len(muts) == cap(muts) {
			if _, err := st.Write(t.Context(), nil, muts); err != nil {
				t.Fatal(err)
			}
			muts = muts[:0]
		}
	}
	return []string{"--datastore-engine", "embedded", "--data-dir", dir}, preloaded
}

func setupPostgres(t *testing.T, bin string) ([]string, int) {
	uri := freshPostgresDatabase(t)
	// Even on PostgreSQL, serve keeps its capability token keys in --data-dir.
	dir := t.TempDir()
	common := []string{"--grpc-preshared-key", crashKey, "--grpc-addr", "127.0.0.1:0", "--http-addr", "",
		"--datastore-engine", "postgres", "--datastore-conn-uri", uri, "--data-dir", dir}
	// Until the postgres engine is in this build, skip rather than fail
	// the whole tree; nothing else may make this case skip.
	if engineUnknown(t, bin, common...) {
		t.Skip(`mandate serve --datastore-engine postgres reports "unknown engine": this build has no postgres datastore yet`)
	}
	return []string{"--datastore-engine", "postgres", "--datastore-conn-uri", uri, "--datastore-migrate", "--data-dir", dir}, 0
}

// crashLedger is what the client knows about each batch it sent.
type crashLedger struct {
	mu sync.Mutex
	// next is the next batch number to send.
	next int
	// acked batches must be present; their tokens must stay valid.
	acked map[int]bool
	// inDoubt batches were sent but not acknowledged: all or nothing.
	inDoubt map[int]bool
	// absent batches were in doubt and found absent: they must stay so.
	absent    map[int]bool
	lastToken *pb.RevisionToken
	// answered batches were acknowledged by the server itself (acked also
	// holds in-doubt batches found applied): their audit records must be
	// in the trail.
	answered map[int]bool
}

func (l *crashLedger) ackedCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acked)
}

func (l *crashLedger) take() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.next
	l.next++
	return n
}

func runCrashRounds(t *testing.T, bin string, dsArgs []string, folders int, rng *rand.Rand) {
	args := append([]string{"--grpc-preshared-key", crashKey, "--grpc-addr", "127.0.0.1:0", "--http-addr", "",
		"--grpc-shutdown-grace-period", "5s"}, dsArgs...)
	ledger := &crashLedger{acked: map[int]bool{}, inDoubt: map[int]bool{}, absent: map[int]bool{}, answered: map[int]bool{}}
	killedWriting := 0
	schemaWritten := false
	// One round, at random, kills the server while it starts up.
	startupKill := rng.IntN(crashRounds)
	for round := range crashRounds + 1 {
		start := time.Now()
		p := startProcess(t, bin, args...)
		if round == startupKill {
			time.Sleep(time.Duration(rng.IntN(200)) * time.Millisecond)
			p.kill()
			t.Logf("round %d: killed during startup after %v", round, time.Since(start).Round(time.Millisecond))
			continue
		}
		addr := p.waitReady(t, 30*time.Second)
		loaded := time.Since(start)
		if folders >= 50_000 && !strings.Contains(p.logs.String(), `msg="loading relationships" loaded=50000`) {
			t.Fatalf("round %d: startup over %d relationships logged no loading progress; log:\n%s", round, folders, p.logs.String())
		}
		conn := dial(t, addr, crashKey)
		rels := pb.NewRelationshipServiceClient(conn)
		if !schemaWritten {
			schemaWritten = true
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			_, err := pb.NewSchemaServiceClient(conn).WriteSchema(ctx, &pb.WriteSchemaRequest{Schema: crashSchema})
			cancel()
			if err != nil {
				t.Fatalf("WriteSchema: %v", err)
			}
		}
		verifyCrashState(t, round, rels, ledger, folders)
		verifyCrashAudit(t, round, pb.NewAuditServiceClient(conn), ledger, auditVerifyArgs(dsArgs))
		if round == crashRounds {
			p.stop(t)
			break
		}

		// Write until the kill, at a random point up to half a second after
		// the round's first acknowledged write (so every round has
		// acknowledged writes to lose).
		delay := time.Duration(rng.IntN(500)) * time.Millisecond
		var dead atomic.Bool
		var writers sync.WaitGroup
		before := len(ledger.acked)
		writing := time.Now()
		for range crashWriters {
			writers.Go(func() { streamBatches(t, rels, ledger, dead.Load) })
		}
		for ledger.ackedCount() == before {
			if time.Since(writing) > 30*time.Second {
				dead.Store(true)
				p.kill()
				writers.Wait()
				t.Fatalf("round %d: no write acknowledged within 30s; log:\n%s", round, p.logs.String())
			}
			time.Sleep(time.Millisecond)
		}
		time.Sleep(delay)
		dead.Store(true)
		p.kill()
		writers.Wait()
		wrote := time.Since(writing)
		ledger.mu.Lock()
		acked, doubt := len(ledger.acked)-before, len(ledger.inDoubt)
		ledger.mu.Unlock()
		if doubt > 0 {
			killedWriting++
		}
		t.Logf("round %d: ready after %v; killed after %v of writing: %d batches acknowledged, %d in flight", round, loaded.Round(time.Millisecond), wrote.Round(time.Millisecond), acked, doubt)
	}
	if len(ledger.acked) == 0 || killedWriting == 0 {
		t.Fatalf("the test proved nothing: %d batches acknowledged, %d kills with writes in flight", len(ledger.acked), killedWriting)
	}
}

// crashBatch is the relationships of batch n: spread over several
// resources, so that one batch touches several places in the store.
func crashBatch(n int) []*pb.RelationshipUpdate {
	out := make([]*pb.RelationshipUpdate, batchSize)
	for j := range out {
		out[j] = &pb.RelationshipUpdate{
			Operation: pb.RelationshipUpdate_OPERATION_TOUCH,
			Relationship: &pb.Relationship{
				Resource: &pb.ObjectReference{ObjectType: "doc", ObjectId: fmt.Sprintf("b%d-%d", n, j%7)},
				Relation: "viewer",
				Subject:  &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: "user", ObjectId: fmt.Sprintf("u%d", j)}},
			},
		}
	}
	return out
}

var batchID = regexp.MustCompile(`^b(\d+)-\d+$`)

// streamBatches writes batches one after another until a write fails,
// which must be because the server was killed.
func streamBatches(t *testing.T, rels pb.RelationshipServiceClient, l *crashLedger, dead func() bool) {
	for {
		n := l.take()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		resp, err := rels.WriteRelationships(ctx, &pb.WriteRelationshipsRequest{Updates: crashBatch(n)})
		cancel()
		l.mu.Lock()
		if err == nil {
			l.acked[n] = true
			l.answered[n] = true
			l.lastToken = resp.GetWrittenAt()
			l.mu.Unlock()
			continue
		}
		l.inDoubt[n] = true
		l.mu.Unlock()
		if !dead() {
			t.Errorf("batch %d failed before the server was killed: %v", n, err)
		} else if c := status.Code(err); c != codes.Unavailable && c != codes.Canceled {
			t.Errorf("batch %d failed with %v after the kill; want Unavailable", n, err)
		}
		return
	}
}

// verifyCrashState reads every doc relationship after a restart and checks
// it against the ledger, settling the batches that were in doubt.
func verifyCrashState(t *testing.T, round int, rels pb.RelationshipServiceClient, l *crashLedger, folders int) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	consistency := &pb.Consistency{Requirement: &pb.Consistency_FullyConsistent{FullyConsistent: true}}
	if l.lastToken != nil {
		// A token from before the crash must still be understood.
		consistency = &pb.Consistency{Requirement: &pb.Consistency_AtLeastAsFresh{AtLeastAsFresh: l.lastToken}}
	}
	counts := map[int]int{}
	folderCount := 0
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	stream, err := rels.ExportRelationships(ctx, &pb.ExportRelationshipsRequest{Consistency: consistency})
	if err != nil {
		t.Fatalf("round %d: export: %v", round, err)
	}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("round %d: export (at least as fresh as the last acknowledged write): %v", round, err)
		}
		for _, r := range resp.GetRelationships() {
			if r.GetResource().GetObjectType() == "folder" {
				folderCount++
				continue
			}
			m := batchID.FindStringSubmatch(r.GetResource().GetObjectId())
			if m == nil {
				t.Fatalf("round %d: unexpected relationship %v", round, r)
			}
			n, _ := strconv.Atoi(m[1])
			counts[n]++
		}
	}
	if folderCount != folders {
		t.Fatalf("round %d: %d preloaded relationships, want %d", round, folderCount, folders)
	}
	for n := range l.acked {
		if counts[n] != batchSize {
			t.Fatalf("round %d: acknowledged batch %d has %d of its %d relationships after the restart", round, n, counts[n], batchSize)
		}
	}
	for n, c := range counts {
		switch {
		case c != batchSize:
			t.Fatalf("round %d: batch %d is half applied: %d of %d relationships", round, n, c, batchSize)
		case l.absent[n]:
			t.Fatalf("round %d: batch %d was absent after an earlier restart and has reappeared", round, n)
		case !l.acked[n] && !l.inDoubt[n]:
			t.Fatalf("round %d: batch %d is present but was never sent", round, n)
		}
	}
	for n := range l.inDoubt {
		if counts[n] == batchSize {
			l.acked[n] = true
		} else {
			l.absent[n] = true
		}
	}
	clear(l.inDoubt)
}

// auditVerifyArgs are the `mandate audit verify` arguments of the trail a
// server with these datastore flags keeps (--audit-sink auto).
func auditVerifyArgs(dsArgs []string) []string {
	for i, a := range dsArgs {
		switch a {
		case "--data-dir":
			return []string{filepath.Join(dsArgs[i+1], "audit")}
		case "--datastore-conn-uri":
			return []string{dsArgs[i+1], "--table", audit.DefaultTable}
		}
	}
	panic("no datastore location in the serve arguments")
}

// verifyCrashAudit checks, after a restart, that every write the server
// acknowledged before the crash has its records (one per relationship) in
// the audit trail, and that the trail verifies.
func verifyCrashAudit(t *testing.T, round int, auditc pb.AuditServiceClient, l *crashLedger, verifyArgs []string) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	counts := map[int]int{}
	var cursor *pb.Cursor
	for {
		resp, err := auditc.Query(ctx, &pb.AuditServiceQueryRequest{Operations: []string{"write_relationships"}, Resource: "doc",
			Decisions: []string{"ok"}, Limit: 1000, OptionalCursor: cursor})
		if err != nil {
			t.Fatalf("round %d: audit query: %v", round, err)
		}
		for _, ev := range resp.GetEvents() {
			_, id, _ := strings.Cut(ev.GetResource(), ":")
			if m := batchID.FindStringSubmatch(id); m != nil {
				n, _ := strconv.Atoi(m[1])
				counts[n]++
			}
		}
		if cursor = resp.GetNextCursor(); cursor == nil {
			break
		}
	}
	for n := range l.answered {
		if counts[n] != batchSize {
			t.Fatalf("round %d: acknowledged batch %d has %d of its %d write records in the audit trail after the crash", round, n, counts[n], batchSize)
		}
	}
	out, errOut, code := cli(t, "", append([]string{"audit", "verify"}, verifyArgs...)...)
	if code != 0 {
		t.Fatalf("round %d: mandate audit verify after the crash: exit %d\n%s%s", round, code, out, errOut)
	}
}
