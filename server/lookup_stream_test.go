package server_test

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
)

// lookedUp is one LookupResources result as a client sees it.
type lookedUp struct {
	id       string
	decision pb.Decision
	missing  string
}

// lookupAll drains a LookupResources stream, batched or not, and returns
// its results, the number of messages, and each message's cursor.
func lookupAll(t *testing.T, ts *testServer, req *pb.LookupResourcesRequest) ([]lookedUp, []*pb.Cursor, []string) {
	t.Helper()
	stream, err := ts.perm.LookupResources(ts.ctx(), req)
	if err != nil {
		t.Fatal(err)
	}
	var out []lookedUp
	var cursors []*pb.Cursor
	var tokens []string
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, cursors, tokens
		}
		if err != nil {
			t.Fatal(err)
		}
		cursors = append(cursors, r.GetAfterResultCursor())
		tokens = append(tokens, r.GetLookedUpAt().GetToken())
		if !req.GetBatchResults() {
			out = append(out, lookedUp{r.GetResourceObjectId(), r.GetDecision(), fmt.Sprint(r.GetMissingParameters())})
			continue
		}
		if r.GetResourceObjectId() != "" || r.GetDecision() != pb.Decision_DECISION_UNSPECIFIED || len(r.GetResults()) == 0 {
			t.Fatalf("batched response with top-level fields or no results: %v", r)
		}
		for _, x := range r.GetResults() {
			out = append(out, lookedUp{x.GetResourceObjectId(), x.GetDecision(), fmt.Sprint(x.GetMissingParameters())})
		}
	}
}

// TestLookupResourcesBatched drives batch_results over gRPC: the same
// results in the same order as one result a message, in far fewer
// messages, each resuming after its last result, at one revision.
func TestLookupResourcesBatched(t *testing.T) {
	ts := startServer(t, nil)
	ts.writeSchema(testSchema)
	var rels []*pb.Relationship
	for i := range 3000 {
		text := fmt.Sprintf("doc:d%04d#viewer@user:ann", i)
		if i%7 == 0 {
			text += "[within_limit:{\"limit\":10}]" // conditional: amount is missing
		}
		rels = append(rels, mustParse(t, text)...)
		if i%10 == 0 {
			rels = append(rels, mustParse(t, fmt.Sprintf("doc:d%04d#banned@user:ann", i))...)
		}
	}
	var token string
	for c := range slices.Chunk(rels, 1000) {
		token = ts.write(update(create, c...)...)
	}
	base := &pb.LookupResourcesRequest{Consistency: fresh(token), ResourceObjectType: "doc", Permission: "view", Subject: subj("user", "ann")}

	one, oneCursors, _ := lookupAll(t, ts, base)
	if len(one) != 2700 || len(oneCursors) != len(one) {
		t.Fatalf("one a message: %d results in %d messages, want 2,700 each", len(one), len(oneCursors))
	}
	batched := clone(base)
	batched.BatchResults = true
	got, cursors, tokens := lookupAll(t, ts, batched)
	if !slices.Equal(got, one) {
		t.Fatalf("batched results differ from one a message: %d vs %d results", len(got), len(one))
	}
	if n := len(cursors); n < 2 || n > 20 {
		t.Errorf("%d results came in %d messages; want a few batches", len(got), n)
	}
	for _, tok := range tokens {
		if tok != tokens[0] {
			t.Fatalf("batches at different revisions: %q, %q", tokens[0], tok)
		}
	}
	conditional := 0
	for _, r := range got {
		if r.decision == pb.Decision_DECISION_CONDITIONAL && r.missing == "[amount]" {
			conditional++
		}
	}
	if conditional != 386 { // d0000..d2999 by 7, less those banned (by 70)
		t.Errorf("%d conditional results missing [amount], want 386", conditional)
	}

	// Each batch's cursor resumes after its last result, batched or not: a
	// cursor does not depend on batch_results.
	seen := 0
	for i, cur := range cursors[:len(cursors)-1] {
		stream, err := ts.perm.LookupResources(ts.ctx(), &pb.LookupResourcesRequest{ResourceObjectType: "doc", Permission: "view", Subject: subj("user", "ann"), OptionalCursor: cur, OptionalLimit: 1})
		if err != nil {
			t.Fatal(err)
		}
		r, err := stream.Recv()
		if err != nil {
			t.Fatalf("resuming after batch %d: %v", i, err)
		}
		idx := slices.IndexFunc(one, func(x lookedUp) bool { return x.id == r.GetResourceObjectId() })
		if idx <= seen && i > 0 || idx < 0 {
			t.Fatalf("resuming after batch %d gave %s (result %d), not a later result than batch %d's", i, r.GetResourceObjectId(), idx, i-1)
		}
		seen = idx
	}

	// Pages of a limit, batched, walk the same answer.
	paged := clone(batched)
	paged.OptionalLimit = 500
	var all []lookedUp
	for range 10 {
		page, cs, _ := lookupAll(t, ts, paged)
		if len(page) == 0 {
			break
		}
		if len(page) > 500 {
			t.Fatalf("page of %d results, limit 500", len(page))
		}
		all = append(all, page...)
		paged.OptionalCursor, paged.Consistency = cs[len(cs)-1], nil
	}
	if !slices.Equal(all, one) {
		t.Errorf("batched pages of 500: %d results, want the %d of one call", len(all), len(one))
	}
}

func clone(r *pb.LookupResourcesRequest) *pb.LookupResourcesRequest {
	return proto.Clone(r).(*pb.LookupResourcesRequest)
}

// TestStreamedLookupFailsUnaudited: results stream before the lookup's
// audit event is recorded, so a trail that refuses the event turns the
// lookup's end into UNAVAILABLE instead of success.
func TestStreamedLookupFailsUnaudited(t *testing.T) {
	ts, rec := startAudited(t)
	ts.writeSchema(testSchema)
	token := ts.write(update(create, mustParse(t, "doc:1#viewer@user:ann", "doc:2#viewer@user:ann")...)...)
	rec.setRefuse(errors.New("audit trail full"))
	for _, batch := range []bool{false, true} {
		stream, err := ts.perm.LookupResources(ts.ctx(), &pb.LookupResourcesRequest{Consistency: fresh(token), ResourceObjectType: "doc", Permission: "view", Subject: subj("user", "ann"), BatchResults: batch})
		if err != nil {
			t.Fatal(err)
		}
		for {
			_, err = stream.Recv()
			if err != nil {
				break
			}
		}
		wantCode(t, err, codes.Unavailable, "audit trail cannot record this call", "audit trail full")
	}
}
