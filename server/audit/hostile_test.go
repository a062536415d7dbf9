package audit_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/server/audit"
)

// hugeEvent is the worst a caller could send: every field 1 MiB of a
// character JSON escapes to 6 bytes, long lists and a long chain.
func hugeEvent(code string) *audit.Event {
	big := strings.Repeat("<", 1<<20)
	chain := make([]audit.Link, 1000)
	for i := range chain {
		chain[i] = audit.Link{Subject: "agent:" + big[:4096], Grant: audit.Decision(big), Link: audit.Decision(big), Missing: make([]string, 100)}
		for j := range chain[i].Missing {
			chain[i].Missing[j] = big[:1000]
		}
	}
	missing := make([]string, 10000)
	for i := range missing {
		missing[i] = big[:1000]
	}
	return &audit.Event{
		RequestID: big, Caller: big, Source: big, Transport: big, Operation: audit.OpCheck,
		Resource: big, Permission: big, Subject: big, OnBehalfOf: big, Principal: big, Chain: chain,
		Context:  map[string]any{"blob": big, "list": []any{big, big}},
		Decision: audit.Error, Reason: big, Missing: missing, Code: code, Error: big,
		Update: big, Caveat: big, Detail: big,
	}
}

func TestFieldCapsBoundEveryRecord(t *testing.T) {
	dir := t.TempDir()
	writeTrail(t, dir, 0, hugeEvent("Unauthenticated"), hugeEvent("InvalidArgument"), checkEvent(1))
	files := trailFiles(t, dir)
	data, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d records, want 3", len(lines))
	}
	for i, line := range lines[:2] {
		// Over 100 MiB in, at most MaxRecordBytes out.
		if len(line) > audit.MaxRecordBytes {
			t.Errorf("record %d is %d bytes, over MaxRecordBytes (%d): the caps did not bound it", i+1, len(line), audit.MaxRecordBytes)
		}
		t.Logf("record %d: %d bytes", i+1, len(line))
	}
	p, err := audit.QueryDir(ctx(t), dir, audit.Query{})
	if err != nil {
		t.Fatal(err)
	}
	refused, failed, normal := p.Events[0], p.Events[1], p.Events[2]
	if refused.Context != nil {
		t.Errorf("a refused call recorded its context: %v", refused.Context)
	}
	if _, ok := failed.Context["context_cut"]; !ok || len(failed.Context) != 1 {
		t.Errorf("an oversized context was not replaced by a note: %v", failed.Context)
	}
	for name, f := range map[string]struct {
		v   string
		cap int
	}{
		"request_id": {failed.RequestID, audit.CapShort}, "caller": {failed.Caller, audit.CapShort},
		"resource": {failed.Resource, audit.CapObject}, "subject": {failed.Subject, audit.CapObject},
		"error": {failed.Error, audit.CapText}, "detail": {failed.Detail, audit.CapText},
	} {
		stored, _ := json.Marshal(f.v) // the encoder escapes as encoding/json does
		if len(stored)-2 > f.cap || !strings.HasSuffix(f.v, fmt.Sprintf("…[%d bytes cut]", 1<<20)) {
			t.Errorf("%s: %d bytes stored ending %q, want at most %d ending in the cut marker", name, len(stored)-2, f.v[max(len(f.v)-24, 0):], f.cap)
		}
	}
	if len(failed.Chain) != audit.CapChain {
		t.Errorf("chain of %d members recorded, want %d", len(failed.Chain), audit.CapChain)
	}
	if len(failed.Missing) != audit.CapList || failed.Missing[audit.CapList-1] != fmt.Sprintf("…[%d more]", 10000-audit.CapList+1) {
		t.Errorf("missing list of %d entries ending %q, want %d, the last counting the rest", len(failed.Missing), failed.Missing[len(failed.Missing)-1], audit.CapList)
	}
	if normal.Context["task"] != "T-1" || normal.Resource != "doc:d1" {
		t.Errorf("a normal event was changed by the caps: %+v", normal)
	}
	if rep := mustVerify(t, dir); !rep.OK() {
		t.Fatalf("capped trail does not verify: %v", rep.Failure)
	}
}

// bulkyEvent is about 16 KiB stored, the caps' worth of text.
func bulkyEvent(i int) *audit.Event {
	ev := checkEvent(i)
	ev.Error = strings.Repeat("e", audit.CapText)
	ev.Detail = strings.Repeat("d", audit.CapText)
	ev.Context = map[string]any{"note": strings.Repeat("c", audit.CapContext-100)}
	return ev
}

func TestQueryPagesAreBoundedByBytes(t *testing.T) {
	dir := t.TempDir()
	const n = 200 // ~3.3 MB
	evs := make([]*audit.Event, n)
	for i := range evs {
		evs[i] = bulkyEvent(i)
	}
	writeTrail(t, dir, 0, evs...)
	for _, desc := range []bool{false, true} {
		t.Run(fmt.Sprintf("descending=%v", desc), func(t *testing.T) {
			q := audit.Query{Limit: audit.MaxLimit, Descending: desc}
			seen := map[uint64]bool{}
			pages := 0
			for {
				p, err := audit.QueryDir(ctx(t), dir, q)
				if err != nil {
					t.Fatal(err)
				}
				pages++
				size := 0
				for _, ev := range p.Events {
					if seen[ev.Seq] {
						t.Fatalf("seq %d returned twice", ev.Seq)
					}
					seen[ev.Seq] = true
					size += len(reencode(t, ev))
				}
				if size > audit.MaxPageBytes+20<<10 {
					t.Fatalf("page %d holds %d bytes of records, over the %d-byte bound", pages, size, audit.MaxPageBytes)
				}
				if p.Next == "" {
					break
				}
				q.After = p.Next
			}
			if len(seen) != n || pages < 4 {
				t.Fatalf("%d events over %d pages, want all %d over at least 4 pages", len(seen), pages, n)
			}
		})
	}
}

// retentionLog is a Log over a file sink with small files and a retention.
func retentionLog(t *testing.T, dir string, r audit.Retention) *audit.Log {
	t.Helper()
	sink, err := audit.OpenFileSink(dir, 4<<10, nil)
	if err != nil {
		t.Fatal(err)
	}
	sink.SetRetention(r)
	l, err := audit.New(ctx(t), audit.Options{Sink: sink, Buffer: 16, BatchSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestRetentionBySizeKeepsTheChainVerifiable(t *testing.T) {
	dir := t.TempDir()
	l := retentionLog(t, dir, audit.Retention{MaxBytes: 16 << 10})
	for i := range 300 {
		if err := l.Record(ctx(t), checkEvent(i)); err != nil {
			t.Fatal(err)
		}
		if i%10 == 0 {
			if err := l.Flush(ctx(t)); err != nil { // let retention run between rotations
				t.Fatal(err)
			}
		}
	}
	if err := l.Close(ctx(t)); err != nil {
		t.Fatal(err)
	}
	files := trailFiles(t, dir)
	var total int64
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		total += st.Size()
	}
	// The bound, plus the file being written and the retention records.
	if total > 16<<10+2*4<<10 {
		t.Errorf("trail holds %d bytes in %d files, retention bound 16 KiB", total, len(files))
	}
	if strings.HasSuffix(files[0], fmt.Sprintf("%020d.jsonl", 1)) {
		t.Fatalf("the first file was kept: retention deleted nothing (%d files)", len(files))
	}
	rep := mustVerify(t, dir)
	if !rep.OK() {
		t.Fatalf("trail with a deleted prefix does not verify: %v", rep.Failure)
	}
	if len(rep.Warnings) == 0 || !strings.Contains(rep.Warnings[len(rep.Warnings)-1].Msg, "deleted by retention") {
		t.Errorf("the report does not say a prefix was deleted by retention: %v", rep.Warnings)
	}
	// The newest retention record names the hash the first kept record
	// follows.
	first, err := audit.QueryDir(ctx(t), dir, audit.Query{Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	ret, err := audit.QueryDir(ctx(t), dir, audit.Query{Operations: []audit.Operation{audit.OpRetention}, Limit: 1, Descending: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(ret.Events) != 1 {
		t.Fatal("no audit_retention record in the kept trail")
	}
	if r, f := ret.Events[0], first.Events[0]; uint64(r.Count)+1 != f.Seq || r.Detail != f.PrevHash {
		t.Errorf("retention record says through seq %d hash %s; the trail starts at seq %d after %s", r.Count, r.Detail, f.Seq, f.PrevHash)
	}

	// Removing one more file by hand is caught: no record accounts for it.
	if err := os.Remove(files[0]); err != nil {
		t.Fatal(err)
	}
	if rep := mustVerify(t, dir); rep.OK() || !strings.Contains(rep.Failure.Msg, "no audit_retention record") {
		t.Fatalf("a prefix removed without a retention record verified: %+v", rep.Failure)
	}
}

func TestRetentionByAge(t *testing.T) {
	dir := t.TempDir()
	writeTrail(t, dir, 4<<10, events(100)...)
	files := trailFiles(t, dir)
	if len(files) < 4 {
		t.Fatalf("%d files, want several", len(files))
	}
	old := time.Now().Add(-48 * time.Hour)
	for _, f := range files[:2] {
		if err := os.Chtimes(f, old, old); err != nil {
			t.Fatal(err)
		}
	}
	l := retentionLog(t, dir, audit.Retention{MaxAge: 24 * time.Hour})
	if err := l.Record(ctx(t), checkEvent(100)); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(ctx(t)); err != nil {
		t.Fatal(err)
	}
	kept := trailFiles(t, dir)
	for _, f := range files[:2] {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is older than the retention and was kept", filepath.Base(f))
		}
	}
	if kept[0] != files[2] {
		t.Errorf("first kept file %s, want %s (only the old prefix goes)", filepath.Base(kept[0]), filepath.Base(files[2]))
	}
	if rep := mustVerify(t, dir); !rep.OK() {
		t.Fatalf("trail does not verify after age retention: %v", rep.Failure)
	}
}

// syncSink counts syncs and the records written before each.
type syncSink struct {
	gateSink
	syncs  atomic.Int64
	synced atomic.Uint64 // highest seq written when last synced
}

func (s *syncSink) Sync() error {
	s.syncs.Add(1)
	s.mu.Lock()
	s.synced.Store(s.seq)
	s.mu.Unlock()
	return nil
}

func TestRecordDurableReturnsAfterTheSyncAndSharesIt(t *testing.T) {
	s := &syncSink{gateSink: gateSink{gate: make(chan struct{})}}
	close(s.gate)
	l, err := audit.New(ctx(t), audit.Options{Sink: s})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close(ctx(t))
	// Asynchronous checks do not sync.
	for i := range 10 {
		if err := l.Record(ctx(t), checkEvent(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Flush(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if n := s.syncs.Load(); n != 0 {
		t.Fatalf("%d syncs for asynchronous records", n)
	}
	const writers, each = 16, 20
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				ev := checkEvent(w*each + i)
				ev.Operation = audit.OpWriteRelationships
				if err := l.RecordDurable(ctx(t), ev); err != nil {
					errs <- err
					return
				}
				if s.synced.Load() < ev.Seq {
					errs <- fmt.Errorf("RecordDurable returned for seq %d before a sync covered it (synced through %d)", ev.Seq, s.synced.Load())
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	n := s.syncs.Load()
	if n == 0 || n >= writers*each {
		t.Fatalf("%d syncs for %d durable records from %d writers: want at least one, and batches sharing them", n, writers*each, writers)
	}
	t.Logf("%d durable records, %d syncs", writers*each, n)
}

func TestSyncAllMakesRecordDurable(t *testing.T) {
	s := &syncSink{gateSink: gateSink{gate: make(chan struct{})}}
	close(s.gate)
	l, err := audit.New(ctx(t), audit.Options{Sink: s, SyncAll: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close(ctx(t))
	ev := checkEvent(1)
	if err := l.Record(ctx(t), ev); err != nil {
		t.Fatal(err)
	}
	if s.syncs.Load() == 0 || s.synced.Load() < ev.Seq {
		t.Fatalf("Record with SyncAll returned before a sync (syncs %d, synced through %d, seq %d)", s.syncs.Load(), s.synced.Load(), ev.Seq)
	}
}

func TestRecordDurableFailsWhenTheSinkFailsThroughShutdown(t *testing.T) {
	s := &syncSink{gateSink: gateSink{gate: make(chan struct{}), fails: 1 << 30}}
	close(s.gate)
	l, err := audit.New(ctx(t), audit.Options{Sink: s, AbortWait: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() { got <- l.RecordDurable(context.Background(), checkEvent(1)) }()
	waitFor(t, func() bool { return metric(t, l, "mandate_audit_write_errors_total", "") > 0 })
	c, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	l.Close(c)
	if err := <-got; err == nil {
		t.Fatal("RecordDurable reported success for an event the sink never took")
	}
}

// hungSink never returns from Write, ignoring its context, like a write to
// a dead network file system.
type hungSink struct {
	entered chan struct{}
	once    sync.Once
}

func (h *hungSink) Head(context.Context) (uint64, string, error) { return 0, "", nil }
func (h *hungSink) Describe() string                             { return "hung" }
func (h *hungSink) Close() error                                 { return nil }

func (h *hungSink) Write(context.Context, []audit.Record) error {
	h.once.Do(func() { close(h.entered) })
	select {}
}

func TestCloseIsBoundedWhenTheSinkHangs(t *testing.T) {
	s := &hungSink{entered: make(chan struct{})}
	l, err := audit.New(ctx(t), audit.Options{Sink: s, AbortWait: 100 * time.Millisecond, StuckWrite: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Record(ctx(t), checkEvent(1)); err != nil {
		t.Fatal(err)
	}
	<-s.entered
	// Once the write has been stuck past StuckWrite, a flush without a
	// deadline of its own fails at once instead of waiting for ever.
	time.Sleep(60 * time.Millisecond)
	if err := l.Flush(context.Background()); !errors.Is(err, audit.ErrSinkFailing) {
		t.Fatalf("Flush with the sink hung: %v, want ErrSinkFailing", err)
	}
	c, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- l.Close(c) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "stuck") {
			t.Fatalf("Close over a hung sink: %v, want an error saying it is stuck", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Close did not return: shutdown is unbounded when the sink hangs")
	}
}

func TestFlushFailsAtOnceWhileTheSinkFails(t *testing.T) {
	s := newGateSink()
	s.fails = 1 << 30
	close(s.gate)
	l, err := audit.New(ctx(t), audit.Options{Sink: s, AbortWait: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Record(ctx(t), checkEvent(1)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return metric(t, l, "mandate_audit_write_errors_total", "") > 0 })
	// A flush with no deadline of its own would otherwise wait out the
	// outage (shutdown then took the grace period twice).
	if err := l.Flush(context.Background()); !errors.Is(err, audit.ErrSinkFailing) {
		t.Fatalf("Flush during an outage: %v, want ErrSinkFailing", err)
	}
	c, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := l.Close(c); err == nil {
		t.Fatal("Close reported success with events lost")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 20s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestAsynchronousRecordsAreSyncedWithinTheInterval(t *testing.T) {
	s := &syncSink{gateSink: gateSink{gate: make(chan struct{})}}
	close(s.gate)
	l, err := audit.New(ctx(t), audit.Options{Sink: s, SyncInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close(ctx(t))
	ev := checkEvent(1)
	if err := l.Record(ctx(t), ev); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return s.synced.Load() >= 1 })
	n := s.syncs.Load()
	time.Sleep(100 * time.Millisecond)
	if s.syncs.Load() != n {
		t.Errorf("an idle trail was synced again (%d syncs, then %d)", n, s.syncs.Load())
	}
}
