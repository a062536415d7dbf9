package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-authz/mandate/engine"
	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/store/memory"
	"github.com/mandate-authz/mandate/store/rel"
)

// bulkSchema has every shape of relationship the text form can carry:
// plain, userset, wildcard, caveated with context, expiring.
const bulkSchema = `use expiration

definition user {}

definition group {
	relation member: user | group#member
}

caveat within_limit(amount int, limit int) {
	amount <= limit
}

definition doc {
	relation viewer: user | user:* | group#member | user with within_limit | user with expiration
	relation owner: user
	permission view = viewer + owner
}
`

// bulkN is the size of the bulk tests, as the issue asks.
const bulkN = 100_000

// bulkTimeout bounds one bulk test's calls; generous, since under -race on
// a busy machine 100k relationships take tens of seconds.
const bulkTimeout = 5 * time.Minute

// bulkServer is a real server on loopback, with the client environment
// pointed at its gRPC listener.
type bulkServer struct {
	grpcAddr string
	httpBase string // http://127.0.0.1:port
	conn     *grpc.ClientConn
	rels     pb.RelationshipServiceClient
	stop     func()
}

func startBulkServer(t *testing.T, mutate func(*server.Config)) *bulkServer {
	t.Helper()
	st := memory.New()
	cfg := server.Config{
		GRPCAddr:            "127.0.0.1:0",
		HTTPAddr:            "127.0.0.1:0",
		PresharedKeys:       []string{clientTestKey},
		ShutdownGracePeriod: 5 * time.Second,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := server.New(st, engine.New(), cfg)
	if err != nil {
		t.Fatalf("server.New: %v", err)
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
				t.Errorf("server Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("server did not stop within 15s")
		}
		st.Close()
	}
	t.Cleanup(stop)
	for deadline := time.Now().Add(5 * time.Second); !srv.Ready(); {
		if time.Now().After(deadline) {
			t.Fatal("server not ready within 5s")
		}
		time.Sleep(2 * time.Millisecond)
	}
	bs := &bulkServer{grpcAddr: srv.GRPCAddr().String(), httpBase: "http://" + srv.HTTPAddr().String(), stop: stop}
	bs.conn, err = grpc.NewClient(bs.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(bearerKey{key: clientTestKey}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bs.conn.Close() })
	bs.rels = pb.NewRelationshipServiceClient(bs.conn)
	t.Setenv("MANDATE_ENDPOINT", bs.grpcAddr)
	t.Setenv("MANDATE_TOKEN", clientTestKey)
	t.Setenv("MANDATE_INSECURE", "true")
	return bs
}

// writeSchemaCLI writes bulkSchema through the CLI and returns its token.
func writeSchemaCLI(t *testing.T, text string) string {
	t.Helper()
	out, errOut, code := cli(t, text, "schema", "write", "-")
	if code != 0 {
		t.Fatalf("schema write: %s", errOut)
	}
	return revisionOf(t, out)
}

// bulkRelationships returns n distinct relationships, mixing every shape
// bulkSchema allows, as protos built directly (parsing 100k lines with the
// text parser would dominate the gRPC and REST tests under -race) and in
// canonical text form (as the server renders them).
func bulkRelationships(t *testing.T, n int) ([]*pb.Relationship, []string) {
	t.Helper()
	obj := func(typ, id string) *pb.ObjectReference { return &pb.ObjectReference{ObjectType: typ, ObjectId: id} }
	sub := func(typ, id, relation string) *pb.SubjectReference {
		return &pb.SubjectReference{Object: obj(typ, id), OptionalRelation: relation}
	}
	expires := timestamppb.New(time.Date(2099, 1, 2, 3, 4, 5, 0, time.UTC))
	protos := make([]*pb.Relationship, 0, n)
	texts := make([]string, 0, n)
	for i := range n {
		r := &pb.Relationship{Resource: obj("doc", fmt.Sprintf("d%d", i)), Relation: "viewer"}
		switch {
		case i%97 == 0:
			r.Subject = sub("group", fmt.Sprintf("g%d", i%50), "member")
		case i%101 == 0:
			r.Subject = sub("user", fmt.Sprintf("u%d", i), "")
			limit, _ := structpb.NewStruct(map[string]any{"limit": i})
			r.OptionalCaveat = &pb.ContextualizedCaveat{CaveatName: "within_limit", Context: limit}
		case i%103 == 0:
			r.Subject = sub("user", fmt.Sprintf("u%d", i), "")
			r.OptionalExpiresAt = expires
		case i%107 == 0:
			r.Subject = sub("user", "*", "")
		case i%3 == 0:
			r.Resource, r.Relation = obj("group", fmt.Sprintf("g%d", i%500)), "member"
			r.Subject = sub("user", fmt.Sprintf("u%d", i), "")
		default:
			r.Resource, r.Relation = obj("doc", fmt.Sprintf("d%d/x_%d", i/7, i)), "owner"
			r.Subject = sub("user", fmt.Sprintf("u%d", i%1000), "")
		}
		protos = append(protos, r)
		texts = append(texts, relationshipText(r))
	}
	// The comparisons rely on the texts being canonical and meaning the
	// protos; check a sample covering every shape against the parser.
	for _, s := range texts[:1000] {
		r, err := rel.Parse(s)
		if err != nil || r.String() != s {
			t.Fatalf("test input %q is not canonical (%v): %q", s, err, r.String())
		}
	}
	return protos, texts
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	sort.Strings(s)
	return s
}

// sameSet fails the test unless got and want hold the same lines.
func sameSet(t *testing.T, what string, got, want []string) {
	t.Helper()
	g, w := sorted(got), sorted(want)
	if slices.Equal(g, w) {
		return
	}
	t.Errorf("%s: %d relationships, want %d", what, len(g), len(w))
	for i := 0; i < len(g) && i < len(w); i++ {
		if g[i] != w[i] {
			t.Fatalf("%s: first difference at %d: got %q, want %q", what, i, g[i], w[i])
		}
	}
}

func nonEmptyLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l != "" {
			out = append(out, l)
		}
	}
	return out
}

// TestImportExportCLI imports 100k relationships with mandate import,
// exports them with mandate export, and checks the round trip: same set,
// and an export imported into a fresh server exports identically.
func TestImportExportCLI(t *testing.T) {
	startBulkServer(t, nil)
	writeSchemaCLI(t, bulkSchema)
	_, want := bulkRelationships(t, bulkN)
	dir := t.TempDir()
	in := filepath.Join(dir, "rels.txt")
	// Comments and blank lines are skipped, as in validation files.
	text := "// exported from nowhere\n# another comment\n\n" + strings.Join(want, "\n") + "\n"
	if err := os.WriteFile(in, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	out := mustCLI(t, "import", in, "--batch-size", "2000")
	t.Logf("mandate import of %d relationships: %v", bulkN, time.Since(start))
	if !strings.Contains(out, "imported 100,000 relationships in ") || !strings.Contains(out, " relationships/s)") {
		t.Errorf("import summary:\n%s", out)
	}
	tok := revisionOf(t, out)

	exported := filepath.Join(dir, "export.txt")
	start = time.Now()
	out = mustCLI(t, "export", exported, "--exact-token", tok)
	t.Logf("mandate export of %d relationships: %v", bulkN, time.Since(start))
	if !strings.Contains(out, "exported 100,000 relationships in ") || revisionOf(t, out) != tok {
		t.Errorf("export summary (want revision %s):\n%s", tok, out)
	}
	data, err := os.ReadFile(exported)
	if err != nil {
		t.Fatal(err)
	}
	got := nonEmptyLines(string(data))
	sameSet(t, "export after import", got, want)
	if !slices.IsSorted(got) {
		t.Error("export is not in key order")
	}

	// To standard output with a filter: exactly the matching subset (every
	// doc#viewer: usersets, caveats, expirations, wildcards), with the
	// summary on standard error.
	viewers, stderr, code := cli(t, "", "export", "--filter", "resource_type=doc,relation=viewer")
	if code != 0 {
		t.Fatalf("export --filter: %s", stderr)
	}
	var wantViewers []string
	for _, s := range want {
		if strings.HasPrefix(s, "doc:") && strings.Contains(s, "#viewer@") {
			wantViewers = append(wantViewers, s)
		}
	}
	sameSet(t, "filtered export", nonEmptyLines(viewers), wantViewers)
	if !strings.Contains(stderr, fmt.Sprintf("exported %s relationships", thousands(int64(len(wantViewers))))) {
		t.Errorf("filtered export summary:\n%s", stderr)
	}

	// Round trip: that export, imported from standard input into a fresh
	// server, exports to the same bytes. (The subset has every shape; the
	// full set's round trip would only double the test's time.)
	startBulkServer(t, nil)
	writeSchemaCLI(t, bulkSchema)
	if _, stderr, code := cli(t, viewers, "import", "-"); code != 0 {
		t.Fatalf("import - of the export: %s", stderr)
	}
	again, stderr, code := cli(t, "", "export", "--fully-consistent")
	if code != 0 {
		t.Fatalf("second export: %s", stderr)
	}
	if again != viewers {
		t.Error("export -> import -> export is not the identity")
	}
}

// TestImportExportGRPC100k moves the same 100k relationships through the
// gRPC API: a client stream of batches in, a server stream of batches out.
func TestImportExportGRPC100k(t *testing.T) {
	bs := startBulkServer(t, nil)
	writeSchemaCLI(t, bulkSchema)
	protos, want := bulkRelationships(t, bulkN)
	ctx, cancel := context.WithTimeout(context.Background(), bulkTimeout)
	defer cancel()

	start := time.Now()
	imp, err := bs.rels.ImportRelationships(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for lo := 0; lo < len(protos); lo += 1000 {
		batch := protos[lo:min(lo+1000, len(protos))]
		if err := imp.Send(&pb.ImportRelationshipsRequest{Relationships: batch}); err != nil {
			t.Fatalf("send batch at %d: %v", lo, err)
		}
	}
	resp, err := imp.CloseAndRecv()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("gRPC import of %d relationships: %v", bulkN, time.Since(start))
	if resp.GetNumLoaded() != bulkN {
		t.Errorf("num_loaded = %d, want %d", resp.GetNumLoaded(), bulkN)
	}

	start = time.Now()
	exp, err := bs.rels.ExportRelationships(ctx, &pb.ExportRelationshipsRequest{
		Consistency:       &pb.Consistency{Requirement: &pb.Consistency_AtLeastAsFresh{AtLeastAsFresh: resp.GetWrittenAt()}},
		OptionalBatchSize: 5000,
	})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	batches := 0
	for {
		r, err := exp.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		batches++
		if n := len(r.GetRelationships()); n > 5000 {
			t.Errorf("batch of %d, over the requested 5000", n)
		}
		for _, p := range r.GetRelationships() {
			got = append(got, relationshipText(p))
		}
	}
	t.Logf("gRPC export of %d relationships: %v", bulkN, time.Since(start))
	if batches != bulkN/5000 {
		t.Errorf("%d batches, want %d", batches, bulkN/5000)
	}
	sameSet(t, "gRPC export after import", got, want)
}

// TestImportExportREST100k moves the same 100k relationships through the
// REST gateway with plain HTTP. grpc-gateway maps the client-streaming
// import to one request whose body is a stream of JSON messages (here 100
// pages of 1000, streamed through a pipe as they are produced), and the
// server-streaming export to newline-delimited {"result": ...} objects.
func TestImportExportREST100k(t *testing.T) {
	bs := startBulkServer(t, nil)
	writeSchemaCLI(t, bulkSchema)
	protos, want := bulkRelationships(t, bulkN)
	ctx, cancel := context.WithTimeout(context.Background(), bulkTimeout)
	defer cancel()

	start := time.Now()
	pr, pw := io.Pipe()
	go func() {
		for lo := 0; lo < len(protos); lo += 1000 {
			msg := &pb.ImportRelationshipsRequest{Relationships: protos[lo:min(lo+1000, len(protos))]}
			b, err := protojson.Marshal(msg)
			if err == nil {
				_, err = pw.Write(append(b, '\n'))
			}
			if err != nil {
				pw.CloseWithError(err)
				return
			}
		}
		pw.Close()
	}()
	var imported struct {
		NumLoaded string `json:"numLoaded"`
		WrittenAt struct{ Token string }
	}
	status := restJSON(t, ctx, bs.httpBase+"/v1/relationships/import", pr, &imported)
	t.Logf("REST import of %d relationships: %v", bulkN, time.Since(start))
	if status != http.StatusOK || imported.NumLoaded != "100000" || imported.WrittenAt.Token == "" {
		t.Fatalf("REST import: HTTP %d, %+v", status, imported)
	}

	start = time.Now()
	body := fmt.Sprintf(`{"consistency": {"atExactSnapshot": {"token": %q}}, "optionalBatchSize": 1000}`, imported.WrittenAt.Token)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, bs.httpBase+"/v1/relationships/export", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+clientTestKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		raw, _ := io.ReadAll(resp.Body)
		t.Fatalf("REST export: HTTP %d: %s", resp.StatusCode, raw)
	}
	var got []string
	pages := 0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var line struct {
			Result json.RawMessage
			Error  json.RawMessage
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("export stream line %q: %v", sc.Text(), err)
		}
		if line.Error != nil {
			t.Fatalf("export stream error: %s", line.Error)
		}
		var page pb.ExportRelationshipsResponse
		if err := protojson.Unmarshal(line.Result, &page); err != nil {
			t.Fatalf("export page: %v", err)
		}
		if page.GetExportedAt().GetToken() != imported.WrittenAt.Token {
			t.Fatalf("page exported at %q, want the import's revision", page.GetExportedAt().GetToken())
		}
		pages++
		for _, p := range page.GetRelationships() {
			got = append(got, relationshipText(p))
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	t.Logf("REST export of %d relationships: %v", bulkN, time.Since(start))
	if pages != bulkN/1000 {
		t.Errorf("%d pages, want %d", pages, bulkN/1000)
	}
	sameSet(t, "REST export after import", got, want)
}

// restJSON posts body with the test key and decodes the JSON answer.
func restJSON(t *testing.T, ctx context.Context, url string, body io.Reader, out any) int {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+clientTestKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, out); err != nil {
		t.Fatalf("%s: %v: %s", url, err, raw)
	}
	return resp.StatusCode
}

// exportAll returns every relationship on the server, via the CLI.
func exportAll(t *testing.T) []string {
	t.Helper()
	out, errOut, code := cli(t, "", "export", "--fully-consistent")
	if code != 0 {
		t.Fatalf("export: %s", errOut)
	}
	return nonEmptyLines(out)
}

// TestImportErrors: bad input names its line; nothing from the failing
// batch on is written, earlier batches stay and the error says so.
func TestImportErrors(t *testing.T) {
	startBulkServer(t, nil)
	writeSchemaCLI(t, bulkSchema)
	dir := t.TempDir()
	file := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	lines := func(prefix string, n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("doc:%s%02d#viewer@user:u%d", prefix, i, i)
		}
		return out
	}

	cases := []struct {
		name string
		// input is the file's text; its lines are numbered from 1.
		input string
		args  []string
		want  []string
		// kept are the relationships that must be on the server afterwards
		// (beyond those before the case).
		kept []string
	}{
		{
			name:  "malformed line in the second batch",
			input: strings.Join(lines("a", 13), "\n") + "\ndoc:a99#viewer\n" + strings.Join(lines("b", 3), "\n"),
			args:  []string{"--batch-size", "10"},
			want: []string{"line 14:", `"doc:a99#viewer"`, "nothing from", "line 11 on was written",
				"the 10 relationships before it were committed at revision", "tail -n +11", "resume with: mandate import --skip 10 "},
			kept: lines("a", 10),
		},
		{
			name:  "relation the schema lacks, refused by the server",
			input: strings.Join(lines("c", 12), "\n") + "\ndoc:c99#nosuch@user:x\n",
			args:  []string{"--batch-size", "10"},
			want: []string{"InvalidArgument", `relation "nosuch" is not defined on "doc"`, "the failing relationship is on line 13",
				"batch 1, lines 11-13", "10 relationships from 1 earlier batches were committed", "resume with: mandate import --skip 10 "},
			kept: lines("c", 10),
		},
		{
			name:  "relationship that already exists",
			input: "doc:e00#viewer@user:u0\ndoc:a00#viewer@user:u0\n",
			want:  []string{"AlreadyExists", "doc:a00#viewer@user:u0", "line 2"},
		},
		{
			name:  "malformed first line writes nothing",
			input: "doc:f00#viewer@user:u0\nnot a relationship\n",
			want:  []string{"line 2:", "nothing from", "line 1 on was written"},
		},
		{
			name:  "only comments",
			input: "// nothing\n\n# here\n",
			want:  []string{"holds no relationships"},
		},
		{
			name:  "bad batch size",
			input: "doc:g00#viewer@user:u0\n",
			args:  []string{"--batch-size", "0"},
			want:  []string{"--batch-size 0"},
		},
		{
			name:  "YAML with a malformed relationship",
			input: "schema: |-\n  definition user {}\nrelationships: |-\n  doc:h00#viewer@user:a\n\n  // comment\n  doc:h01#viewer\n",
			want:  []string{"line 7:", `"doc:h01#viewer"`},
		},
		{
			name:  "YAML with relationships in two documents",
			input: "relationships: |-\n  doc:i00#viewer@user:a\n---\nrelationships: |-\n  doc:i01#viewer@user:a\n",
			want:  []string{"blocks on lines 1, 4", "one document at a time"},
		},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := exportAll(t)
			name := fmt.Sprintf("case%d.txt", i)
			if strings.HasPrefix(c.name, "YAML") {
				name = fmt.Sprintf("case%d.yaml", i)
			}
			path := file(name, c.input)
			out, errOut, code := cli(t, "", append([]string{"import", path}, c.args...)...)
			if code == 0 {
				t.Fatalf("import succeeded:\n%s", out)
			}
			for _, w := range c.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("error lacks %q:\n%s", w, errOut)
				}
			}
			sameSet(t, "relationships after the failed import", exportAll(t), append(before, c.kept...))
		})
	}

	// A validation YAML file's relationships: block, from standard input.
	yamlFile := "schema: |-\n  definition user {}\nrelationships: |-\n  doc:y0#viewer@user:a\n  // c\n  doc:y1#viewer@group:g#member\nassertions:\n  assertTrue: []\n"
	out, errOut, code := cli(t, yamlFile, "import", "-")
	if code != 0 || !strings.Contains(out, "imported 2 relationships") {
		t.Fatalf("YAML import: exit %d\n%s%s", code, out, errOut)
	}
	got := exportAll(t)
	for _, w := range []string{"doc:y0#viewer@user:a", "doc:y1#viewer@group:g#member"} {
		if !slices.Contains(got, w) {
			t.Errorf("YAML import lacks %s", w)
		}
	}
}

func TestProgress(t *testing.T) {
	var buf bytes.Buffer
	p := newProgress(&buf, true, 3000, "importing")
	for range 3 {
		p.add(1000)
	}
	p.done(true)
	p.done(true) // a second call prints nothing more
	if !strings.Contains(buf.String(), "importing") || !strings.Contains(buf.String(), "relationships/s") || !strings.Contains(buf.String(), "3000/3000") {
		t.Errorf("progress bar output: %q", buf.String())
	}
	if strings.Count(buf.String(), "\n") != 1 {
		t.Errorf("want one final newline, got %q", buf.String())
	}
	if got := p.summary("imported"); !strings.HasPrefix(got, "imported 3,000 relationships in ") || !strings.HasSuffix(got, " relationships/s)") {
		t.Errorf("summary = %q", got)
	}

	var quiet bytes.Buffer
	q := newProgress(&quiet, false, -1, "exporting")
	q.add(5)
	q.done(false)
	if quiet.Len() != 0 {
		t.Errorf("hidden progress wrote %q", quiet.String())
	}

	for n, want := range map[int64]string{0: "0", 7: "7", 999: "999", 1000: "1,000", 123456: "123,456", 1234567: "1,234,567", -4321: "-4,321"} {
		if got := thousands(n); got != want {
			t.Errorf("thousands(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestLooksLikeYAML(t *testing.T) {
	for text, want := range map[string]bool{
		"doc:a#viewer@user:b\n":                        false,
		"// comment\nrelationships: |-\n  doc:a#v@u:b": true,
		"# c\n\nschema: |-\n":                          true,
		"---\nschema: x":                               true,
		"relationships:x#viewer@user:b\n":              false, // a type named relationships
		"schemaFile: s.zed\n":                          true,
		"":                                             false,
	} {
		if got := looksLikeYAML([]byte(text)); got != want {
			t.Errorf("looksLikeYAML(%q) = %v, want %v", text, got, want)
		}
	}
}

// BenchmarkImportCLI measures mandate import end to end (read, parse,
// stream, server write, engine apply) in batches of 10,000 relationships
// per operation against an in-process server. Run with
// go test ./cmd/mandate -run '^$' -bench 'ImportCLI|ExportCLI' -benchtime 10x
func BenchmarkImportCLI(b *testing.B) {
	startBenchServer(b)
	dir := b.TempDir()
	const per = 10_000
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		var sb strings.Builder
		for j := range per {
			fmt.Fprintf(&sb, "doc:b%d_%d#viewer@user:u%d\n", i, j, j%1000)
		}
		path := filepath.Join(dir, fmt.Sprintf("b%d.txt", i))
		if err := os.WriteFile(path, []byte(sb.String()), 0o600); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if out, errOut, code := benchCLI(b, "import", path); code != 0 {
			b.Fatalf("import: %s%s", out, errOut)
		}
	}
	b.ReportMetric(float64(per*b.N)/b.Elapsed().Seconds(), "relationships/s")
}

// BenchmarkExportCLI measures mandate export of 100,000 relationships per
// operation to a file.
func BenchmarkExportCLI(b *testing.B) {
	bs := startBenchServer(b)
	protos := make([]*pb.Relationship, 0, bulkN)
	for i := range bulkN {
		protos = append(protos, &pb.Relationship{
			Resource: &pb.ObjectReference{ObjectType: "doc", ObjectId: fmt.Sprintf("d%d", i)}, Relation: "viewer",
			Subject: &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: "user", ObjectId: fmt.Sprintf("u%d", i%1000)}},
		})
	}
	imp, err := bs.rels.ImportRelationships(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	for lo := 0; lo < len(protos); lo += 5000 {
		if err := imp.Send(&pb.ImportRelationshipsRequest{Relationships: protos[lo : lo+5000]}); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := imp.CloseAndRecv(); err != nil {
		b.Fatal(err)
	}
	out := filepath.Join(b.TempDir(), "export.txt")
	b.ResetTimer()
	for range b.N {
		if o, errOut, code := benchCLI(b, "export", out, "--fully-consistent"); code != 0 {
			b.Fatalf("export: %s%s", o, errOut)
		}
	}
	b.ReportMetric(float64(bulkN*b.N)/b.Elapsed().Seconds(), "relationships/s")
}

// startBenchServer is startBulkServer for benchmarks, with the schema
// written.
func startBenchServer(b *testing.B) *bulkServer {
	b.Helper()
	st := memory.New()
	srv, err := server.New(st, engine.New(), server.Config{GRPCAddr: "127.0.0.1:0", PresharedKeys: []string{clientTestKey}})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	b.Cleanup(func() { cancel(); <-done; st.Close() })
	for !srv.Ready() {
		time.Sleep(time.Millisecond)
	}
	bs := &bulkServer{grpcAddr: srv.GRPCAddr().String()}
	if bs.conn, err = grpc.NewClient(bs.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(bearerKey{key: clientTestKey})); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { bs.conn.Close() })
	bs.rels = pb.NewRelationshipServiceClient(bs.conn)
	b.Setenv("MANDATE_ENDPOINT", bs.grpcAddr)
	b.Setenv("MANDATE_TOKEN", clientTestKey)
	b.Setenv("MANDATE_INSECURE", "true")
	schemaFile := filepath.Join(b.TempDir(), "schema.zed")
	if err := os.WriteFile(schemaFile, []byte(bulkSchema), 0o600); err != nil {
		b.Fatal(err)
	}
	if _, errOut, code := benchCLI(b, "schema", "write", schemaFile); code != 0 {
		b.Fatalf("schema write: %s", errOut)
	}
	return bs
}

// benchCLI runs the command line as cli does, for benchmarks.
func benchCLI(b *testing.B, args ...string) (string, string, int) {
	b.Helper()
	root := newRootCommand()
	var out, errb bytes.Buffer
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&errb)
	if err := root.ExecuteContext(context.Background()); err != nil {
		return out.String(), errb.String() + err.Error(), 1
	}
	return out.String(), errb.String(), 0
}

// TestImportResume: an import stopped part way, by a refused batch or by
// Ctrl-C, says how many relationships were committed and the --skip that
// resumes after them; running that imports the rest, and the store ends
// with every relationship once. (Before, an interruption said nothing of
// what was committed and there was no way to resume.)
func TestImportResume(t *testing.T) {
	startBulkServer(t, nil)
	writeSchemaCLI(t, bulkSchema)
	rels := func(prefix string, n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("doc:%s%05d#viewer@user:u%d", prefix, i, i)
		}
		return out
	}
	resumeRef := regexp.MustCompile(`resume with: mandate import (--skip \d+) (\S+)`)

	// Refused: the third batch has a relation the schema lacks.
	good := rels("r", 30)
	bad := append(slices.Clone(good[:25]), "doc:r99#nosuch@user:x")
	bad = append(bad, good[25:]...)
	path := filepath.Join(t.TempDir(), "rels.txt")
	if err := os.WriteFile(path, []byte("// header\n"+strings.Join(bad, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := cli(t, "", "import", "--batch-size", "10", path)
	m := resumeRef.FindStringSubmatch(errOut)
	if code == 0 || m == nil || m[1] != "--skip 20" || m[2] != path {
		t.Fatalf("refused import: exit %d, want a resume line with --skip 20:\n%s", code, errOut)
	}
	// Fix the line and resume.
	if err := os.WriteFile(path, []byte("// header\n"+strings.Join(good, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := cli(t, "", "import", "--batch-size", "10", "--skip", "20", path)
	if code != 0 || !strings.Contains(out, "imported 10 relationships") {
		t.Fatalf("resumed import: exit %d\n%s%s", code, out, errOut)
	}
	sameSet(t, "after the resumed import", exportAll(t), good)

	// Interrupted: standard input delivers 1,000 relationships (past the
	// 64 KB the import peeks at to tell text from YAML) and stalls; Ctrl-C
	// then stops the import after the two whole batches of 400 sent.
	pad := strings.Repeat("p", 100)
	more := rels("s"+pad, 1200)
	pr, pw := io.Pipe()
	defer pw.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	root := newRootCommand()
	var stdout, stderr bytes.Buffer
	root.SetArgs([]string{"import", "--batch-size", "400", "--no-progress", "-"})
	root.SetIn(pr)
	root.SetOut(&stdout)
	root.SetErr(&stderr)
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	go io.WriteString(pw, strings.Join(more[:1000], "\n")+"\n")
	// Wait until both batches are on the server, then interrupt.
	deadline := time.Now().Add(30 * time.Second)
	for len(exportAll(t)) < len(good)+800 {
		if time.Now().After(deadline) {
			t.Fatalf("the first two batches did not arrive within 30s: %d relationships", len(exportAll(t)))
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	var err error
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the interrupted import did not end within 30s")
	}
	if err == nil || !strings.Contains(err.Error(), "interrupted: 800 relationships were committed") {
		t.Fatalf("interrupted import: %v", err)
	}
	if m := resumeRef.FindStringSubmatch(err.Error()); m == nil || m[1] != "--skip 800" || m[2] != "-" {
		t.Fatalf("interrupted import, resume line: %v", err)
	}
	out, errOut, code = cli(t, strings.Join(more, "\n")+"\n", "import", "--batch-size", "400", "--skip", "800", "-")
	if code != 0 || !strings.Contains(out, "imported 400 relationships") {
		t.Fatalf("resumed import from standard input: exit %d\n%s%s", code, out, errOut)
	}
	sameSet(t, "after resuming the interrupted import", exportAll(t), append(slices.Clone(good), more...))

	if _, errOut, code := cli(t, "", "import", "--skip", "-1", path); code == 0 || !strings.Contains(errOut, "--skip -1") {
		t.Errorf("--skip -1: exit %d, %s", code, errOut)
	}
}
