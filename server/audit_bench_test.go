//go:build unix

package server

// Benchmarks of check throughput with auditing off and on (the file sink),
// over gRPC on loopback and in the handler path (the audit interceptor and
// the Check handler, no transport), on a scaled-down version of the bench
// workload: nested groups, a folder tree, documents with owners, group
// grants and folder inheritance, and agents acting for users through 2-link
// chains (agent -> agent -> user). Run:
//
//	go test ./server -run '^$' -bench 'BenchmarkAuditCheck' -benchtime 3s -count 6

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/mandate-authz/mandate/engine"
	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server/audit"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/memory"
	"github.com/mandate-authz/mandate/store/rel"
)

const auditBenchSchema = `
definition user {}

definition agent {
  relation acts_for: user | agent
}

definition group {
  relation member: user | group#member
}

definition folder {
  relation parent: folder
  relation viewer: user | group#member
  permission view = viewer + parent->view
}

definition document {
  relation folder: folder
  relation owner: user
  relation viewer: user | group#member | agent:*
  permission edit = owner
  permission view = edit + viewer + folder->view
}
`

const auditBenchKey = "bench-key"

// auditBenchData builds the workload: about 4 relationships a document, and
// 1,024 checks, half by users, half by agents through a 2-link chain.
func auditBenchData(users, groups, folders, docs int) ([]rel.Relationship, []*pb.CheckRequest) {
	r := rand.New(rand.NewPCG(42, 7))
	var rels []rel.Relationship
	add := func(s string) {
		x, err := rel.Parse(s)
		if err != nil {
			panic(err)
		}
		rels = append(rels, x)
	}
	for g := 1; g < groups; g++ {
		add(fmt.Sprintf("group:g%d#member@group:g%d#member", r.IntN(g), g))
	}
	for u := 0; u < users; u++ {
		add(fmt.Sprintf("group:g%d#member@user:u%d", r.IntN(groups), u))
		// Every user delegates to an agent, which delegates to a sub-agent.
		add(fmt.Sprintf("agent:a%d#acts_for@user:u%d", u, u))
		add(fmt.Sprintf("agent:s%d#acts_for@agent:a%d", u, u))
	}
	for f := 1; f < folders; f++ {
		add(fmt.Sprintf("folder:f%d#parent@folder:f%d", f, r.IntN(f)))
		if f%10 == 0 {
			add(fmt.Sprintf("folder:f%d#viewer@group:g%d#member", f, r.IntN(groups)))
		}
	}
	owner := make([]int, docs)
	for d := 0; d < docs; d++ {
		owner[d] = r.IntN(users)
		add(fmt.Sprintf("document:d%d#owner@user:u%d", d, owner[d]))
		add(fmt.Sprintf("document:d%d#folder@folder:f%d", d, r.IntN(folders)))
		if d%3 == 0 {
			add(fmt.Sprintf("document:d%d#viewer@group:g%d#member", d, r.IntN(groups)))
		}
		add(fmt.Sprintf("document:d%d#viewer@agent:*", d))
	}
	var checks []*pb.CheckRequest
	for i := 0; i < 1024; i++ {
		d := r.IntN(docs)
		u := owner[d]
		if i%4 == 1 {
			u = r.IntN(users) // mostly denied
		}
		sub := &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: "user", ObjectId: "u" + strconv.Itoa(u)}}
		if i%2 == 0 {
			sub = &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: "agent", ObjectId: "s" + strconv.Itoa(u)}}
		}
		checks = append(checks, &pb.CheckRequest{
			Resource:   &pb.ObjectReference{ObjectType: "document", ObjectId: "d" + strconv.Itoa(d)},
			Permission: "view",
			Subject:    sub,
		})
	}
	return rels, checks
}

var auditBenchCache struct {
	rels   []rel.Relationship
	checks []*pb.CheckRequest
}

// startAuditBench serves the workload, auditing to a file trail in a
// temporary directory when audited is set.
func startAuditBench(b *testing.B, audited bool) (*Server, []*pb.CheckRequest) {
	b.Helper()
	if auditBenchCache.rels == nil {
		auditBenchCache.rels, auditBenchCache.checks = auditBenchData(2_000, 200, 2_000, 10_000)
	}
	ctx := context.Background()
	st := memory.New()
	if _, err := st.WriteSchema(ctx, auditBenchSchema); err != nil {
		b.Fatal(err)
	}
	rels := auditBenchCache.rels
	for len(rels) > 0 {
		n := min(len(rels), 10_000)
		muts := make([]store.Mutation, n)
		for i, r := range rels[:n] {
			muts[i] = store.Mutation{Op: store.Touch, Rel: r}
		}
		if _, err := st.Write(ctx, nil, muts); err != nil {
			b.Fatal(err)
		}
		rels = rels[n:]
	}
	cfg := Config{GRPCAddr: "127.0.0.1:0", PresharedKeys: []string{auditBenchKey}, ShutdownGracePeriod: 5 * time.Second}
	var l *audit.Log
	if audited {
		sink, err := audit.OpenFileSink(b.TempDir(), 0, nil)
		if err != nil {
			b.Fatal(err)
		}
		if l, err = audit.New(ctx, audit.Options{Sink: sink, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}); err != nil {
			b.Fatal(err)
		}
		cfg.Audit = l
	}
	srv, err := New(st, engine.New(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- srv.Run(runCtx) }()
	b.Cleanup(func() {
		cancel()
		<-done
		if l != nil {
			l.Close(context.Background())
		}
		st.Close()
	})
	for !srv.Ready() {
		time.Sleep(time.Millisecond)
	}
	return srv, auditBenchCache.checks
}

func BenchmarkAuditCheckGRPC(b *testing.B) {
	for _, mode := range []string{"off", "file"} {
		b.Run("audit="+mode, func(b *testing.B) {
			srv, checks := startAuditBench(b, mode == "file")
			conn, err := grpc.NewClient(srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			client := pb.NewPermissionServiceClient(conn)
			ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+auditBenchKey)
			if _, err := client.Check(ctx, checks[0]); err != nil {
				b.Fatal(err)
			}
			b.SetParallelism(8) // enough calls in flight to keep the server busy
			b.ReportAllocs()
			b.ResetTimer()
			start, cpu0 := time.Now(), cpuTime()
			b.RunParallel(func(pb *testing.PB) {
				i := rand.IntN(len(checks))
				for pb.Next() {
					if _, err := client.Check(ctx, checks[i%len(checks)]); err != nil {
						b.Error(err)
						return
					}
					i++
				}
			})
			reportThroughput(b, start, cpu0)
		})
	}
}

// BenchmarkAuditCheckHandler runs the server interceptor (auth, audit) and the Check
// handler directly: the request path without the transport.
func BenchmarkAuditCheckHandler(b *testing.B) {
	for _, mode := range []string{"off", "file"} {
		b.Run("audit="+mode, func(b *testing.B) {
			srv, checks := startAuditBench(b, mode == "file")
			ps := &permissionService{s: srv}
			info := &grpc.UnaryServerInfo{FullMethod: pb.PermissionService_Check_FullMethodName}
			handler := func(ctx context.Context, req any) (any, error) { return ps.Check(ctx, req.(*pb.CheckRequest)) }
			base := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+auditBenchKey))
			base = peer.NewContext(base, &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5000}})
			b.ReportAllocs()
			b.ResetTimer()
			start, cpu0 := time.Now(), cpuTime()
			b.RunParallel(func(pb *testing.PB) {
				i := rand.IntN(len(checks))
				for pb.Next() {
					if _, err := srv.unaryInterceptor(base, checks[i%len(checks)], info, handler); err != nil {
						b.Error(err)
						return
					}
					i++
				}
			})
			reportThroughput(b, start, cpu0)
		})
	}
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportThroughput reports checks per second of wall time and the CPU time
// per check, which, unlike wall time, another process's load on a shared
// machine hardly changes: a machine with C free cores does about
// C/(cpu-ns/op) checks a second.
func reportThroughput(b *testing.B, start time.Time, cpu0 time.Duration) {
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "checks/s")
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
}
