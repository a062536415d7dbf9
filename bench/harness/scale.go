package harness

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/mandate-authz/mandate/bench/workload"
	"github.com/mandate-authz/mandate/engine"
	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/embedded"
	"github.com/mandate-authz/mandate/store/rel"
)

// ScaleOptions configures the scale mode: one large workload of the
// default shape, bulk-imported into a durable store, then served by one
// Mandate replica and measured in-process and over gRPC.
type ScaleOptions struct {
	// Relationships sizes the workload (workload.ScaledConfig); Agents is
	// the number of agents in 1-3 link chains added to it.
	Relationships int
	Agents        int
	Seed          uint64
	// Store is "embedded" (a temporary directory) or "postgres" (a fresh
	// database on PostgresURL).
	Store       string
	PostgresURL string
	// Dir, for the embedded store, keeps the imported store in this
	// directory instead of a temporary one, and a later run with the same
	// Relationships, Agents and Seed reuses it without importing again: a
	// 100M import is an hour on two cores, and the replica it loads is what
	// each build is measured on.
	Dir string
	// ImportOnly stops once the workload is imported (into Dir).
	ImportOnly bool
	// ProfileDir, when set, receives CPU profiles of the in-process check
	// and lookup measurements (scale-check.pprof, scale-lookup.pprof).
	ProfileDir string
	// Duration and Concurrency are each measurement's.
	Duration    time.Duration
	Concurrency int
	Log         io.Writer
}

// ScaleResult is what a scale run measured.
type ScaleResult struct {
	Store         string  `json:"store"`
	Relationships int     `json:"relationships"`
	AgentLinks    int     `json:"agent_links"`
	ImportSeconds float64 `json:"import_seconds"`
	// EngineLoadSeconds is a fresh replica's start over the loaded store:
	// until it serves, its index built from a snapshot.
	EngineLoadSeconds float64 `json:"engine_load_seconds"`
	// HeapMiB is the Go heap the replica added (after GC); RSSMiB the
	// process's resident memory once loaded, the generator's bookkeeping
	// and any store caches included.
	HeapMiB         float64 `json:"heap_mib"`
	RSSMiB          float64 `json:"rss_mib"`
	HeapBytesPerRel float64 `json:"heap_bytes_per_relationship"`
	RSSBytesPerRel  float64 `json:"rss_bytes_per_relationship"`
	// ExpiringLinks are the links that expire during the measurements
	// (written once the replica serves; see RunScale).
	ExpiringLinks int        `json:"expiring_links"`
	Check         *Stats     `json:"check_in_process"`
	CheckGRPC     *Stats     `json:"check_grpc"`
	AgentCheck    *Stats     `json:"agent_check_in_process"`
	Lookup        *Stats     `json:"lookup_in_process"`
	LookupGRPC    *Stats     `json:"lookup_grpc"`
	LoadAvgStart  [3]float64 `json:"load_average_start"`
	LoadAvgEnd    [3]float64 `json:"load_average_end"`
}

// RunScale runs the scale mode.
func RunScale(ctx context.Context, o ScaleOptions) (*ScaleResult, error) {
	if o.Log == nil {
		o.Log = io.Discard
	}
	logf := func(format string, args ...any) {
		fmt.Fprintf(o.Log, "scale: %s (load average %s)\n", fmt.Sprintf(format, args...), formatLoad(loadAvg()))
	}
	res := &ScaleResult{Store: o.Store, LoadAvgStart: loadAvg()}
	var uri string
	if o.Store == "postgres" {
		u, drop, err := freshDatabase(ctx, o.PostgresURL, "mandate-scale")
		if err != nil {
			return nil, err
		}
		defer drop()
		uri = u
	}
	var st store.Store
	var imported bool // Dir already holds this workload
	marker := scaleMarker{Relationships: o.Relationships, Agents: o.Agents, Seed: o.Seed}
	if o.Dir != "" {
		if o.Store != "embedded" {
			return nil, fmt.Errorf("a scale directory is for the embedded store, not %q", o.Store)
		}
		imported = marker.in(o.Dir)
		es, err := embedded.Open(ctx, o.Dir, embedded.Options{})
		if err != nil {
			return nil, fmt.Errorf("opening the embedded store in %s: %w", o.Dir, err)
		}
		st = es
		if imported {
			logf("reusing the store imported in %s", o.Dir)
		}
	} else {
		s, cleanup, err := mandateStore(ctx, o.Store, uri)
		if err != nil {
			return nil, err
		}
		defer cleanup()
		st = s
	}
	defer st.Close()
	if !imported {
		if _, err := st.WriteSchema(ctx, workload.ScaleSchema); err != nil {
			return nil, fmt.Errorf("writing the schema: %w", err)
		}
	}

	// Bulk import, as ImportRelationships does: batches of creates.
	start := time.Now()
	batch := make([]store.Mutation, 0, loadBatch)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if _, err := st.Write(ctx, nil, batch); err != nil {
			return fmt.Errorf("importing at relationship %d: %w", res.Relationships+res.AgentLinks, err)
		}
		batch = batch[:0]
		return nil
	}
	count := &res.Relationships
	emit := func(r rel.Relationship) error {
		*count++
		if imported {
			return nil // in the store already: only the workload is rebuilt
		}
		batch = append(batch, store.Mutation{Op: store.Create, Rel: r})
		if *count%1_000_000 == 0 {
			logf("imported %d", *count)
		}
		if len(batch) == cap(batch) {
			return flush()
		}
		return nil
	}
	cfg := workload.ScaledConfig(o.Relationships)
	cfg.Seed = o.Seed
	w, err := workload.Stream(cfg, emit)
	if err == nil {
		err = flush()
	}
	if err != nil {
		return nil, err
	}
	count = &res.AgentLinks
	// The expiring links are held back and written once the replica
	// serves, expiring over the measurements' first five Durations:
	// however long the import and the load take, they expire during the
	// run. ScaleAgents draws their expiries as offsets from the epoch.
	var held []rel.Relationship
	epoch := time.Unix(0, 0)
	agents, _, err := workload.ScaleAgents(o.Seed, o.Agents, cfg.Users, epoch, 5*o.Duration, func(r rel.Relationship) error {
		if !r.Expiration.IsZero() {
			held = append(held, r)
			res.AgentLinks++
			return nil
		}
		return emit(r)
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return nil, err
	}
	res.ImportSeconds = time.Since(start).Seconds()
	if o.Dir != "" && !imported {
		if err := marker.write(o.Dir); err != nil {
			return nil, err
		}
	}
	if imported {
		res.ImportSeconds = 0 // not measured: see the run that imported it
	}
	logf("imported %d relationships and %d agent links in %.0fs", res.Relationships, res.AgentLinks, res.ImportSeconds)

	if o.ImportOnly {
		return res, nil
	}

	// A fresh replica over the loaded store.
	base := heapInUse()
	eng := engine.New()
	srvCfg := server.Config{GRPCAddr: "127.0.0.1:0", PresharedKeys: []string{presharedKey}, ShutdownGracePeriod: 5 * time.Second}
	if id, ok := st.(interface{ ID() string }); ok {
		srvCfg.StoreName = o.Store + ":" + id.ID()
	}
	start = time.Now()
	srv, err := server.New(st, eng, srvCfg)
	if err != nil {
		return nil, err
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(runCtx) }()
	defer func() {
		stop()
		<-done
	}()
	for !srv.Ready() {
		select {
		case err := <-done:
			done <- err
			return nil, fmt.Errorf("the server stopped before it was ready: %w", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	head, err := st.Head(ctx)
	if err == nil {
		err = eng.WaitForRevision(ctx, head)
	}
	if err != nil {
		return nil, err
	}
	res.EngineLoadSeconds = time.Since(start).Seconds()
	heap := heapInUse()
	res.HeapMiB = float64(int64(heap)-int64(base)) / (1 << 20)
	res.RSSMiB = float64(rssBytes()) / (1 << 20)
	total := float64(res.Relationships + res.AgentLinks)
	res.HeapBytesPerRel = float64(int64(heap)-int64(base)) / total
	res.RSSBytesPerRel = float64(rssBytes()) / total
	logf("replica loaded in %.1fs: heap +%.0f MiB (%.0f B a relationship), RSS %.0f MiB", res.EngineLoadSeconds, res.HeapMiB, res.HeapBytesPerRel, res.RSSMiB)

	conn, err := grpc.NewClient(srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(bearer(presharedKey)), grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	client := pb.NewPermissionServiceClient(conn)
	inproc := &mandateInProcess{eng: eng}
	measureStart := time.Now().Add(5 * time.Second)
	var expiring []time.Time
	batch = batch[:0]
	for _, l := range held {
		l.Expiration = measureStart.Add(l.Expiration.Sub(epoch))
		expiring = append(expiring, l.Expiration)
		// Touch: a reused store holds the links an earlier run wrote.
		batch = append(batch, store.Mutation{Op: store.Touch, Rel: l})
		if len(batch) == cap(batch) {
			if err := flush(); err != nil {
				return nil, err
			}
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	for i := range agents {
		if !agents[i].Expires.IsZero() {
			agents[i].Expires = measureStart.Add(agents[i].Expires.Sub(epoch))
		}
	}
	if head, err = st.Head(ctx); err == nil {
		err = eng.WaitForRevision(ctx, head)
	}
	if err != nil {
		return nil, err
	}
	res.ExpiringLinks = len(expiring)
	logf("wrote the %d links that expire during the run", res.ExpiringLinks)
	time.Sleep(time.Until(measureStart))
	remote := &mandateGRPC{perm: client, cons: &pb.Consistency{Requirement: &pb.Consistency_MinimizeLatency{MinimizeLatency: true}}}

	checks := func(e Engine) Stats {
		var next atomic.Int64
		return measure(ctx, o.Duration, o.Concurrency, func(ctx context.Context, _, _ int) (int, int, error) {
			c := w.Checks[int(next.Add(1)-1)%len(w.Checks)]
			if _, err := e.Check(ctx, c); err != nil {
				return 0, 0, fmt.Errorf("check %s: %w", c, err)
			}
			return 1, 0, nil
		})
	}
	profile := func(what string, f func() Stats) *Stats {
		if o.ProfileDir == "" {
			return ptr(f())
		}
		file, err := os.Create(filepath.Join(o.ProfileDir, "scale-"+what+".pprof"))
		if err == nil {
			if err = pprof.StartCPUProfile(file); err != nil {
				file.Close()
			}
		}
		if err != nil {
			logf("no CPU profile of the %s measurement: %v", what, err)
			return ptr(f())
		}
		defer file.Close()
		defer pprof.StopCPUProfile()
		return ptr(f())
	}
	res.Check = profile("check", func() Stats { return checks(inproc) })
	logf("checks in-process: %.0f/s on %.2f cores, p50 %.3f ms, p99 %.3f ms", res.Check.ItemsPerSec, res.Check.CPUCores, res.Check.P50Ms, res.Check.P99Ms)
	res.CheckGRPC = ptr(checks(remote))
	logf("checks over gRPC: %.0f/s on %.2f cores, p50 %.3f ms, p99 %.3f ms", res.CheckGRPC.ItemsPerSec, res.CheckGRPC.CPUCores, res.CheckGRPC.P50Ms, res.CheckGRPC.P99Ms)

	// Agents check the pool's documents through their chains: a chain
	// with an expiring link denies once it has expired.
	var next atomic.Int64
	var allowed, expired atomic.Int64
	res.AgentCheck = ptr(measure(ctx, o.Duration, o.Concurrency, func(ctx context.Context, _, _ int) (int, int, error) {
		a := agents[int(next.Add(1)-1)%len(agents)]
		c := workload.Check{Resource: w.Checks[int(next.Load())%len(w.Checks)].Resource, Subject: a.Agent}
		ok, err := inproc.Check(ctx, c)
		if err != nil {
			return 0, 0, fmt.Errorf("agent check %s: %w", c, err)
		}
		if ok {
			allowed.Add(1)
		}
		if !a.Expires.IsZero() && time.Now().After(a.Expires) {
			expired.Add(1)
		}
		return 1, 0, nil
	}))
	logf("agent checks in-process (1-3 links): %.0f/s, p99 %.3f ms; %d allowed, %d through an expired link", res.AgentCheck.ItemsPerSec, res.AgentCheck.P99Ms, allowed.Load(), expired.Load())
	defer func() {
		n := 0
		for _, t := range expiring {
			if time.Now().After(t) {
				n++
			}
		}
		logf("%d of the %d expiring links had expired by the end", n, len(expiring))
	}()

	lookups := func(e Engine) Stats {
		var next atomic.Int64
		return measure(ctx, o.Duration, o.Concurrency, func(ctx context.Context, _, _ int) (int, int, error) {
			u := w.LookupUsers[int(next.Add(1)-1)%len(w.LookupUsers)]
			ids, err := e.LookupResources(ctx, u, nil)
			if err != nil {
				return 0, 0, fmt.Errorf("lookup %s: %w", u, err)
			}
			return 1, len(ids), nil
		})
	}
	res.Lookup = profile("lookup", func() Stats { return lookups(inproc) })
	logf("lookups in-process: %.1f/s, p50 %.1f ms, mean %.0f results", res.Lookup.CallsPerSec, res.Lookup.P50Ms, res.Lookup.Results)
	res.LookupGRPC = ptr(lookups(remote))
	logf("lookups over gRPC: %.1f/s, p50 %.1f ms, mean %.0f results", res.LookupGRPC.CallsPerSec, res.LookupGRPC.P50Ms, res.LookupGRPC.Results)
	res.LoadAvgEnd = loadAvg()
	return res, nil
}

// scaleMarker records in a scale directory which workload it holds.
type scaleMarker struct {
	Relationships int    `json:"relationships"`
	Agents        int    `json:"agents"`
	Seed          uint64 `json:"seed"`
}

const scaleMarkerFile = "scale-import.json"

// in reports whether dir holds m's workload, completely imported.
func (m scaleMarker) in(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, scaleMarkerFile))
	if err != nil {
		return false
	}
	var got scaleMarker
	return json.Unmarshal(b, &got) == nil && got == m
}

func (m scaleMarker) write(dir string) error {
	b, _ := json.Marshal(m)
	if err := os.WriteFile(filepath.Join(dir, scaleMarkerFile), b, 0o644); err != nil {
		return fmt.Errorf("recording the import in %s: %w", dir, err)
	}
	return nil
}

// rssBytes is the process's resident set (VmRSS), or 0 when unknown.
func rssBytes() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}
