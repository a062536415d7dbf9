package server_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"google.golang.org/protobuf/proto"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server"
)

// bigRevisionRels is one revision's worth of relationships whose Watch
// updates come to over 4 MiB, gRPC's default message limit.
func bigRevisionRels(n int) []string {
	pad := strings.Repeat("x", 400)
	texts := make([]string, n)
	for i := range texts {
		texts[i] = fmt.Sprintf("doc:%s%06d#viewer@user:u%d", pad, i, i)
	}
	return texts
}

// TestWatchSplitsLargeRevisions: a revision over 4 MiB of changes reaches
// default clients of both APIs (before, ResourceExhausted ended their
// stream) in responses under the limit with the revision's token; in
// mandate.v1 all but the last say continues, and in authzed.api.v1 a
// checkpoint follows the last, as SpiceDB's clients expect when a
// revision is emitted in pieces.
func TestWatchSplitsLargeRevisions(t *testing.T) {
	const n = 12_000 // ~440 bytes an update: ~5 MiB
	ts := startServer(t, func(c *server.Config) {
		c.Limits.MaxBulkBatch = n
		c.Limits.MaxMessageBytes = 16 << 20
		c.Limits.MaxWriteUpdates = n
	})
	since := ts.writeSchema(testSchema)
	// Generous: 12,000 relationships under -race on a loaded machine.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	native, err := ts.rels.Watch(ctx, &pb.WatchRequest{OptionalStartCursor: &pb.RevisionToken{Token: since}})
	if err != nil {
		t.Fatal(err)
	}
	c := mandateClient(t, ts, testKey)
	schema, err := c.ReadSchema(ctx, &v1.ReadSchemaRequest{})
	if err != nil {
		t.Fatal(err)
	}
	zwatch, err := c.Watch(ctx, &v1.WatchRequest{OptionalStartCursor: schema.GetReadAt(), OptionalUpdateKinds: []v1.WatchKind{v1.WatchKind_WATCH_KIND_INCLUDE_CHECKPOINTS}})
	if err != nil {
		t.Fatal(err)
	}
	texts := bigRevisionRels(n)
	resp, err := ts.rels.WriteRelationships(ctx, &pb.WriteRelationshipsRequest{Updates: update(create, mustParse(t, texts...)...)})
	if err != nil {
		t.Fatal(err)
	}
	written := resp.GetWrittenAt().GetToken()

	var got []string
	responses := 0
	for len(got) < n {
		resp, err := native.Recv()
		if err != nil {
			t.Fatalf("mandate.v1 watch after %d updates: %v", len(got), err)
		}
		responses++
		if tok := resp.GetChangesThrough().GetToken(); tok != written {
			t.Fatalf("response %d: changes_through %s, want the write's %s", responses, tok, written)
		}
		if size := proto.Size(resp); size > 4<<20 {
			t.Fatalf("response %d is %d bytes", responses, size)
		}
		for _, u := range resp.GetUpdates() {
			got = append(got, relText(u.GetRelationship()))
		}
		if last := len(got) == n; resp.GetContinues() == last {
			t.Fatalf("response %d (%d of %d updates): continues %v", responses, len(got), n, resp.GetContinues())
		}
	}
	if responses < 2 {
		t.Fatalf("%d response(s) for the revision, want it split", responses)
	}
	for i, text := range got {
		if text != texts[i] {
			t.Fatalf("update %d: %s, want %s", i, text, texts[i])
		}
	}

	count, pieces, pieceToken := 0, 0, ""
	for count < n {
		resp, err := zwatch.Recv()
		if err != nil {
			t.Fatalf("authzed watch after %d updates: %v", count, err)
		}
		if resp.GetIsCheckpoint() {
			continue // a heartbeat before the write
		}
		pieces++
		count += len(resp.GetUpdates())
		if pieceToken == "" {
			pieceToken = resp.GetChangesThrough().GetToken()
		} else if resp.GetChangesThrough().GetToken() != pieceToken {
			t.Fatalf("piece %d at %s, the first at %s", pieces, resp.GetChangesThrough().GetToken(), pieceToken)
		}
	}
	if pieces < 2 || count != n {
		t.Fatalf("authzed watch: %d updates in %d responses", count, pieces)
	}
	last, err := zwatch.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if !last.GetIsCheckpoint() || len(last.GetUpdates()) != 0 {
		t.Fatalf("after the last piece: %v, want a checkpoint", last)
	}
	if last.GetChangesThrough().GetToken() != pieceToken {
		t.Errorf("checkpoint at %s, want the revision's %s", last.GetChangesThrough().GetToken(), pieceToken)
	}
}
