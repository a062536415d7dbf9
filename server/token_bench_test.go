package server

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/mandate-authz/mandate/engine"
	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server/capability"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/memory"
	"github.com/mandate-authz/mandate/store/rel"
)

const tokenBenchSchema = `definition user {}
definition agent {
	relation acts_for: user | agent
}
definition calendar {
	relation owner: user
	relation reader: user | agent:*
	permission read = owner + reader
}`

// BenchmarkTokenCheckGRPC compares, in one run over loopback gRPC, the same
// check of agent:a reading calendar:bob three ways: with a capability token
// (verified once, then from the cache), through a stored one-link
// delegation (on_behalf_of user:bob, agent:a#acts_for@user:bob), and bob's
// own check as the baseline.
//
//	go test -run '^$' -bench BenchmarkTokenCheckGRPC -benchtime 20000x -count 3 ./server/
func BenchmarkTokenCheckGRPC(b *testing.B) {
	ctx := context.Background()
	st := memory.New()
	if _, err := st.WriteSchema(ctx, tokenBenchSchema); err != nil {
		b.Fatal(err)
	}
	var muts []store.Mutation
	for _, text := range []string{"calendar:bob#owner@user:bob", "calendar:bob#reader@agent:*", "agent:a#acts_for@user:bob"} {
		r, err := rel.Parse(text)
		if err != nil {
			b.Fatal(err)
		}
		muts = append(muts, store.Mutation{Op: store.Touch, Rel: r})
	}
	if _, err := st.Write(ctx, nil, muts); err != nil {
		b.Fatal(err)
	}
	key, err := capability.GenerateKey("k-bench", time.Now())
	if err != nil {
		b.Fatal(err)
	}
	keys, err := capability.NewKeySet(key)
	if err != nil {
		b.Fatal(err)
	}
	srv, err := New(st, engine.New(), Config{GRPCAddr: "127.0.0.1:0", PresharedKeys: []string{auditBenchKey},
		ShutdownGracePeriod: 5 * time.Second, CapabilityKeys: keys})
	if err != nil {
		b.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- srv.Run(runCtx) }()
	b.Cleanup(func() { cancel(); <-done; st.Close() })
	for !srv.Ready() {
		time.Sleep(time.Millisecond)
	}
	conn, err := grpc.NewClient(srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	client := pb.NewPermissionServiceClient(conn)
	actx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+auditBenchKey)
	obj := func(typ, id string) *pb.ObjectReference { return &pb.ObjectReference{ObjectType: typ, ObjectId: id} }
	minted, err := pb.NewTokenServiceClient(conn).Mint(actx, &pb.MintRequest{Holder: obj("agent", "a"), OnBehalfOf: obj("user", "bob"),
		Rights: []*pb.TokenRight{{ResourceType: "calendar", ResourceId: "bob", Permissions: []string{"read"}}}, Ttl: durationpb.New(time.Hour)})
	if err != nil {
		b.Fatal(err)
	}
	agent := &pb.SubjectReference{Object: obj("agent", "a")}
	for _, c := range []struct {
		name string
		req  *pb.CheckRequest
	}{
		{"token", &pb.CheckRequest{Resource: obj("calendar", "bob"), Permission: "read", Subject: agent, CapabilityToken: minted.GetToken()}},
		{"stored-delegation", &pb.CheckRequest{Resource: obj("calendar", "bob"), Permission: "read", Subject: agent, OnBehalfOf: obj("user", "bob")}},
		{"user", &pb.CheckRequest{Resource: obj("calendar", "bob"), Permission: "read", Subject: &pb.SubjectReference{Object: obj("user", "bob")}}},
	} {
		b.Run(c.name, func(b *testing.B) {
			resp, err := client.Check(actx, c.req)
			if err != nil || resp.GetDecision() != pb.Decision_DECISION_ALLOWED {
				b.Fatalf("%s: %v %v", c.name, resp, err)
			}
			b.SetParallelism(8) // enough calls in flight to keep the server busy
			b.ReportAllocs()
			b.ResetTimer()
			start, cpu0 := time.Now(), cpuTime()
			b.RunParallel(func(p *testing.PB) {
				for p.Next() {
					if _, err := client.Check(actx, c.req); err != nil {
						b.Error(err)
						return
					}
				}
			})
			reportThroughput(b, start, cpu0)
		})
	}
}
