package audit_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mandate-authz/mandate/server/audit"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// checkEvent is a delegated check: agent:b -> agent:a -> user:alice.
func checkEvent(i int) *audit.Event {
	return &audit.Event{
		Time:        t0.Add(time.Duration(i) * time.Second),
		RequestID:   fmt.Sprintf("req-%d", i),
		Caller:      "billing",
		Operation:   audit.OpCheck,
		Resource:    fmt.Sprintf("doc:d%d", i%3),
		Permission:  "view",
		Subject:     "agent:b",
		SubjectKind: audit.Agent,
		Principal:   "user:alice",
		Chain: []audit.Link{
			{Subject: "agent:b", Grant: audit.Allowed, Link: audit.Allowed},
			{Subject: "agent:a", Grant: audit.Allowed, Link: audit.Allowed},
			{Subject: "user:alice", Grant: audit.Allowed},
		},
		Context:  map[string]any{"task": fmt.Sprintf("T-%d", i)},
		Decision: audit.Allowed,
		Revision: uint64(10 + i),
	}
}

func personEvent(i int, who string, d audit.Decision) *audit.Event {
	return &audit.Event{
		Time: t0.Add(time.Duration(i) * time.Second), Caller: "web", Operation: audit.OpCheck,
		Resource: fmt.Sprintf("folder:f%d", i), Permission: "view",
		Subject: who, SubjectKind: audit.Person, Principal: who, Decision: d, Revision: 3,
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// writeTrail records events through a Log over a file sink in dir and
// closes it.
func writeTrail(t *testing.T, dir string, maxSize int64, events ...*audit.Event) {
	t.Helper()
	sink, err := audit.OpenFileSink(dir, maxSize, nil)
	if err != nil {
		t.Fatal(err)
	}
	l, err := audit.New(ctx(t), audit.Options{Sink: sink, Buffer: 16, BatchSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range events {
		if err := l.Record(ctx(t), ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(ctx(t)); err != nil {
		t.Fatal(err)
	}
}

func events(n int) []*audit.Event {
	out := make([]*audit.Event, n)
	for i := range out {
		out[i] = checkEvent(i)
	}
	return out
}

func trailFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "audit-*.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(m)
	return m
}

func mustVerify(t *testing.T, path string) audit.Report {
	t.Helper()
	rep, err := audit.Verify(ctx(t), path)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	dir := t.TempDir()
	writeTrail(t, dir, 0, events(3)...)
	files := trailFiles(t, dir)
	if len(files) != 1 || filepath.Base(files[0]) != "audit-00000000000000000001.jsonl" {
		t.Fatalf("files %v, want one audit-00000000000000000001.jsonl", files)
	}
	raw, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(raw), "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines, want 3", len(lines))
	}
	prev := ""
	for i, line := range lines {
		ev, err := audit.Decode([]byte(line))
		if err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
		if ev.Seq != uint64(i+1) || ev.PrevHash != prev || len(ev.Hash) != 64 {
			t.Errorf("line %d: seq %d prev %q hash %q; want seq %d prev %q", i+1, ev.Seq, ev.PrevHash, ev.Hash, i+1, prev)
		}
		if ev.Principal != "user:alice" || len(ev.Chain) != 3 || ev.Chain[1].Subject != "agent:a" || ev.Context["task"] != fmt.Sprintf("T-%d", i) {
			t.Errorf("line %d decoded as %+v", i+1, ev)
		}
		if !strings.HasSuffix(line, `,"hash":"`+ev.Hash+`"}`) {
			t.Errorf("line %d does not end with its hash: %s", i+1, line)
		}
		prev = ev.Hash
	}

	for name, mutate := range map[string]func(string) string{
		"decision changed": func(s string) string { return strings.Replace(s, `"decision":"allowed"`, `"decision":"denied"`, 1) },
		"space added":      func(s string) string { return strings.Replace(s, `"seq":1`, `"seq": 1`, 1) },
	} {
		_, err := audit.Decode([]byte(mutate(lines[0])))
		if !errors.Is(err, audit.ErrAltered) {
			t.Errorf("%s: got %v, want ErrAltered", name, err)
		}
	}
	for _, bad := range []string{"", "{}", "not json", `{"v":1,"hash":"x"}`, strings.Replace(lines[0], `"v":1`, `"v":9`, 1)} {
		if _, err := audit.Decode([]byte(bad)); !errors.Is(err, audit.ErrMalformed) {
			t.Errorf("Decode(%.40q) = %v, want ErrMalformed", bad, err)
		}
	}
}

func TestVerifyDetectsTampering(t *testing.T) {
	type tamper struct {
		name string
		// edit rewrites the lines of the trail's only file.
		edit     func(lines []string) []string
		wantLine int
		wantMsg  string
	}
	rehash := func(line string) string {
		// An attacker edits a record and recomputes its own hash: the
		// next record's prev_hash still gives it away.
		ev, _ := audit.Decode([]byte(line))
		ev.Decision = audit.Denied
		return reencode(t, ev)
	}
	for _, tc := range []tamper{
		{"edit a field", func(l []string) []string {
			l[4] = strings.Replace(l[4], `"resource":"doc:d1"`, `"resource":"doc:d2"`, 1)
			return l
		}, 5, "record seq 5 altered"},
		{"delete a line", func(l []string) []string { return append(l[:3:3], l[4:]...) }, 4, "record missing before this line: expected seq 4, found seq 5"},
		{"delete two lines", func(l []string) []string { return append(l[:3:3], l[5:]...) }, 4, "records 4 to 5"},
		{"swap two lines", func(l []string) []string { l[2], l[3] = l[3], l[2]; return l }, 3, "record missing before this line: expected seq 3, found seq 4"},
		{"duplicate a line", func(l []string) []string { return append(l[:4:4], l[3:]...) }, 5, "record out of order"},
		{"edit and rehash", func(l []string) []string { l[1] = rehash(l[1]); return l }, 3, "chain broken: prev_hash does not match the hash of the record before it (audit-00000000000000000001.jsonl:2"},
		{"delete the first line", func(l []string) []string { return l[1:] }, 1, "file name says its first record is seq 1 but it holds seq 2"},
		{"garbage line", func(l []string) []string { l[6] = "hello"; return l }, 7, "not an audit record"},
		{"empty line", func(l []string) []string { l[6] = ""; return l }, 7, "empty line"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeTrail(t, dir, 0, events(8)...)
			if rep := mustVerify(t, dir); !rep.OK() || rep.Records != 8 {
				t.Fatalf("before tampering: %+v", rep)
			}
			file := trailFiles(t, dir)[0]
			raw, _ := os.ReadFile(file)
			lines := strings.Split(strings.TrimSuffix(string(raw), "\n"), "\n")
			lines = tc.edit(lines)
			if err := os.WriteFile(file, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			rep := mustVerify(t, dir)
			if rep.OK() {
				t.Fatalf("verify passed a tampered trail: %+v", rep)
			}
			if rep.Failure.At.Line != tc.wantLine || filepath.Base(rep.Failure.At.File) != filepath.Base(file) {
				t.Errorf("failure at %s, want %s:%d (%s)", rep.Failure.At, filepath.Base(file), tc.wantLine, rep.Failure.Msg)
			}
			if !strings.Contains(rep.Failure.Msg, tc.wantMsg) {
				t.Errorf("failure %q does not say %q", rep.Failure.Msg, tc.wantMsg)
			}
		})
	}
}

// reencode writes ev as a record with a valid hash of its own, keeping its
// seq and prev_hash, as an attacker rewriting one record would.
func reencode(t *testing.T, ev *audit.Event) string {
	t.Helper()
	var buf bytes.Buffer
	sink := audit.NewWriterSink("buf", &buf, "")
	seq, prev := ev.Seq, ev.PrevHash
	// A Log numbers from its sink's head: one whose head is the record's
	// predecessor re-encodes it in place.
	l, err := audit.New(context.Background(), audit.Options{Sink: headSink{sink, seq - 1, prev}})
	if err != nil {
		t.Fatal(err)
	}
	ev.Hash = ""
	if err := l.Record(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

// headSink starts a chain at a given head.
type headSink struct {
	*audit.WriterSink
	seq  uint64
	hash string
}

func (h headSink) Head(context.Context) (uint64, string, error) { return h.seq, h.hash, nil }

func TestRotationAndResume(t *testing.T) {
	dir := t.TempDir()
	all := events(40)
	// Each record is ~500 bytes: a 2 KiB limit rotates every few records.
	writeTrail(t, dir, 2048, all[:25]...)
	files := trailFiles(t, dir)
	if len(files) < 5 {
		t.Fatalf("%d files after 25 records with a 2 KiB limit, want several", len(files))
	}
	for _, f := range files {
		st, _ := os.Stat(f)
		if st.Size() > 2048 {
			t.Errorf("%s is %d bytes, over the 2048-byte limit", f, st.Size())
		}
	}
	// A restarted server continues the chain.
	writeTrail(t, dir, 2048, all[25:]...)
	rep := mustVerify(t, dir)
	if !rep.OK() || rep.Records != 40 || rep.Heads[""].Seq != 40 || len(rep.Warnings) != 0 {
		t.Fatalf("after resume: %+v", rep)
	}

	// One file on its own verifies, warning that its chain starts earlier.
	files = trailFiles(t, dir)
	one := mustVerify(t, files[2])
	if !one.OK() || len(one.Warnings) != 1 || !strings.Contains(one.Warnings[0].Msg, "earlier files") {
		t.Errorf("single file: %+v", one)
	}

	// Removing a middle file breaks the chain at the next file's first line.
	if err := os.Remove(files[2]); err != nil {
		t.Fatal(err)
	}
	rep = mustVerify(t, dir)
	if rep.OK() || rep.Failure.At.File != filepath.Base(files[3]) || rep.Failure.At.Line != 1 || !strings.Contains(rep.Failure.Msg, "missing") {
		t.Errorf("middle file removed: %+v", rep.Failure)
	}
	// Removing the first file: the trail starts mid-chain.
	if err := os.Remove(files[0]); err != nil {
		t.Fatal(err)
	}
	rep = mustVerify(t, dir)
	if rep.OK() || rep.Failure.At.File != filepath.Base(files[1]) || !strings.Contains(rep.Failure.Msg, "expected seq 1") {
		t.Errorf("first file removed: %+v", rep.Failure)
	}
}

func TestTornTailResumesInNewFile(t *testing.T) {
	dir := t.TempDir()
	writeTrail(t, dir, 0, events(3)...)
	file := trailFiles(t, dir)[0]
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"v":1,"seq":4,"time":"2026-`) // a crash mid-write
	f.Close()
	writeTrail(t, dir, 0, events(2)...)
	files := trailFiles(t, dir)
	if len(files) != 2 || filepath.Base(files[1]) != "audit-00000000000000000004.jsonl" {
		t.Fatalf("files %v: want the trail to continue in audit-...4.jsonl", files)
	}
	rep := mustVerify(t, dir)
	if !rep.OK() || rep.Records != 5 || len(rep.Warnings) != 1 || rep.Warnings[0].At.Line != 4 || !strings.Contains(rep.Warnings[0].Msg, "incomplete last line") {
		t.Errorf("torn tail: %+v", rep)
	}
}

func TestCorruptTailRefusesToStart(t *testing.T) {
	dir := t.TempDir()
	writeTrail(t, dir, 0, events(2)...)
	file := trailFiles(t, dir)[0]
	raw, _ := os.ReadFile(file)
	os.WriteFile(file, bytes.Replace(raw, []byte(`"decision":"allowed"`), []byte(`"decision":"denied!"`), 2), 0o600)
	_, err := audit.OpenFileSink(dir, 0, nil)
	if err == nil || !strings.Contains(err.Error(), "is not valid") || !strings.Contains(err.Error(), "mandate audit verify") {
		t.Fatalf("OpenFileSink on an altered last record: %v", err)
	}
}

func TestDirectoryLock(t *testing.T) {
	dir := t.TempDir()
	a, err := audit.OpenFileSink(dir, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := audit.OpenFileSink(dir, 0, nil); err == nil || !strings.Contains(err.Error(), "in use by another Mandate server") {
		t.Errorf("second writer: %v", err)
	}
	a.Close()
	b, err := audit.OpenFileSink(dir, 0, nil)
	if err != nil {
		t.Fatalf("after the first closed: %v", err)
	}
	b.Close()
}

// gateSink blocks writes until opened, and can fail them.
type gateSink struct {
	mu      sync.Mutex
	gate    chan struct{}
	fails   int
	written []*audit.Event
	lines   bytes.Buffer
	seq     uint64
}

func newGateSink() *gateSink { return &gateSink{gate: make(chan struct{})} }

func (g *gateSink) Head(context.Context) (uint64, string, error) { return 0, "", nil }
func (g *gateSink) Describe() string                             { return "gate" }
func (g *gateSink) Close() error                                 { return nil }
func (g *gateSink) Write(_ context.Context, recs []audit.Record) error {
	<-g.gate
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.fails > 0 {
		g.fails--
		return errors.New("disk full")
	}
	for _, r := range recs {
		if r.Event.Seq <= g.seq {
			continue
		}
		g.written = append(g.written, r.Event)
		g.lines.Write(r.Line)
		g.seq = r.Event.Seq
	}
	return nil
}

func (g *gateSink) events() []*audit.Event {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]*audit.Event(nil), g.written...)
}

// metric returns a counter of the Log's metrics (with the reason label
// when given).
func metric(t *testing.T, l *audit.Log, name, reason string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(l)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if reason == "" {
				return m.GetCounter().GetValue()
			}
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "reason" && lp.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func droppedTotal(t *testing.T, l *audit.Log, reason string) float64 {
	return metric(t, l, "mandate_audit_events_dropped_total", reason)
}

func TestDropPolicyCountsAndRecordsLoss(t *testing.T) {
	g := newGateSink()
	l, err := audit.New(ctx(t), audit.Options{Sink: g, Buffer: 4, BatchSize: 2, Overflow: audit.Drop})
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	for i := range n {
		if err := l.Record(ctx(t), personEvent(i, "user:bob", audit.Allowed)); err != nil {
			t.Fatal(err)
		}
	}
	dropped := droppedTotal(t, l, "queue_full")
	// The writer holds at most one batch while blocked, the queue 4.
	if dropped < n-4-2-1 {
		t.Fatalf("dropped %v of %d with a queue of 4 and a blocked sink", dropped, n)
	}
	close(g.gate)
	if err := l.Record(ctx(t), personEvent(n, "user:bob", audit.Allowed)); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(ctx(t)); err != nil {
		t.Fatal(err)
	}
	dropped = droppedTotal(t, l, "queue_full") // the last one may have been dropped too
	var kept, lossRecorded int64
	for _, ev := range g.events() {
		if ev.Operation == audit.OpEventsDropped {
			lossRecorded += ev.Count
			continue
		}
		kept++
	}
	if float64(lossRecorded) != dropped || kept+lossRecorded != n+1 {
		t.Errorf("kept %d, loss recorded in the trail %d, counted %v: every one of %d events must be kept or recorded as lost", kept, lossRecorded, dropped, n+1)
	}
	// The loss record is part of the chain.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "audit-00000000000000000001.jsonl"), g.lines.Bytes(), 0o600)
	if rep := mustVerify(t, dir); !rep.OK() {
		t.Errorf("trail with a loss record: %v", rep.Failure)
	}
}

func TestBlockPolicyWaitsThenFailsAtDeadline(t *testing.T) {
	g := newGateSink()
	l, err := audit.New(ctx(t), audit.Options{Sink: g, Buffer: 2, BatchSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	// Fill the writer (one blocked batch) and the queue.
	for i := range 3 {
		if err := l.Record(ctx(t), personEvent(i, "user:bob", audit.Allowed)); err != nil {
			t.Fatal(err)
		}
	}
	for deadline := time.Now().Add(5 * time.Second); ; {
		short, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		err := l.Record(short, personEvent(3, "user:bob", audit.Allowed))
		cancel()
		if err != nil {
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("blocked Record: %v", err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Record never blocked with a full queue")
		}
	}
	if got := droppedTotal(t, l, "deadline"); got < 1 {
		t.Errorf("a Record that gave up at its deadline is not counted: %v", got)
	}
	// A waiting Record proceeds once the sink drains.
	waited := make(chan error, 1)
	go func() { waited <- l.Record(ctx(t), personEvent(4, "user:carol", audit.Allowed)) }()
	select {
	case err := <-waited:
		t.Fatalf("Record returned %v with the queue still full", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(g.gate)
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	if err := l.Flush(ctx(t)); err != nil {
		t.Fatal(err)
	}
	evs := g.events()
	if evs[len(evs)-1].Subject != "user:carol" {
		t.Errorf("flush returned before the last event was written: %v", evs[len(evs)-1])
	}
	if err := l.Close(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if err := l.Record(ctx(t), personEvent(9, "user:bob", audit.Allowed)); !errors.Is(err, audit.ErrClosed) {
		t.Errorf("Record after Close: %v", err)
	}
}

func TestFailingSinkIsRetried(t *testing.T) {
	g := newGateSink()
	g.fails = 3
	close(g.gate)
	l, err := audit.New(ctx(t), audit.Options{Sink: g})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		l.Record(ctx(t), personEvent(i, "user:bob", audit.Allowed))
	}
	if err := l.Close(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if n := len(g.events()); n != 5 {
		t.Errorf("%d events written after 3 failures, want 5", n)
	}
	if v := metric(t, l, "mandate_audit_write_errors_total", ""); v != 3 {
		t.Errorf("write errors %v, want 3", v)
	}
}
