package server

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/mandate-authz/mandate/engine"
	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/memory"
	"github.com/mandate-authz/mandate/store/rel"
)

// Lookup benchmark shape: lookupBenchDocs documents, user:u0 may view
// every lookupBenchEvery-th, so one lookup answers lookupBenchDocs /
// lookupBenchEvery results (about as many as the bench harness's lookups).
const (
	lookupBenchDocs  = 100_000
	lookupBenchEvery = 80
)

// BenchmarkLookupResources answers the same LookupResources in-process
// (the engine's stream), over mandate.v1 one result a message and with
// batch_results, and over authzed.api.v1, so that the cost the gRPC layer
// adds per result shows beside the engine's:
//
//	go test -run '^$' -bench BenchmarkLookupResources -cpuprofile cpu.out ./server/
func BenchmarkLookupResources(b *testing.B) {
	ctx := context.Background()
	eng, conn := startLookupBench(b)
	want := lookupBenchDocs / lookupBenchEvery
	req := engine.LookupResourcesRequest{ResourceType: "doc", Permission: "view", Subject: rel.Subject{Type: "user", ID: "u0"}}
	check := func(b *testing.B, n int) {
		if n != want {
			b.Fatalf("%d results, want %d", n, want)
		}
	}
	perResult := func(b *testing.B) {
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(want), "ns/result")
	}
	b.Run("api=in-process", func(b *testing.B) {
		for b.Loop() {
			n := 0
			if err := eng.StreamLookupResources(ctx, req, func(_ store.Revision, rs []engine.LookupResult) error {
				n += len(rs)
				return nil
			}); err != nil {
				b.Fatal(err)
			}
			check(b, n)
		}
		perResult(b)
	})
	authCtx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+auditBenchKey)
	b.Run("api=mandate.v1", func(b *testing.B) {
		client := pb.NewPermissionServiceClient(conn)
		for b.Loop() {
			stream, err := client.LookupResources(authCtx, &pb.LookupResourcesRequest{
				ResourceObjectType: "doc", Permission: "view", Subject: &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: "user", ObjectId: "u0"}},
			})
			if err != nil {
				b.Fatal(err)
			}
			check(b, drainStream(b, stream.Recv))
		}
		perResult(b)
	})
	b.Run("api=mandate.v1-batched", func(b *testing.B) {
		client := pb.NewPermissionServiceClient(conn)
		for b.Loop() {
			stream, err := client.LookupResources(authCtx, &pb.LookupResourcesRequest{
				ResourceObjectType: "doc", Permission: "view", Subject: &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: "user", ObjectId: "u0"}},
				BatchResults: true,
			})
			if err != nil {
				b.Fatal(err)
			}
			n := 0
			for {
				resp, err := stream.Recv()
				if err == io.EOF {
					break
				} else if err != nil {
					b.Fatal(err)
				}
				n += len(resp.GetResults())
			}
			check(b, n)
		}
		perResult(b)
	})
	b.Run("api=authzed.v1", func(b *testing.B) {
		client := v1.NewPermissionsServiceClient(conn)
		for b.Loop() {
			stream, err := client.LookupResources(authCtx, &v1.LookupResourcesRequest{
				ResourceObjectType: "doc", Permission: "view", Subject: &v1.SubjectReference{Object: &v1.ObjectReference{ObjectType: "user", ObjectId: "u0"}},
			})
			if err != nil {
				b.Fatal(err)
			}
			check(b, drainStream(b, stream.Recv))
		}
		perResult(b)
	})
}

func drainStream[T any](b *testing.B, recv func() (T, error)) int {
	n := 0
	for {
		if _, err := recv(); err == io.EOF {
			return n
		} else if err != nil {
			b.Fatal(err)
		}
		n++
	}
}

func startLookupBench(b *testing.B) (*engine.Engine, *grpc.ClientConn) {
	b.Helper()
	ctx := context.Background()
	st := memory.New()
	if _, err := st.WriteSchema(ctx, "definition user {}\n\ndefinition doc {\n\trelation viewer: user\n\tpermission view = viewer\n}\n"); err != nil {
		b.Fatal(err)
	}
	var rev store.Revision
	for start := 0; start < lookupBenchDocs; start += 10_000 {
		muts := make([]store.Mutation, 10_000)
		for i := range muts {
			n := start + i
			user := fmt.Sprintf("u%d", 1+n%1000)
			if n%lookupBenchEvery == 0 {
				user = "u0"
			}
			muts[i] = store.Mutation{Op: store.Touch, Rel: rel.Relationship{
				Resource: rel.Object{Type: "doc", ID: fmt.Sprintf("d%06d", n)}, Relation: "viewer",
				Subject: rel.Subject{Type: "user", ID: user},
			}}
		}
		var err error
		if rev, err = st.Write(ctx, nil, muts); err != nil {
			b.Fatal(err)
		}
	}
	eng := engine.New()
	conn := serveBench(b, st, eng)
	if err := eng.WaitForRevision(ctx, rev); err != nil {
		b.Fatal(err)
	}
	return eng, conn
}

// serveBench runs a server with the bench key over st and eng until the
// benchmark ends (then closing st), and returns a connection to its gRPC
// port once it serves.
func serveBench(b *testing.B, st store.Store, eng *engine.Engine) *grpc.ClientConn {
	b.Helper()
	srv, err := New(st, eng, Config{GRPCAddr: "127.0.0.1:0", PresharedKeys: []string{auditBenchKey}, ShutdownGracePeriod: 5 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(runCtx) }()
	conn, err := grpc.NewClient(srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		conn.Close()
		cancel()
		<-done
		st.Close()
	})
	for !srv.Ready() {
		time.Sleep(time.Millisecond)
	}
	return conn
}
