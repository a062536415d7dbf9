package server

import (
	"context"
	"fmt"
	"io"
	"testing"

	"google.golang.org/grpc/metadata"

	"github.com/mandate-authz/mandate/engine"
	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/embedded"
	"github.com/mandate-authz/mandate/store/memory"
	"github.com/mandate-authz/mandate/store/rel"
)

const pagingBenchRels = 100_000

// BenchmarkReadPaging pages through 100,000 relationships with
// ReadRelationships over gRPC, page after page by cursor, with pages of
// 100 and of 1,000: one op is the whole walk. With the store resuming
// after the cursor's key, the two totals are close; re-reading everything
// before the cursor made the smaller pages about ten times dearer.
//
//	go test -run '^$' -bench BenchmarkReadPaging -benchtime 3x ./server/
func BenchmarkReadPaging(b *testing.B) {
	for _, kind := range []string{"memory", "embedded"} {
		b.Run("store="+kind, func(b *testing.B) {
			client, ctx := startPagingBench(b, kind)
			for _, size := range []uint32{100, 1000} {
				b.Run(fmt.Sprintf("page=%d", size), func(b *testing.B) {
					for b.Loop() {
						if n := readAllPages(b, ctx, client, size); n != pagingBenchRels {
							b.Fatalf("paged through %d relationships, want %d", n, pagingBenchRels)
						}
					}
					b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/pagingBenchRels, "ns/relationship")
				})
			}
		})
	}
}

// readAllPages reads every relationship in pages of size, each resuming
// from the previous page's last cursor, and returns how many it read.
func readAllPages(b *testing.B, ctx context.Context, client pb.RelationshipServiceClient, size uint32) int {
	var cursor *pb.Cursor
	var consistency *pb.Consistency
	total := 0
	for {
		stream, err := client.ReadRelationships(ctx, &pb.ReadRelationshipsRequest{
			Filter: &pb.RelationshipFilter{ResourceType: "doc"}, OptionalLimit: size, OptionalCursor: cursor, Consistency: consistency,
		})
		if err != nil {
			b.Fatal(err)
		}
		n := 0
		for {
			resp, err := stream.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			cursor = resp.GetAfterResultCursor()
			n++
		}
		total += n
		if n < int(size) {
			return total
		}
	}
}

func startPagingBench(b *testing.B, kind string) (pb.RelationshipServiceClient, context.Context) {
	b.Helper()
	ctx := context.Background()
	var st store.Store
	switch kind {
	case "memory":
		st = memory.New()
	case "embedded":
		es, err := embedded.Open(ctx, b.TempDir(), embedded.Options{})
		if err != nil {
			b.Fatal(err)
		}
		st = es
	}
	if _, err := st.WriteSchema(ctx, "definition user {}\n\ndefinition doc {\n\trelation viewer: user\n}\n"); err != nil {
		b.Fatal(err)
	}
	for start := 0; start < pagingBenchRels; start += 10_000 {
		muts := make([]store.Mutation, 10_000)
		for i := range muts {
			n := start + i
			muts[i] = store.Mutation{Op: store.Touch, Rel: rel.Relationship{
				Resource: rel.Object{Type: "doc", ID: fmt.Sprintf("d%06d", n)}, Relation: "viewer",
				Subject: rel.Subject{Type: "user", ID: fmt.Sprintf("u%d", n%1000)},
			}}
		}
		if _, err := st.Write(ctx, nil, muts); err != nil {
			b.Fatal(err)
		}
	}
	conn := serveBench(b, st, engine.New())
	return pb.NewRelationshipServiceClient(conn), metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+auditBenchKey)
}
