package server_test

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
)

// TestHugeSchemaRefused: a 360 KB `permission perm = rel + rel + ...` of
// 60,000 terms kept a core busy for 105 s; it is refused before compiling,
// for its size, as half of it is for its terms, with an error naming the
// limit, and nothing is written.
func TestHugeSchemaRefused(t *testing.T) {
	ts := startServer(t, nil)
	sum := func(terms int) string {
		return "definition user {}\ndefinition doc {\n  relation rel: user\n  permission perm = rel" +
			strings.Repeat(" + rel", terms-1) + "\n}\n"
	}
	_, err := ts.schema.WriteSchema(ts.ctx(), &pb.WriteSchemaRequest{Schema: sum(60_000)})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "360077 is over the maximum of 262144 (limit MaxBytes)") {
		t.Fatalf("WriteSchema: %v; want InvalidArgument naming MaxBytes", err)
	}
	huge := sum(30_000)

	start := time.Now()
	_, err = ts.schema.WriteSchema(ts.ctx(), &pb.WriteSchemaRequest{Schema: huge})
	t.Logf("WriteSchema refused in %v: %v", time.Since(start), err)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "30000 is over the maximum of 128 (limit MaxTerms)") {
		t.Fatalf("WriteSchema: %v; want InvalidArgument naming MaxTerms", err)
	}
	if _, err := ts.schema.ReadSchema(ts.ctx(), &pb.ReadSchemaRequest{}); status.Code(err) != codes.NotFound {
		t.Fatalf("after a refused write, ReadSchema: %v; want NotFound", err)
	}

	start = time.Now()
	resp, err := ts.schema.ValidateSchema(ts.ctx(), &pb.ValidateSchemaRequest{Schema: huge})
	t.Logf("ValidateSchema answered in %v", time.Since(start))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetValid() || !strings.Contains(resp.GetError().GetMessage(), "limit MaxTerms") || resp.GetError().GetLine() != 4 {
		t.Fatalf("ValidateSchema: %+v; want an error at line 4 naming MaxTerms", resp)
	}
}

// TestExactSnapshotAtRevisionZero: the token a server issues on an empty
// store names revision zero; a check at exactly that snapshot sees no
// schema, never the head's grants.
func TestExactSnapshotAtRevisionZero(t *testing.T) {
	ts := startServer(t, nil)
	const text = "definition user {}\ndefinition doc {\n  relation viewer: user\n  permission view = viewer\n}\n"
	resp, err := ts.schema.ValidateSchema(ts.ctx(), &pb.ValidateSchemaRequest{Schema: text})
	if err != nil {
		t.Fatal(err)
	}
	zero := resp.GetComparedAt().GetToken()
	ts.writeSchema(text)
	token := ts.write(update(touch, mustParse(t, "doc:1#viewer@user:ann")...)...)

	check := func(c *pb.Consistency) (*pb.CheckResponse, error) {
		return ts.perm.Check(ts.ctx(), &pb.CheckRequest{Consistency: c, Resource: obj("doc", "1"), Permission: "view", Subject: subj("user", "ann")})
	}
	if got, err := check(exact(token)); err != nil || got.GetDecision() != pb.Decision_DECISION_ALLOWED {
		t.Fatalf("at the write's token: %v, %v", got.GetDecision(), err)
	}
	got, err := check(exact(zero))
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "no schema") {
		t.Fatalf("at revision zero: %v, %v; want FailedPrecondition: no schema", got.GetDecision(), err)
	}
}
