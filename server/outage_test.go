package server_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/store/postgres"
	"github.com/mandate-authz/mandate/store/postgres/pgtest"
	"github.com/mandate-authz/mandate/store/rel"
)

// tcpProxy forwards TCP connections to PostgreSQL. cut stops it as a
// database going away would look to its clients: every open connection is
// closed and new ones are refused (the listener is closed) until restore
// listens again on the same address.
type tcpProxy struct {
	t      *testing.T
	target string
	addr   string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]bool
}

func startTCPProxy(t *testing.T, target string) *tcpProxy {
	p := &tcpProxy{t: t, target: target, addr: "127.0.0.1:0", conns: map[net.Conn]bool{}}
	p.restore()
	t.Cleanup(p.cut)
	return p
}

func (p *tcpProxy) restore() {
	p.t.Helper()
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		p.t.Fatalf("proxy: listening again on %s: %v", p.addr, err)
	}
	p.mu.Lock()
	p.ln, p.addr = ln, ln.Addr().String()
	p.mu.Unlock()
	go p.serve(ln)
}

func (p *tcpProxy) serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		if p.ln != ln { // cut while dialing
			p.mu.Unlock()
			c.Close()
			up.Close()
			continue
		}
		p.conns[c], p.conns[up] = true, true
		p.mu.Unlock()
		go p.pipe(c, up)
		go p.pipe(up, c)
	}
}

func (p *tcpProxy) pipe(dst, src net.Conn) {
	io.Copy(dst, src)
	dst.Close()
	src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

func (p *tcpProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

// proxied returns uri with its host and port replaced by the proxy's.
func proxiedURI(t *testing.T, uri string) (proxied string, p *tcpProxy) {
	cfg, err := pgxpool.ParseConfig(uri)
	if err != nil {
		t.Fatal(err)
	}
	target := net.JoinHostPort(cfg.ConnConfig.Host, fmt.Sprint(cfg.ConnConfig.Port))
	if !strings.Contains(uri, target) {
		t.Skipf("%s does not name its host as host:port; cannot put a proxy in front of it", pgtest.EnvVar)
	}
	p = startTCPProxy(t, target)
	return strings.Replace(uri, target, p.addr, 1), p
}

// loadStats counts what the load saw, by phase and code.
type loadStats struct {
	mu    sync.Mutex
	codes map[string]int // "write/Unavailable", "fresh-check/OK", ...
	bad   []string       // violations: wrong decisions, wrong codes
	docs  []string       // every document the load tried to grant
}

func (s *loadStats) tried(doc string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.docs = append(s.docs, doc)
}

func (s *loadStats) documents() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.docs...)
}

func (s *loadStats) add(op string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.codes[op+"/"+status.Code(err).String()]++
	switch status.Code(err) {
	case codes.OK, codes.Unavailable:
	default:
		s.bad = append(s.bad, fmt.Sprintf("%s failed with %v (want OK or Unavailable)", op, err))
	}
}

func (s *loadStats) violation(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bad = append(s.bad, fmt.Sprintf(format, args...))
}

func (s *loadStats) count(key string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.codes[key]
}

// TestPostgresOutageUnderLoad runs a server over PostgreSQL through a
// proxy, with clients writing and checking concurrently, and cuts the
// proxy, then restores it. Every call answers OK or Unavailable, within
// bounds; no check answers from a state older than its token; the server
// turns not ready and, once the database is back, ready again without a
// restart, and sees every write, including those another replica made
// during the outage.
func TestPostgresOutageUnderLoad(t *testing.T) {
	const wait = time.Second // --max-revision-wait of the cut-off server
	uri := pgtest.URL(t)
	viaProxy, proxy := proxiedURI(t, uri)
	direct := openPostgres(t, uri, postgres.Options{MaxConns: 4})
	cutOff := openPostgres(t, viaProxy, postgres.Options{MaxConns: 8, PollInterval: 100 * time.Millisecond})
	name := "postgres:" + direct.ID()
	a := startReplica(t, "A", cutOff, name, func(c *server.Config) { c.MaxRevisionWait = wait })
	b := startReplica(t, "B", direct, name, nil)
	a.writeSchema(testSchema)

	// Each client grants a fresh document, checks it at the grant's
	// token, revokes it and checks at the revoke's token, over and over.
	// A write that fails leaves its document's state unknown (it may
	// have committed before the connection was cut), so that document is
	// never checked again.
	stats := &loadStats{codes: map[string]int{}}
	ctx, stopLoad := context.WithCancel(context.Background())
	var load sync.WaitGroup
	var ops atomic.Int64
	const clients = 4
	for c := range clients {
		load.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				doc := fmt.Sprintf("load-%d-%d", c, i)
				call := func(op string, f func(context.Context) error) error {
					cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
					defer cancel()
					start := time.Now()
					err := f(cctx)
					if ctx.Err() != nil {
						return ctx.Err() // the load is over; not a result
					}
					if took := time.Since(start); status.Code(err) == codes.Unavailable && took > 15*time.Second {
						stats.violation("%s took %v to fail", op, took)
					}
					stats.add(op, err)
					ops.Add(1)
					if err != nil {
						// Pace retries as a client would, rather than spin.
						time.Sleep(20 * time.Millisecond)
					}
					return err
				}
				checkAt := func(op string, c *pb.Consistency, want pb.Decision) {
					var d pb.Decision
					if err := call(op, func(cctx context.Context) error {
						resp, err := a.perm.Check(cctx, checkRequest(c, "doc:"+doc, "user:ann"))
						d = resp.GetDecision()
						return err
					}); err == nil && d != want {
						stats.violation("%s of doc:%s answered %v, want %v: a state older than the token", op, doc, d, want)
					}
				}
				writeTok := func(op string, o pb.RelationshipUpdate_Operation) (string, error) {
					var tok string
					err := call(op, func(cctx context.Context) error {
						resp, err := a.rels.WriteRelationships(cctx, &pb.WriteRelationshipsRequest{Updates: update(o, viewerRel(doc, "ann"))})
						tok = resp.GetWrittenAt().GetToken()
						return err
					})
					return tok, err
				}
				stats.tried(doc)
				granted, err := writeTok("grant", touch)
				if err != nil {
					continue
				}
				checkAt("fresh-check", fresh(granted), pb.Decision_DECISION_ALLOWED)
				checkAt("exact-check", exactAt(granted), pb.Decision_DECISION_ALLOWED)
				call("consistent-check", func(cctx context.Context) error {
					_, err := a.perm.Check(cctx, checkRequest(fullyConsistent(), "doc:"+doc, "user:ann"))
					return err
				})
				call("latency-check", func(cctx context.Context) error {
					_, err := a.perm.Check(cctx, checkRequest(minimizeLatency(), "doc:"+doc, "user:ann"))
					return err
				})
				revoked, err := writeTok("revoke", del)
				if err != nil {
					continue
				}
				checkAt("fresh-check", fresh(revoked), pb.Decision_DECISION_DENIED)
			}
		})
	}
	defer func() {
		stopLoad()
		load.Wait()
	}()
	waitFor := func(what string, within time.Duration, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(within); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within %v; load saw %v; log of A:\n%s", what, within, stats.codes, a.logs.String())
			}
		}
	}
	waitFor("the load gets going", 60*time.Second, func() bool { return stats.count("fresh-check/OK") >= 10 })

	proxy.cut()
	outage := time.Now()
	waitFor("A turns not ready", 30*time.Second, func() bool { return !a.srv.Ready() })
	if code, _, _ := restGet(t, a.base+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz during the outage: HTTP %d, want 503", code)
	}
	if h, err := a.health.Check(callCtx(t), &healthpb.HealthCheckRequest{}); err != nil || h.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("health during the outage: %v, %v; want NOT_SERVING", h, err)
	}
	// Writes and fully_consistent reads fail with Unavailable, promptly.
	start := time.Now()
	_, err := a.rels.WriteRelationships(callCtx(t), &pb.WriteRelationshipsRequest{Updates: update(touch, viewerRel("outage", "ann"))})
	wantUnavailable(t, "write during the outage", err)
	_, err = a.check(fullyConsistent(), "doc:outage", "user:ann")
	wantUnavailable(t, "fully_consistent check during the outage", err, "fully_consistent")
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("a write and a fully_consistent check took %v to fail", took)
	}
	// B, still connected, grants a document: A cannot have applied it,
	// so checks at its token fail, naming it, rather than deny.
	during := b.write(update(touch, viewerRel("during", "ann"))...)
	rev, err := direct.Head(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*pb.Consistency{"at_least_as_fresh": fresh(during), "at_exact_snapshot": exactAt(during)} {
		d, err := a.check(c, "doc:during", "user:ann")
		if err == nil {
			t.Errorf("%s check of B's outage write through A answered %v from a state older than the token", name, d)
			continue
		}
		wantUnavailable(t, name+" check of B's outage write through A", err, fmt.Sprintf("revision %d", rev))
	}
	// What A had applied is still answered.
	if _, err := a.check(minimizeLatency(), "doc:during", "user:ann"); err != nil {
		t.Errorf("minimize_latency check during the outage: %v", err)
	}
	// The load met the outage too before it ends.
	waitFor("the load meets the outage", 30*time.Second, func() bool { return stats.count("grant/Unavailable")+stats.count("revoke/Unavailable") > 0 })
	t.Logf("outage of %v", time.Since(outage).Round(time.Millisecond))

	proxy.restore()
	waitFor("A turns ready again", 60*time.Second, func() bool { return a.srv.Ready() })
	if code, _, _ := restGet(t, a.base+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz after recovery: HTTP %d, want 200", code)
	}
	if d := a.mustCheck(fresh(during), "doc:during", "user:ann"); d != pb.Decision_DECISION_ALLOWED {
		t.Errorf("after recovery, A says %v for B's outage write at its token", d)
	}
	if logs := a.logs.String(); !strings.Contains(logs, "cannot follow the store") || strings.Contains(logs, "reloading a snapshot") {
		t.Errorf("A should have logged the outage and resumed from its head without reloading a snapshot; log:\n%s", logs)
	}
	okBefore := stats.count("grant/OK")
	waitFor("the load writes again", 60*time.Second, func() bool { return stats.count("grant/OK") > okBefore+3 })
	stopLoad()
	load.Wait()

	// A sees exactly what the store holds: every relationship in it, and
	// none of the load's documents that it does not hold (revoked, or
	// never granted). A fresh write through A gives a token at least as
	// new as everything read from the store below.
	probe := a.write(update(touch, viewerRel("probe", "zed"))...)
	head, err := direct.Head(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	held := map[string]bool{} // "doc:x user:y"
	for r, err := range direct.Read(context.Background(), head, rel.Filter{}, nil) {
		if err != nil {
			t.Fatal(err)
		}
		held["doc:"+r.Resource.ID+" user:"+r.Subject.ID] = true
	}
	pairs := map[string]bool{}
	for k := range held {
		pairs[k] = true
	}
	for _, doc := range stats.documents() {
		pairs["doc:"+doc+" user:ann"] = true
	}
	var items []*pb.CheckBulkRequestItem
	var keys []string
	for k := range pairs {
		res, sub, _ := strings.Cut(k, " ")
		req := checkRequest(nil, res, sub)
		items = append(items, &pb.CheckBulkRequestItem{Resource: req.Resource, Permission: req.Permission, Subject: req.Subject})
		keys = append(keys, k)
	}
	for from := 0; from < len(items); from += 500 {
		to := min(from+500, len(items))
		resp, err := a.perm.CheckBulk(callCtx(t), &pb.CheckBulkRequest{Consistency: fresh(probe), Items: items[from:to]})
		if err != nil {
			t.Fatalf("CheckBulk after recovery: %v", err)
		}
		for i, pair := range resp.GetPairs() {
			k := keys[from+i]
			if pair.GetError() != nil {
				t.Errorf("after recovery, %s: %v", k, pair.GetError())
				continue
			}
			if got := pair.GetItem().GetDecision() == pb.Decision_DECISION_ALLOWED; got != held[k] {
				t.Errorf("after recovery A says %v for %s; the store holds it: %v", pair.GetItem().GetDecision(), k, held[k])
			}
		}
	}
	t.Logf("after recovery: %d relationships in the store, %d pairs checked", len(held), len(items))

	stats.mu.Lock()
	defer stats.mu.Unlock()
	t.Logf("load: %d calls: %v", ops.Load(), stats.codes)
	for _, v := range stats.bad {
		t.Error(v)
	}
}
