// Package harness runs one seeded workload against Mandate (in-process and
// over gRPC), SpiceDB and OpenFGA (each on its memory datastore and on
// PostgreSQL), measures load time, memory, check, bulk check, lookup and
// write throughput and latency, and fails when the engines' answers to the
// same checks differ.
package harness

import (
	"context"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mandate-authz/mandate/bench/workload"
)

// Options configures a run.
type Options struct {
	Workload workload.Config
	// Engines to run, by name (AllEngines; also mandate-grpc-embedded and
	// mandate-grpc-postgres for the gRPC server on those stores).
	Engines []string
	// Duration bounds each measurement; Concurrency is the number of
	// concurrent callers; BulkSize the items per bulk check.
	Duration    time.Duration
	Concurrency int
	BulkSize    int
	Consistency Consistency
	// PostgresURL is the server the engines on PostgreSQL get fresh
	// databases on (dropped afterwards unless KeepDatabases).
	PostgresURL   string
	KeepDatabases bool
	// Verify is how many checks of each pool every engine answers at the
	// end if the timed runs did not reach them, so that slow engines are
	// compared on at least that many; VerifyLookups likewise for lookups.
	Verify        int
	VerifyLookups int
	// VerifyTimeout bounds one engine's verification pass: an engine too
	// slow to answer Verify checks in that time is compared on fewer.
	VerifyTimeout time.Duration
	// LoadTimeout bounds one engine's load; an engine that does not load
	// in time is reported and skipped.
	LoadTimeout time.Duration
	// ProfileDir, when set, receives a CPU profile of each engine's check
	// lookup and write measurements (<engine>-<measurement>.pprof): the whole process, so
	// an in-process peer's server shows in it too.
	ProfileDir string
	// Measure names the measurements to run (Measurements; nil: all of
	// them). The verification pass always runs.
	Measure []string
	// Log receives progress lines; nil discards them.
	Log io.Writer
}

// Measurements are the measurements a run can make, in run order.
var Measurements = []string{"check", "agent", "bulk", "lookup", "write"}

// measures reports whether the run makes measurement m.
func (o Options) measures(m string) bool {
	return o.Measure == nil || slices.Contains(o.Measure, m)
}

// DefaultOptions are the settings.
func DefaultOptions() Options {
	return Options{
		Workload: workload.DefaultConfig(), Engines: AllEngines,
		Duration: 10 * time.Second, Concurrency: 16, BulkSize: 100, Consistency: MinimizeLatency,
		PostgresURL: PostgresURLFromEnv(), Verify: 1000, VerifyLookups: 3, LoadTimeout: 10 * time.Minute,
		VerifyTimeout: 3 * time.Minute,
	}
}

// EngineResult is what one engine measured.
type EngineResult struct {
	Engine string `json:"engine"`
	// Error is set when the engine could not start or load; nothing else
	// was measured then.
	Error       string  `json:"error,omitempty"`
	LoadSeconds float64 `json:"load_seconds"`
	LoadedRels  int     `json:"loaded_relationships"`
	// HeapMiB is the Go heap in use after a forced GC once loaded, minus
	// the lower of the same before the engine started and after it
	// stopped: what the engine keeps in this process (its index, caches,
	// connection pools). It leaves out PostgreSQL's own memory;
	// DatabaseMiB is the database's size on disk.
	HeapMiB     float64 `json:"heap_after_gc_mib"`
	DatabaseMiB float64 `json:"database_mib,omitempty"`
	Check       *Stats  `json:"check,omitempty"`
	AgentCheck  *Stats  `json:"agent_check,omitempty"`
	CheckBulk   *Stats  `json:"check_bulk,omitempty"`
	Lookup      *Stats  `json:"lookup_resources,omitempty"`
	Write       *Stats  `json:"write,omitempty"`
	// Answered counts the pool checks this engine answered (timed runs and
	// verification), compared with every other engine's answers.
	Answered      int        `json:"checks_answered"`
	AgentAnswered int        `json:"agent_checks_answered,omitempty"`
	LoadAvg       [3]float64 `json:"load_average_at_start"`
	Profiles      []string   `json:"cpu_profiles,omitempty"`
}

// answers holds one engine's decisions on a pool: -1 unanswered, 0 denied,
// 1 allowed. Each index is written by at most one worker per phase.
type answers struct {
	v        []int8
	conflict atomic.Pointer[string] // the first check answered two ways
}

func newAnswers(n int) *answers {
	a := &answers{v: make([]int8, n)}
	for i := range a.v {
		a.v[i] = -1
	}
	return a
}

func (a *answers) set(i int, ok bool, what func() string) {
	var v int8
	if ok {
		v = 1
	}
	if old := a.v[i]; old >= 0 && old != v {
		msg := fmt.Sprintf("%s answered %s, then %s", what(), word(old), word(v))
		a.conflict.CompareAndSwap(nil, &msg)
	}
	a.v[i] = v
}

func (a *answers) count() int {
	n := 0
	for _, v := range a.v {
		if v >= 0 {
			n++
		}
	}
	return n
}

func word(v int8) string {
	switch v {
	case 1:
		return "allowed"
	case 0:
		return "denied"
	}
	return "unanswered"
}

// lookupAnswer summarizes one lookup's result set.
type lookupAnswer struct {
	done  bool
	count int
	hash  uint64
}

func summarize(ids []string) lookupAnswer {
	var sum uint64
	for _, id := range ids {
		h := fnv.New64a()
		h.Write([]byte(id))
		sum += h.Sum64()
	}
	return lookupAnswer{done: true, count: len(ids), hash: sum}
}

// Report is a whole run.
type Report struct {
	Machine      Machine        `json:"machine"`
	Command      string         `json:"command"`
	Options      ReportOptions  `json:"options"`
	Relations    int            `json:"relationships"`
	AgentRels    int            `json:"agent_relationships"`
	Results      []EngineResult `json:"results"`
	Goals        []Goal         `json:"goals"`
	Agreement    string         `json:"agreement"`
	LoadAvgStart [3]float64     `json:"load_average_start"`
	LoadAvgEnd   [3]float64     `json:"load_average_end"`
	Started      time.Time      `json:"started"`
	Finished     time.Time      `json:"finished"`
}

// ReportOptions is the part of Options a report records.
type ReportOptions struct {
	Workload    workload.Config `json:"workload"`
	Engines     []string        `json:"engines"`
	Duration    string          `json:"duration_per_measurement"`
	Concurrency int             `json:"concurrency"`
	BulkSize    int             `json:"bulk_size"`
	Consistency Consistency     `json:"consistency"`
}

// DisagreementError reports the first check two engines answered
// differently.
type DisagreementError struct{ Msg string }

func (e *DisagreementError) Error() string { return e.Msg }

type runner struct {
	opts      Options
	w         *workload.Workload
	log       io.Writer
	checks    map[string]*answers
	agents    map[string]*answers
	lookups   map[string][]lookupAnswer
	principal map[string]*answers // the agents' principals' own answers
	order     []string
	openFn    opener
}

// Run generates the workload and runs every engine in turn. It returns the
// report, and a *DisagreementError (with the report) when answers differ.
func Run(ctx context.Context, opts Options) (*Report, error) {
	return run(ctx, opts, nil)
}

// opener starts an engine by name; tests substitute engines with it.
type opener func(ctx context.Context, name, dbURL string) (Engine, error)

func run(ctx context.Context, opts Options, open opener) (*Report, error) {
	if opts.Concurrency < 1 || opts.BulkSize < 1 || opts.Duration <= 0 {
		return nil, fmt.Errorf("concurrency %d, bulk size %d, duration %s: expected positive values", opts.Concurrency, opts.BulkSize, opts.Duration)
	}
	for _, m := range opts.Measure {
		if !slices.Contains(Measurements, m) {
			return nil, fmt.Errorf("measurement %q: expected one of %s", m, strings.Join(Measurements, ", "))
		}
	}
	for _, e := range opts.Engines {
		if !knownEngine(e) {
			return nil, fmt.Errorf("engine %q: expected one of %s, mandate-grpc-embedded, mandate-grpc-postgres", e, strings.Join(AllEngines, ", "))
		}
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	if opts.ProfileDir != "" {
		if err := os.MkdirAll(opts.ProfileDir, 0o755); err != nil {
			return nil, err
		}
	}
	rep := &Report{
		Machine: machineInfo(), Started: time.Now(), LoadAvgStart: loadAvg(),
		Options: ReportOptions{
			Workload: opts.Workload, Engines: opts.Engines, Duration: opts.Duration.String(),
			Concurrency: opts.Concurrency, BulkSize: opts.BulkSize, Consistency: opts.Consistency,
		},
	}
	fmt.Fprintf(opts.Log, "generating the workload (seed %d)\n", opts.Workload.Seed)
	w, err := workload.Generate(opts.Workload)
	if err != nil {
		return nil, err
	}
	rep.Relations, rep.AgentRels = len(w.Rels), len(w.AgentRels)
	r := &runner{
		opts: opts, w: w, log: opts.Log, openFn: open,
		checks: map[string]*answers{}, agents: map[string]*answers{},
		lookups: map[string][]lookupAnswer{}, principal: map[string]*answers{},
	}
	for _, name := range opts.Engines {
		if ctx.Err() != nil {
			break
		}
		rep.Results = append(rep.Results, r.runEngine(ctx, name))
	}
	rep.Finished, rep.LoadAvgEnd = time.Now(), loadAvg()
	rep.Goals = goals(rep.Results)
	if err := ctx.Err(); err != nil {
		// Interrupted: report what finished.
		rep.Agreement = "not compared: the run was interrupted"
		return rep, fmt.Errorf("interrupted: %w", err)
	}
	agreeErr := r.compare()
	if agreeErr != nil {
		rep.Agreement = agreeErr.Error()
		return rep, agreeErr
	}
	rep.Agreement = r.agreementSummary()
	for _, res := range rep.Results {
		if res.Error != "" {
			return rep, fmt.Errorf("%s: %s", res.Engine, res.Error)
		}
	}
	return rep, nil
}

func knownEngine(name string) bool {
	return slices.Contains(AllEngines, name) || name == MandateGRPC+"-embedded" || name == MandateGRPC+"-postgres"
}

// heapInUse returns the heap in use after garbage collection, once it has
// settled: a closed engine's goroutines may take a moment to let go.
func heapInUse() uint64 {
	var m runtime.MemStats
	var last uint64
	for i := 0; i < 20; i++ {
		runtime.GC()
		runtime.ReadMemStats(&m)
		if i > 0 && m.HeapAlloc <= last+last/100 && m.HeapAlloc+last/100 >= last {
			break
		}
		last = m.HeapAlloc
		time.Sleep(100 * time.Millisecond)
	}
	return m.HeapAlloc
}

func (r *runner) open(ctx context.Context, name, dbURL string) (Engine, error) {
	if r.openFn != nil {
		return r.openFn(ctx, name, dbURL)
	}
	switch name {
	case MandateInProcess:
		return openMandateInProcess(r.opts.Consistency)
	case MandateGRPC:
		return openMandateGRPC(ctx, "memory", "", r.opts.Consistency)
	case MandateGRPC + "-embedded":
		return openMandateGRPC(ctx, "embedded", "", r.opts.Consistency)
	case MandateGRPC + "-postgres":
		return openMandateGRPC(ctx, "postgres", dbURL, r.opts.Consistency)
	case SpiceDBMemory, SpiceDBPostgres:
		return openSpiceDB(ctx, dbURL, r.opts.Consistency)
	case OpenFGAMemory, OpenFGAPostgres:
		return openOpenFGA(ctx, dbURL, r.opts.Consistency)
	}
	return nil, fmt.Errorf("unknown engine %q", name)
}

func (r *runner) runEngine(ctx context.Context, name string) (res EngineResult) {
	res = EngineResult{Engine: name, LoadAvg: loadAvg()}
	logf := func(format string, args ...any) {
		fmt.Fprintf(r.log, "%s: %s (load average %s)\n", name, fmt.Sprintf(format, args...), formatLoad(loadAvg()))
	}
	base := heapInUse()
	goroutines := runtime.NumGoroutine()
	var dbURL string
	if usesPostgres(name) {
		u, drop, err := freshDatabase(ctx, r.opts.PostgresURL, name)
		if err != nil {
			res.Error = err.Error()
			logf("skipped: %v", err)
			return res
		}
		dbURL = u
		if !r.opts.KeepDatabases {
			defer drop()
		}
	}
	logf("starting")
	e, err := r.open(ctx, name, dbURL)
	if err != nil {
		res.Error = err.Error()
		logf("failed to start: %v", err)
		return res
	}
	var loadedHeap uint64
	defer func() {
		if err := e.Close(); err != nil {
			logf("closing: %v", err)
		}
		waitForGoroutines(goroutines, logf)
		if loadedHeap > 0 {
			// What a previous engine left behind may be freed while this
			// one runs: count from the lower of the heap before this
			// engine started and after it stopped.
			after := heapInUse()
			res.HeapMiB = float64(int64(loadedHeap)-int64(min(base, after))) / (1 << 20)
		}
	}()
	n := len(r.w.Rels)
	if _, ok := e.(AgentEngine); ok {
		n += len(r.w.AgentRels)
	}
	logf("loading %d relationships", n)
	loadCtx, cancel := context.WithTimeout(ctx, r.opts.LoadTimeout)
	start := time.Now()
	err = e.Load(loadCtx, r.w)
	timedOut := loadCtx.Err() == context.DeadlineExceeded
	cancel()
	res.LoadSeconds = time.Since(start).Seconds()
	if err != nil {
		res.Error = fmt.Sprintf("load failed after %.0fs: %v", res.LoadSeconds, err)
		if timedOut {
			res.Error = fmt.Sprintf("did not load within -load-timeout %s: %v", r.opts.LoadTimeout, err)
		}
		logf("%s", res.Error)
		return res
	}
	res.LoadedRels = n
	loadedHeap = heapInUse()
	res.HeapMiB = float64(int64(loadedHeap)-int64(base)) / (1 << 20)
	if dbURL != "" {
		if size, err := databaseSize(ctx, dbURL); err == nil {
			res.DatabaseMiB = float64(size) / (1 << 20)
		}
	}
	logf("loaded in %.1fs, heap %.0f MiB", res.LoadSeconds, res.HeapMiB)

	checks := newAnswers(len(r.w.Checks))
	r.checks[name] = checks
	r.order = append(r.order, name)
	profile := func(what string, f func() Stats) *Stats {
		if r.opts.ProfileDir == "" {
			s := f()
			return &s
		}
		path := filepath.Join(r.opts.ProfileDir, name+"-"+what+".pprof")
		file, err := os.Create(path)
		if err == nil {
			err = pprof.StartCPUProfile(file)
		}
		if err != nil {
			logf("no CPU profile: %v", err)
			s := f()
			return &s
		}
		s := f()
		pprof.StopCPUProfile()
		file.Close()
		res.Profiles = append(res.Profiles, path)
		return &s
	}

	if r.opts.measures("check") {
		res.Check = profile("check", func() Stats { return r.measureChecks(ctx, e, checks) })
		logf("checks: %.0f/s on %.2f cores, p50 %.3f ms, p99 %.3f ms", res.Check.ItemsPerSec, res.Check.CPUCores, res.Check.P50Ms, res.Check.P99Ms)
	}
	if ae, ok := e.(AgentEngine); ok {
		agents := newAnswers(len(r.w.AgentChecks))
		r.agents[name] = agents
		if r.opts.measures("agent") {
			res.AgentCheck = profile("agent-check", func() Stats { return r.measureAgentChecks(ctx, ae, agents) })
			logf("agent checks (2-link chain): %.0f/s on %.2f cores, p99 %.3f ms", res.AgentCheck.ItemsPerSec, res.AgentCheck.CPUCores, res.AgentCheck.P99Ms)
		}
	}
	if r.opts.measures("bulk") {
		res.CheckBulk = profile("check-bulk", func() Stats { return r.measureBulk(ctx, e, checks) })
		logf("bulk checks: %.0f items/s on %.2f cores, p99 %.3f ms per call", res.CheckBulk.ItemsPerSec, res.CheckBulk.CPUCores, res.CheckBulk.P99Ms)
	}
	lookups := make([]lookupAnswer, len(r.w.LookupUsers))
	r.lookups[name] = lookups
	if r.opts.measures("lookup") {
		res.Lookup = profile("lookup", func() Stats { return r.measureLookups(ctx, e, lookups) })
		logf("lookups: %.1f/s on %.2f cores, p50 %.1f ms, first result p50 %.2f ms p99 %.2f ms, mean %.0f results",
			res.Lookup.CallsPerSec, res.Lookup.CPUCores, res.Lookup.P50Ms, res.Lookup.FirstP50Ms, res.Lookup.FirstP99Ms, res.Lookup.Results)
	}

	vctx, cancelVerify := context.WithTimeout(ctx, r.opts.VerifyTimeout)
	err = r.verify(vctx, e, name, checks, lookups)
	if vctx.Err() != nil && ctx.Err() == nil {
		logf("verification stopped after %s", r.opts.VerifyTimeout)
		err = nil
	}
	cancelVerify()
	if err != nil {
		res.Error = err.Error()
		logf("verification failed: %v", err)
	}
	res.Answered = checks.count()
	if a := r.agents[name]; a != nil {
		res.AgentAnswered = a.count()
	}

	if r.opts.measures("write") {
		res.Write = profile("write", func() Stats { return r.measureWrites(ctx, e) })
		logf("writes: %.0f/s on %.2f cores, p50 %.2f ms, p99 %.2f ms", res.Write.ItemsPerSec, res.Write.CPUCores, res.Write.P50Ms, res.Write.P99Ms)
	}
	return res
}

func ptr[T any](v T) *T { return &v }

// waitForGoroutines waits up to two minutes for a closed engine's
// goroutines to end (a few long-lived ones, such as pools' and caches'
// janitors, may stay), so that calls it abandoned do not take CPU from the
// next engine's measurements.
func waitForGoroutines(before int, logf func(string, ...any)) {
	deadline := time.Now().Add(2 * time.Minute)
	for runtime.NumGoroutine() > before+50 {
		if time.Now().After(deadline) {
			logf("%d goroutines still running 2 minutes after stopping (%d before starting)", runtime.NumGoroutine(), before)
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// retry calls f until it succeeds, fails with an error other than a
// transient Unavailable, or has failed three times: a peer that closes a
// connection at its maximum age (SpiceDB's 30s) must not fail a
// verification.
func retry[T any](ctx context.Context, f func() (T, error)) (T, error) {
	var v T
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if v, err = f(); status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			return v, err
		}
		time.Sleep(time.Duration(attempt+1) * 500 * time.Millisecond)
	}
	return v, err
}

func (r *runner) measureChecks(ctx context.Context, e Engine, a *answers) Stats {
	pool := r.w.Checks
	var next atomic.Int64
	return measure(ctx, r.opts.Duration, r.opts.Concurrency, func(ctx context.Context, _, _ int) (int, int, error) {
		i := int(next.Add(1) - 1)
		c := pool[i%len(pool)]
		ok, err := e.Check(ctx, c)
		if err != nil {
			return 0, 0, fmt.Errorf("check %s: %w", c, err)
		}
		if i < len(pool) {
			a.set(i, ok, c.String)
		}
		return 1, 0, nil
	})
}

func (r *runner) measureAgentChecks(ctx context.Context, e AgentEngine, a *answers) Stats {
	pool := r.w.AgentChecks
	var next atomic.Int64
	return measure(ctx, r.opts.Duration, r.opts.Concurrency, func(ctx context.Context, _, _ int) (int, int, error) {
		i := int(next.Add(1) - 1)
		c := pool[i%len(pool)]
		ok, err := e.CheckAgent(ctx, c)
		if err != nil {
			return 0, 0, fmt.Errorf("agent check %s: %w", c, err)
		}
		if i < len(pool) {
			a.set(i, ok, c.String)
		}
		return 1, 0, nil
	})
}

// measureBulk starts halfway through the check pool, so that engines that
// cache results do not meet the unary run's checks again before they have
// checked the whole pool.
func (r *runner) measureBulk(ctx context.Context, e Engine, a *answers) Stats {
	pool := r.w.Checks
	size := r.opts.BulkSize
	var next atomic.Int64
	return measure(ctx, r.opts.Duration, r.opts.Concurrency, func(ctx context.Context, _, _ int) (int, int, error) {
		first := int(next.Add(int64(size)) - int64(size))
		batch := make([]workload.Check, size)
		for k := range batch {
			batch[k] = pool[(len(pool)/2+first+k)%len(pool)]
		}
		oks, err := e.CheckBulk(ctx, batch)
		if err != nil {
			return 0, 0, fmt.Errorf("bulk check of %d from %s: %w", size, batch[0], err)
		}
		for k, ok := range oks {
			if first+k < len(pool) {
				a.set((len(pool)/2+first+k)%len(pool), ok, batch[k].String)
			}
		}
		return size, 0, nil
	})
}

// measureLookups also times each lookup's first result (Stats.First*):
// the latency a caller streaming the answer waits before it can act.
func (r *runner) measureLookups(ctx context.Context, e Engine, out []lookupAnswer) Stats {
	users := r.w.LookupUsers
	var next atomic.Int64
	var mu sync.Mutex
	first := new(histogram)
	s := measure(ctx, r.opts.Duration, r.opts.Concurrency, func(ctx context.Context, _, _ int) (int, int, error) {
		i := int(next.Add(1) - 1)
		u := users[i%len(users)]
		t0 := time.Now()
		var firstAt time.Time
		ids, err := e.LookupResources(ctx, u, func() { firstAt = time.Now() })
		if err != nil {
			return 0, 0, fmt.Errorf("lookup of documents %s may view: %w", u, err)
		}
		if !firstAt.IsZero() {
			mu.Lock()
			first.record(firstAt.Sub(t0))
			mu.Unlock()
		}
		if i < len(users) {
			out[i] = summarize(ids)
		}
		return 1, len(ids), nil
	})
	// Lookups finishing after the window were not counted, but their first
	// results may have been recorded: a few more samples, never fewer.
	s.FirstP50Ms, s.FirstP99Ms = ms(first.quantile(0.50)), ms(first.quantile(0.99))
	return s
}

func (r *runner) measureWrites(ctx context.Context, e Engine) Stats {
	runID := strconv.FormatInt(time.Now().UnixNano()%1e9, 36)
	return measure(ctx, r.opts.Duration, r.opts.Concurrency, func(ctx context.Context, worker, n int) (int, int, error) {
		rl := workload.WriteRel(runID, worker, n, r.opts.Workload.Users)
		if err := e.Write(ctx, rl); err != nil {
			return 0, 0, fmt.Errorf("write %s: %w", rl, err)
		}
		return 1, 0, nil
	})
}

// verify answers the first opts.Verify checks of each pool the timed runs
// left unanswered, and the first opts.VerifyLookups lookups; for agents it
// also checks that each answer is the principal's own answer when the
// delegation scope allows viewing, and denied otherwise.
func (r *runner) verify(ctx context.Context, e Engine, name string, checks *answers, lookups []lookupAnswer) error {
	n := min(r.opts.Verify, len(r.w.Checks))
	if err := parallel(ctx, r.opts.Concurrency, n, func(ctx context.Context, i int) error {
		if checks.v[i] >= 0 {
			return nil
		}
		c := r.w.Checks[i]
		ok, err := retry(ctx, func() (bool, error) { return e.Check(ctx, c) })
		if err != nil {
			return fmt.Errorf("check %s: %w", c, err)
		}
		checks.set(i, ok, c.String)
		return nil
	}); err != nil {
		return err
	}
	if ae, isAgent := e.(AgentEngine); isAgent {
		agents := r.agents[name]
		n := min(r.opts.Verify, len(r.w.AgentChecks))
		principal := newAnswers(len(r.w.AgentChecks))
		r.principal[name] = principal
		if err := parallel(ctx, r.opts.Concurrency, n, func(ctx context.Context, i int) error {
			c := r.w.AgentChecks[i]
			if agents.v[i] < 0 {
				ok, err := retry(ctx, func() (bool, error) { return ae.CheckAgent(ctx, c) })
				if err != nil {
					return fmt.Errorf("agent check %s: %w", c, err)
				}
				agents.set(i, ok, c.String)
			}
			pc := workload.Check{Resource: c.Resource, Subject: c.Principal}
			ok, err := retry(ctx, func() (bool, error) { return e.Check(ctx, pc) })
			if err != nil {
				return fmt.Errorf("check %s: %w", pc, err)
			}
			principal.set(i, ok, pc.String)
			return nil
		}); err != nil {
			return err
		}
	}
	nl := min(r.opts.VerifyLookups, len(lookups))
	return parallel(ctx, r.opts.Concurrency, nl, func(ctx context.Context, i int) error {
		if lookups[i].done {
			return nil
		}
		lctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		ids, err := retry(lctx, func() ([]string, error) { return e.LookupResources(lctx, r.w.LookupUsers[i], nil) })
		if err != nil {
			if lctx.Err() != nil {
				return nil // too slow to verify; left uncompared
			}
			return fmt.Errorf("lookup of documents %s may view: %w", r.w.LookupUsers[i], err)
		}
		lookups[i] = summarize(ids)
		return nil
	})
}

// parallel runs f for 0..n-1 on conc workers and returns the first error.
func parallel(ctx context.Context, conc, n int, f func(context.Context, int) error) error {
	var next atomic.Int64
	errs := make(chan error, conc)
	for range conc {
		go func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					errs <- nil
					return
				}
				if err := f(ctx, i); err != nil {
					next.Store(int64(n))
					errs <- err
					return
				}
			}
		}()
	}
	var first error
	for range conc {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// compare finds the first check (then agent check, then lookup) two
// engines answered differently, or an engine answered two ways, or an
// agent answer that is not its principal's answer under the scope.
func (r *runner) compare() error {
	for _, name := range r.order {
		for _, a := range []*answers{r.checks[name], r.agents[name]} {
			if a == nil {
				continue
			}
			if msg := a.conflict.Load(); msg != nil {
				return &DisagreementError{fmt.Sprintf("%s disagrees with itself: %s", name, *msg)}
			}
		}
	}
	for i, c := range r.w.Checks {
		if msg := firstDifference(r.order, func(n string) int8 { return r.checks[n].v[i] }); msg != "" {
			return &DisagreementError{fmt.Sprintf("engines disagree on check #%d %s (%s): %s", i, c, c.Kind, msg)}
		}
	}
	var agentEngines []string
	for _, n := range r.order {
		if r.agents[n] != nil {
			agentEngines = append(agentEngines, n)
		}
	}
	for i, c := range r.w.AgentChecks {
		if msg := firstDifference(agentEngines, func(n string) int8 { return r.agents[n].v[i] }); msg != "" {
			return &DisagreementError{fmt.Sprintf("engines disagree on agent check #%d %s: %s", i, c, msg)}
		}
		for _, n := range agentEngines {
			got, p := r.agents[n].v[i], r.principal[n]
			if got < 0 || p == nil || p.v[i] < 0 {
				continue
			}
			want := int8(0)
			if c.ScopeAllows && p.v[i] == 1 {
				want = 1
			}
			if got != want {
				return &DisagreementError{fmt.Sprintf("%s: agent check #%d %s is %s, but its principal %s is %s and the delegation scope %s viewing",
					n, i, c, word(got), c.Principal, word(p.v[i]), map[bool]string{true: "allows", false: "does not allow"}[c.ScopeAllows])}
			}
		}
	}
	for i, u := range r.w.LookupUsers {
		var ref string
		var refAns lookupAnswer
		for _, n := range r.order {
			l := r.lookups[n]
			if l == nil || !l[i].done {
				continue
			}
			if ref == "" {
				ref, refAns = n, l[i]
				continue
			}
			if l[i] != refAns {
				return &DisagreementError{fmt.Sprintf("engines disagree on the documents %s may view: %s found %d, %s found %d (or other IDs)",
					u, ref, refAns.count, n, l[i].count)}
			}
		}
	}
	return nil
}

func firstDifference(engines []string, get func(string) int8) string {
	ref, refV := "", int8(-1)
	for _, n := range engines {
		v := get(n)
		if v < 0 {
			continue
		}
		if refV < 0 {
			ref, refV = n, v
			continue
		}
		if v != refV {
			return fmt.Sprintf("%s says %s, %s says %s", ref, word(refV), n, word(v))
		}
	}
	return ""
}

func (r *runner) agreementSummary() string {
	compared, agentCompared, lookups := 0, 0, 0
	for i := range r.w.Checks {
		k := 0
		for _, n := range r.order {
			if r.checks[n].v[i] >= 0 {
				k++
			}
		}
		if k >= 2 {
			compared++
		}
	}
	for i := range r.w.AgentChecks {
		for _, n := range r.order {
			if p := r.principal[n]; p != nil && p.v[i] >= 0 && r.agents[n].v[i] >= 0 {
				agentCompared++
				break
			}
		}
	}
	for i := range r.w.LookupUsers {
		k := 0
		for _, n := range r.order {
			if l := r.lookups[n]; l != nil && l[i].done {
				k++
			}
		}
		if k >= 2 {
			lookups++
		}
	}
	if len(r.order) == 0 {
		return "no engine answered"
	}
	return fmt.Sprintf("all engines agree: %d checks answered by two or more engines, %d lookups answered by two or more; %d agent checks match their principal's answer and delegation scope",
		compared, lookups, agentCompared)
}
