package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/server/audit"
	"github.com/mandate-authz/mandate/store/memory"
)

const auditAdminKey = "audit-admin-key-41c7"

// auditServer is a server on loopback auditing to a file trail.
type auditServer struct {
	grpcAddr, httpAddr, dir string
	stop                    func() // stops the server and closes the trail
}

// startAuditServer serves with two named keys (billing: clientTestKey,
// admin) and a file trail in a temporary directory, through the same
// wiring as serve, and points the client environment at it.
func startAuditServer(t *testing.T) *auditServer {
	t.Helper()
	return startAuditServerWith(t, func(*auditOptions) {})
}

// startAuditServerWith is startAuditServer with its audit flags edited.
func startAuditServerWith(t *testing.T, edit func(*auditOptions)) *auditServer {
	t.Helper()
	dataDir := t.TempDir()
	st := memory.New()
	opts := &auditOptions{sink: "auto", maxFileSize: "1MiB", overflow: "block", buffer: 1024, redactKeys: []string{"ticket"}}
	edit(opts)
	l, err := openAudit(context.Background(), opts, "embedded", dataDir, st, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(st, engine.New(), server.Config{
		GRPCAddr:            "127.0.0.1:0",
		HTTPAddr:            "127.0.0.1:0",
		PresharedKeys:       []string{clientTestKey, auditAdminKey},
		PresharedKeyNames:   []string{"billing", "admin"},
		ShutdownGracePeriod: 5 * time.Second,
		Audit:               l,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("server: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("server did not stop within 15s")
		}
		closeAudit(l, discardLogger())
		st.Close()
	}
	t.Cleanup(stop)
	for deadline := time.Now().Add(5 * time.Second); !srv.Ready(); {
		if time.Now().After(deadline) {
			t.Fatal("server not ready within 5s")
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Setenv("MANDATE_ENDPOINT", srv.GRPCAddr().String())
	t.Setenv("MANDATE_TOKEN", clientTestKey)
	t.Setenv("MANDATE_INSECURE", "true")
	return &auditServer{grpcAddr: srv.GRPCAddr().String(), httpAddr: srv.HTTPAddr().String(), dir: filepath.Join(dataDir, "audit"), stop: stop}
}

// TestAuditEndToEnd: checks through a 2-link chain (agent:b -> agent:a ->
// user:alice) over gRPC, REST and the CLI; a query by principal returns them
// with the chain; the trail verifies, exports as OCSF, and verify fails at
// the line that was edited or deleted.
func TestAuditEndToEnd(t *testing.T) {
	as := startAuditServer(t)
	dir := t.TempDir()
	schemaFile := filepath.Join(dir, "schema.zed")
	os.WriteFile(schemaFile, []byte(clientTestSchema), 0o600)
	mustCLI(t, "schema", "write", schemaFile)
	mustCLI(t, "rel", "write",
		"agent:b#acts_for@agent:a", "agent:a#acts_for@user:alice",
		"doc:readme#viewer@user:alice", "doc:readme#viewer@agent:a", "doc:readme#viewer@agent:b",
		"doc:secret#viewer@user:alice", "doc:secret#viewer@agent:a")

	// 1. The CLI (gRPC): allowed through the chain, and denied because
	// agent:b itself holds no grant on doc:secret.
	if out := mustCLI(t, "check", "doc:readme#view", "agent:b", "--fully-consistent", "--context", `{"ticket":"T-17"}`); !strings.HasPrefix(out, "allowed") {
		t.Fatalf("check readme: %s", out)
	}
	if out := mustCLI(t, "check", "doc:secret#view", "agent:b", "--fully-consistent"); !strings.HasPrefix(out, "denied") {
		t.Fatalf("check secret: %s", out)
	}
	// 2. REST, with the admin key and a request ID of the client's.
	body := `{"resource":{"objectType":"doc","objectId":"readme"},"permission":"view","subject":{"object":{"objectType":"agent","objectId":"b"}},"consistency":{"fullyConsistent":true}}`
	req, _ := http.NewRequest(http.MethodPost, "http://"+as.httpAddr+"/v1/permissions/check", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+auditAdminKey)
	req.Header.Set("X-Request-Id", "rest-req-1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("REST check: HTTP %d", resp.StatusCode)
	}
	// 3. A check by alice herself, and one by someone else.
	mustCLI(t, "check", "doc:readme#view", "user:alice", "--fully-consistent")
	mustCLI(t, "check", "doc:readme#view", "user:bob", "--fully-consistent")

	// The query by principal returns alice's own check and the three made
	// on her behalf through the chain, with the chain.
	out := mustCLI(t, "audit", "query", "--principal", "user:alice", "--output", "json")
	var got []map[string]any
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("query output line %q: %v", sc.Text(), err)
		}
		got = append(got, m)
	}
	if len(got) != 4 {
		t.Fatalf("query --principal user:alice returned %d events, want 4 (3 through the chain, 1 direct):\n%s", len(got), out)
	}
	chainOf := func(m map[string]any) string {
		var names []string
		for _, l := range asSlice(m["chain"]) {
			names = append(names, l.(map[string]any)["subject"].(string))
		}
		return strings.Join(names, " -> ")
	}
	wantEvents := []struct {
		resource, subject, decision, reason, caller, chain string
	}{
		{"doc:readme", "agent:b", "allowed", "", "billing", "agent:b -> agent:a -> user:alice"},
		{"doc:secret", "agent:b", "denied", "agent_not_granted", "billing", "agent:b -> agent:a -> user:alice"},
		{"doc:readme", "agent:b", "allowed", "", "admin", "agent:b -> agent:a -> user:alice"},
		{"doc:readme", "user:alice", "allowed", "", "billing", ""},
	}
	for i, w := range wantEvents {
		m := got[i]
		if m["operation"] != "check" || m["resource"] != w.resource || m["subject"] != w.subject || m["decision"] != w.decision ||
			str(m["reason"]) != w.reason || m["caller"] != w.caller || chainOf(m) != w.chain || m["principal"] != "user:alice" || m["revision"] == nil {
			t.Errorf("event %d: %v\nwant %+v", i, m, w)
		}
	}
	if got[0]["subject_kind"] != "agent" || got[3]["subject_kind"] != "person" {
		t.Errorf("subject kinds %v, %v", got[0]["subject_kind"], got[3]["subject_kind"])
	}
	if got[2]["request_id"] != "rest-req-1" || got[2]["transport"] != "rest" || got[0]["transport"] != "grpc" {
		t.Errorf("REST event: request_id %v transport %v", got[2]["request_id"], got[2]["transport"])
	}
	ticket := str(got[0]["context"].(map[string]any)["ticket"])
	if !strings.HasPrefix(ticket, "hmac-sha256:") {
		t.Errorf("the redacted ticket was recorded as %q", ticket)
	}
	if strings.Contains(out, clientTestKey) || strings.Contains(out, auditAdminKey) {
		t.Error("a preshared key appears in the trail")
	}
	failedLink := asSlice(got[1]["chain"])[0].(map[string]any)
	if failedLink["failed"] != true || failedLink["grant"] != "denied" {
		t.Errorf("the denied chain does not mark agent:b as the failing member: %v", failedLink)
	}

	// By agent, and text output: the middle agent finds the three delegated
	// checks and the delegation written to it... and from it.
	text := mustCLI(t, "audit", "query", "--agent", "agent:a", "--operation", "check")
	if n := strings.Count(text, "\n"); n != 3 || !strings.Contains(text, "[agent:b -> agent:a -> user:alice]") || !strings.Contains(text, "reason=agent_not_granted") {
		t.Errorf("query --agent agent:a --operation check:\n%s", text)
	}
	writes := mustCLI(t, "audit", "query", "--operation", "write_relationships", "--resource", "agent")
	if n := strings.Count(writes, "\n"); n != 2 || !strings.Contains(writes, "create agent:b#acts_for@agent:a") {
		t.Errorf("delegations written:\n%s", writes)
	}
	denied := mustCLI(t, "audit", "query", "--decision", "denied")
	if strings.Count(denied, "\n") != 2 || !strings.Contains(denied, "doc:secret") || !strings.Contains(denied, "user:bob") {
		t.Errorf("query --decision denied:\n%s", denied)
	}
	// Paging: two pages of two.
	page1, errOut, code := cli(t, "", "audit", "query", "--principal", "user:alice", "--limit", "2")
	if code != 0 || strings.Count(page1, "\n") != 2 || !strings.Contains(errOut, "--cursor ") {
		t.Fatalf("page 1 (exit %d):\n%s%s", code, page1, errOut)
	}
	cursor := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(errOut), "more events: --cursor"))
	page2 := mustCLI(t, "audit", "query", "--principal", "user:alice", "--limit", "2", "--cursor", cursor)
	if strings.Count(page2, "\n") != 2 || page1 == page2 || !strings.Contains(page2, "user:alice") {
		t.Errorf("page 2:\n%s", page2)
	}
	if _, errOut, code := cli(t, "", "audit", "query", "--principal", "alice"); code != 1 || !strings.Contains(errOut, `principal: "alice": expected type:id`) {
		t.Errorf("bad --principal: exit %d %s", code, errOut)
	}

	// Stop the server: shutdown flushes the trail.
	as.stop()

	verified := mustCLI(t, "audit", "verify", as.dir)
	if !strings.HasPrefix(verified, "OK: ") {
		t.Fatalf("verify:\n%s", verified)
	}

	ocsf := mustCLI(t, "audit", "export", "--format", "ocsf", "--principal", "user:alice", as.dir)
	lines := strings.Split(strings.TrimSpace(ocsf), "\n")
	if len(lines) != 4 {
		t.Fatalf("OCSF export of alice's events: %d lines", len(lines))
	}
	var o audit.OCSFEvent
	if err := json.Unmarshal([]byte(lines[1]), &o); err != nil {
		t.Fatal(err)
	}
	if o.ClassUID != 6003 || o.Actor.User == nil || o.Actor.User.UID != "user:alice" || o.Actor.AppName != "billing" ||
		o.StatusID != 2 || o.StatusDetail != "agent_not_granted" || o.API.Operation != "Check" || o.Unmapped["ai_agent"].(map[string]any)["uid"] != "agent:b" {
		t.Errorf("OCSF event: %+v", o)
	}

	// Tamper with the trail: the denied check becomes allowed, then a line
	// is removed; verify names the line each time.
	files, _ := filepath.Glob(filepath.Join(as.dir, "audit-*.jsonl"))
	if len(files) != 1 {
		t.Fatalf("trail files: %v", files)
	}
	orig, _ := os.ReadFile(files[0])
	recs := strings.SplitAfter(string(orig), "\n")
	deniedLine := -1
	for i, l := range recs {
		if strings.Contains(l, `"resource":"doc:secret","permission":"view"`) && strings.Contains(l, `"decision":"denied"`) {
			deniedLine = i
		}
	}
	if deniedLine < 0 {
		t.Fatal("the denied check is not in the trail file")
	}
	name := filepath.Base(files[0])
	for _, tc := range []struct {
		name    string
		edit    func([]string) []string
		want    string
		wantMsg string
	}{
		{"edit", func(r []string) []string {
			r[deniedLine] = strings.Replace(r[deniedLine], `"decision":"denied"`, `"decision":"allowed"`, 1)
			return r
		}, name + ":" + strconv.Itoa(deniedLine+1), "altered"},
		{"delete", func(r []string) []string {
			return append(r[:deniedLine:deniedLine], r[deniedLine+1:]...)
		}, name + ":" + strconv.Itoa(deniedLine+1), "record missing before this line"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			edited := tc.edit(append([]string(nil), recs...))
			if err := os.WriteFile(files[0], []byte(strings.Join(edited, "")), 0o600); err != nil {
				t.Fatal(err)
			}
			defer os.WriteFile(files[0], orig, 0o600)
			out, _, code := cli(t, "", "audit", "verify", as.dir)
			if code != exitTrailBroken || !strings.Contains(out, "FAILED: "+tc.want+": ") || !strings.Contains(out, tc.wantMsg) {
				t.Errorf("verify after %s: exit %d, want %d naming %s (%s):\n%s", tc.name, code, exitTrailBroken, tc.want, tc.wantMsg, out)
			}
			if _, errOut, code := cli(t, "", "audit", "export", as.dir); code != exitTrailBroken || !strings.Contains(errOut, "nothing exported") {
				t.Errorf("export of a broken trail: exit %d %s", code, errOut)
			}
		})
	}
	if out := mustCLI(t, "audit", "verify", as.dir); !strings.HasPrefix(out, "OK") {
		t.Errorf("restored trail: %s", out)
	}
}

func asSlice(v any) []any {
	s, _ := v.([]any)
	return s
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// pgStore is a memory store that presents a PostgreSQL pool, as the
// postgres datastore does.
type pgStore struct {
	*memory.Store
	pool *pgxpool.Pool
}

func (p pgStore) Pool() *pgxpool.Pool { return p.pool }
func (p pgStore) Engine() string      { return "postgres" }

func TestOpenAuditFromFlags(t *testing.T) {
	dataDir := t.TempDir()
	st := memory.New()
	defer st.Close()
	ctx := context.Background()
	base := auditOptions{sink: "auto", maxFileSize: "100MiB", overflow: "block", buffer: 8192, table: audit.DefaultTable}
	for _, tc := range []struct {
		name   string
		edit   func(*auditOptions)
		want   string // error fragment, or "" for success
		sink   string // Describe prefix of the sink opened
		hasLog bool
	}{
		{"auto is a file in the data dir", func(o *auditOptions) {}, "", "file " + filepath.Join(dataDir, "audit"), true},
		{"explicit dir", func(o *auditOptions) { o.sink, o.dir = "file", filepath.Join(dataDir, "elsewhere") }, "", "file " + filepath.Join(dataDir, "elsewhere"), true},
		{"stdout", func(o *auditOptions) { o.sink = "stdout" }, "", "stdout", true},
		{"none", func(o *auditOptions) { o.sink = "none" }, "", "", false},
		{"unknown sink", func(o *auditOptions) { o.sink = "kafka" }, `--audit-sink "kafka": expected auto, file, stdout, postgres or none`, "", false},
		{"postgres without it", func(o *auditOptions) { o.sink = "postgres" }, "--audit-sink postgres needs --datastore-engine postgres", "", false},
		{"overflow", func(o *auditOptions) { o.overflow = "spill" }, `--audit-overflow: audit overflow policy "spill": expected block or drop`, "", false},
		{"buffer", func(o *auditOptions) { o.buffer = 0 }, "--audit-buffer 0", "", false},
		{"size", func(o *auditOptions) { o.maxFileSize = "lots" }, `--audit-max-file-size "lots"`, "", false},
		{"size units", func(o *auditOptions) { o.maxFileSize = "5 KiB"; o.dir = filepath.Join(dataDir, "small") }, "", "file", true},
		{"redaction", func(o *auditOptions) { o.redactKeys = []string{"email"}; o.dir = filepath.Join(dataDir, "r") }, "", "file", true},
		{"retention", func(o *auditOptions) { o.retention = "720h, 10GiB"; o.dir = filepath.Join(dataDir, "ret") }, "", "file", true},
		{"retention sync", func(o *auditOptions) { o.retention = "1GiB"; o.sync = true; o.dir = filepath.Join(dataDir, "ret2") }, "", "file", true},
		{"retention garbage", func(o *auditOptions) { o.retention = "forever" }, `--audit-retention "forever": expected an age (720h), a size (10GiB) or both`, "", false},
		{"retention twice", func(o *auditOptions) { o.retention = "1h,2h" }, `--audit-retention "1h,2h": expected one positive age`, "", false},
		{"retention on stdout", func(o *auditOptions) { o.sink, o.retention = "stdout", "1h" }, "--audit-retention applies to the file and postgres audit sinks only, not stdout", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := base
			tc.edit(&o)
			l, err := openAudit(ctx, &o, "embedded", dataDir, st, discardLogger())
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("got %v, want an error with %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (l != nil) != tc.hasLog {
				t.Fatalf("log %v, want one: %v", l, tc.hasLog)
			}
			if l != nil {
				if !strings.HasPrefix(l.Sink().Describe(), tc.sink) {
					t.Errorf("sink %q, want %q", l.Sink().Describe(), tc.sink)
				}
				closeAudit(l, discardLogger())
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dataDir, "audit-redact.key")); err != nil {
		t.Errorf("the redaction secret was not created beside the trail: %v", err)
	}

	url := os.Getenv("MANDATE_TEST_POSTGRES_URL")
	if url == "" {
		t.Log("MANDATE_TEST_POSTGRES_URL is unset: not checking the postgres sink's wiring")
		return
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	schema := "audit_wiring_" + strconv.FormatInt(time.Now().UnixNano(), 36)
	t.Cleanup(func() {
		pool.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+schema+" CASCADE")
		pool.Close()
	})
	o := base
	o.table = schema + ".trail"
	l, err := openAudit(ctx, &o, "postgres", dataDir, pgStore{st, pool}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(l.Sink().Describe(), "postgres table "+schema+".trail") {
		t.Errorf("auto with a PostgreSQL datastore: %s", l.Sink().Describe())
	}
	for _, who := range []string{"user:ann", "user:bob"} {
		l.Record(ctx, &audit.Event{Operation: audit.OpCheck, Resource: "doc:1", Permission: "view", Subject: who, Principal: who, SubjectKind: audit.Person, Decision: audit.Allowed})
	}
	closeAudit(l, discardLogger())

	// verify and export read the table given as a URL.
	if out := mustCLI(t, "audit", "verify", url, "--table", o.table); !strings.HasPrefix(out, "OK: 2 records in 1 chain") {
		t.Errorf("verify of the table:\n%s", out)
	}
	if out := mustCLI(t, "audit", "export", "--format", "jsonl", "--principal", "user:bob", url, "--table", o.table); strings.Count(out, "\n") != 1 || !strings.Contains(out, `"subject":"user:bob"`) {
		t.Errorf("export of the table:\n%s", out)
	}
	// --audit-retention on the table: this server's oldest rows go, and
	// verify says so.
	ro := base
	ro.table, ro.chainID, ro.retention = schema+".kept", "node-r", "2KiB"
	rl, err := openAudit(ctx, &ro, "postgres", dataDir, pgStore{st, pool}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 60 {
		rl.Record(ctx, &audit.Event{Operation: audit.OpCheck, Resource: "doc:" + strconv.Itoa(i), Permission: "view", Subject: "user:ann", Principal: "user:ann", SubjectKind: audit.Person, Decision: audit.Allowed})
		if i%10 == 9 {
			rl.Flush(ctx)
		}
	}
	closeAudit(rl, discardLogger())
	if out := mustCLI(t, "audit", "verify", url, "--table", ro.table); !strings.Contains(out, "deleted by retention") || !strings.Contains(out, "OK: ") {
		t.Errorf("verify of a table retention shortened:\n%s", out)
	}

	pool.Exec(ctx, "UPDATE "+o.table+" SET record = replace(record, 'allowed', 'denied') WHERE seq = 2")
	if out, _, code := cli(t, "", "audit", "verify", url, "--table", o.table); code != exitTrailBroken || !strings.Contains(out, "seq 2: record seq 2 altered") {
		t.Errorf("verify of an altered table: exit %d\n%s", code, out)
	}
}
