package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server"
)

// startWatchCLI runs `mandate watch args...` until the returned stop is
// called; stop returns the command's error and everything it printed.
func startWatchCLI(t *testing.T, args ...string) (out *syncBuffer, stop func() error) {
	t.Helper()
	out = &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	root := newRootCommand()
	root.SetArgs(append([]string{"watch"}, args...))
	root.SetOut(out)
	root.SetErr(out)
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				err = errors.New("watch did not stop within 10s of its interruption")
			}
		})
		return err
	}
	t.Cleanup(func() { stop() })
	return out, stop
}

// waitLines waits until out holds at least n lines and returns them.
func waitLines(t *testing.T, out *syncBuffer, n int) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		lines := nonEmptyLines(out.String())
		if len(lines) >= n {
			return lines
		}
		if time.Now().After(deadline) {
			t.Fatalf("watch printed %d lines within 10s, want %d:\n%s", len(lines), n, out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestWatchCLI follows writes, deletes and a schema change through mandate
// watch: one line per update, in write order, each with its write's token,
// filtered by type; interruption exits cleanly.
func TestWatchCLI(t *testing.T) {
	bs := startBulkServer(t, nil)
	since := writeSchemaCLI(t, bulkSchema)
	all, stopAll := startWatchCLI(t, "--since", since)
	docs, stopDocs := startWatchCLI(t, "--since", since, "--filter", "doc", "--filter", "resource_type=group,subject_type=group")

	var wantAll, wantDocs []string
	for i := range 10 {
		tok := revisionOf(t, mustCLI(t, "rel", "write",
			fmt.Sprintf("doc:w%d#viewer@user:u%d", i, i),
			fmt.Sprintf("group:g%d#member@user:u%d", i, i)))
		// Updates of one revision come in key order.
		wantAll = append(wantAll,
			fmt.Sprintf("%s TOUCH doc:w%d#viewer@user:u%d", tok, i, i),
			fmt.Sprintf("%s TOUCH group:g%d#member@user:u%d", tok, i, i))
		wantDocs = append(wantDocs, fmt.Sprintf("%s TOUCH doc:w%d#viewer@user:u%d", tok, i, i))
	}
	tok := revisionOf(t, mustCLI(t, "rel", "write", "group:g0#member@group:g1#member"))
	wantAll = append(wantAll, tok+" TOUCH group:g0#member@group:g1#member")
	wantDocs = append(wantDocs, tok+" TOUCH group:g0#member@group:g1#member")
	tok = revisionOf(t, mustCLI(t, "rel", "delete", "doc:w3#viewer@user:u3"))
	wantAll = append(wantAll, tok+" DELETE doc:w3#viewer@user:u3")
	wantDocs = append(wantDocs, tok+" DELETE doc:w3#viewer@user:u3")
	tok = writeSchemaCLI(t, bulkSchema+"\ndefinition folder {}\n")
	wantAll = append(wantAll, tok+" SCHEMA")
	wantDocs = append(wantDocs, tok+" SCHEMA")
	tok = revisionOf(t, mustCLI(t, "rel", "touch", `doc:w4#viewer@user:u4[within_limit:{"limit":3}]`))
	wantAll = append(wantAll, tok+` TOUCH doc:w4#viewer@user:u4[within_limit:{"limit":3}]`)
	wantDocs = append(wantDocs, tok+` TOUCH doc:w4#viewer@user:u4[within_limit:{"limit":3}]`)

	if got := waitLines(t, all, len(wantAll)); !slices.Equal(got, wantAll) {
		t.Errorf("watch printed\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(wantAll, "\n"))
	}
	if got := waitLines(t, docs, len(wantDocs)); !slices.Equal(got, wantDocs) {
		t.Errorf("filtered watch printed\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(wantDocs, "\n"))
	}
	if err := stopAll(); err != nil {
		t.Errorf("interrupted watch: %v, want a clean exit", err)
	}
	if err := stopDocs(); err != nil {
		t.Errorf("interrupted watch: %v, want a clean exit", err)
	}

	// When the server goes away, the error says where to resume.
	mid, stopMid := startWatchCLI(t, "--since", since)
	waitLines(t, mid, len(wantAll))
	bs.stop()
	err := stopMid()
	if err == nil || !strings.Contains(err.Error(), "Unavailable") || !strings.Contains(err.Error(), "resume with: mandate watch --since "+tok) {
		t.Errorf("watch after server shutdown: %v", err)
	}
}

func TestWatchCLIErrors(t *testing.T) {
	startBulkServer(t, nil)
	writeSchemaCLI(t, bulkSchema)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"watch", "--since", "not-a-token"}, "watch: InvalidArgument: optional_start_cursor"},
		{[]string{"watch", "--since", ""}, "--since: empty"},
		{[]string{"watch", "--filter", "colour=red"}, `unknown key "colour"`},
		{[]string{"watch", "--filter", "resource_type=doc,subject_id=a"}, "need subject_type"},
		{[]string{"watch", "--filter", "doc", "--filter", "Doc"}, "optional_filters[1].resource_type"},
	} {
		_, errOut, code := cli(t, "", c.args...)
		if code == 0 || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, stderr %q, want %q", c.args, code, errOut, c.want)
		}
	}
}

// TestWatchGRPCOrder: under concurrent writers, a gRPC watch sees every
// write exactly once, each writer's writes in the order it made them, with
// the token its write returned.
func TestWatchGRPCOrder(t *testing.T) {
	bs := startBulkServer(t, nil)
	since := writeSchemaCLI(t, bulkSchema)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	watch, err := bs.rels.Watch(ctx, &pb.WatchRequest{OptionalStartCursor: &pb.RevisionToken{Token: since}})
	if err != nil {
		t.Fatal(err)
	}

	const writers, perWriter = 4, 50
	tokens := make([][]string, writers) // per writer, in write order
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				r, _ := relationshipProto(fmt.Sprintf("doc:w%d_%d#viewer@user:u%d", w, i, i))
				op := pb.RelationshipUpdate_OPERATION_TOUCH
				if i%5 == 4 { // delete what the previous write created
					r, _ = relationshipProto(fmt.Sprintf("doc:w%d_%d#viewer@user:u%d", w, i-1, i-1))
					op = pb.RelationshipUpdate_OPERATION_DELETE
				}
				resp, err := bs.rels.WriteRelationships(ctx, &pb.WriteRelationshipsRequest{Updates: []*pb.RelationshipUpdate{{Operation: op, Relationship: r}}})
				if err != nil {
					errs <- err
					return
				}
				tokens[w] = append(tokens[w], resp.GetWrittenAt().GetToken()+" "+opName(op)+" "+relationshipText(r))
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	seen := map[string]int{} // line -> position in the watch
	var order []string
	for len(order) < writers*perWriter {
		resp, err := watch.Recv()
		if err != nil {
			t.Fatalf("after %d updates: %v", len(order), err)
		}
		if len(resp.GetUpdates()) != 1 {
			t.Fatalf("revision with %d updates, want 1 per write", len(resp.GetUpdates()))
		}
		u := resp.GetUpdates()[0]
		line := resp.GetChangesThrough().GetToken() + " " + opName(u.GetOperation()) + " " + relationshipText(u.GetRelationship())
		if _, dup := seen[line]; dup {
			t.Fatalf("update seen twice: %s", line)
		}
		seen[line] = len(order)
		order = append(order, line)
	}
	for w, lines := range tokens {
		prev := -1
		for _, l := range lines {
			at, ok := seen[l]
			if !ok {
				t.Fatalf("writer %d: write %q never seen by the watch", w, l)
			}
			if at <= prev {
				t.Fatalf("writer %d: write %q seen before its predecessor", w, l)
			}
			prev = at
		}
	}
}

// TestWatchCLISurvivesBigImport: one import batch whose changes are over 4
// MiB (gRPC's default message limit, which killed the stream with
// ResourceExhausted) reaches `mandate watch` whole, in several responses
// of one revision, and the watch goes on to the next write; the resume
// token it offers is always a complete revision.
func TestWatchCLISurvivesBigImport(t *testing.T) {
	const n = 12_000 // ~440 bytes an update: ~5 MiB in one revision
	startBulkServer(t, func(c *server.Config) {
		c.Limits.MaxBulkBatch = n
		c.Limits.MaxMessageBytes = 16 << 20
	})
	since := writeSchemaCLI(t, bulkSchema)
	out, stop := startWatchCLI(t, "--since", since)
	var in strings.Builder
	pad := strings.Repeat("x", 400)
	for i := range n {
		fmt.Fprintf(&in, "doc:%s%06d#viewer@user:u%d\n", pad, i, i)
	}
	if in.Len() < 4<<20 {
		t.Fatalf("the import is %d bytes, want over 4 MiB", in.Len())
	}
	stdout, errOut, code := cli(t, in.String(), "import", "--batch-size", fmt.Sprint(n), "--no-progress", "-")
	if code != 0 {
		t.Fatalf("import: exit %d: %s", code, errOut)
	}
	big := revisionOf(t, stdout)
	next := revisionOf(t, mustCLI(t, "rel", "write", "doc:after#viewer@user:ann"))
	lines := waitLines(t, out, n+1)
	for i, l := range lines[:n] {
		if want := fmt.Sprintf("%s TOUCH doc:%s%06d#viewer@user:u%d", big, pad, i, i); l != want {
			t.Fatalf("line %d: %q, want %q", i, l, want)
		}
	}
	if want := next + " TOUCH doc:after#viewer@user:ann"; lines[n] != want {
		t.Fatalf("after the import: %q, want %q", lines[n], want)
	}
	if err := stop(); err != nil {
		t.Fatalf("watch: %v", err)
	}
}
