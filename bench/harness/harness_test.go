package harness

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/mandate-authz/mandate/bench/workload"
)

func TestMain(m *testing.M) {
	// SpiceDB logs through zerolog's global logger.
	zerolog.SetGlobalLevel(zerolog.WarnLevel)
	os.Exit(m.Run())
}

// tinyOptions is a workload of a few hundred relationships and short
// measurements: enough to exercise every engine and every measurement.
func tinyOptions(t *testing.T) Options {
	o := DefaultOptions()
	o.Workload = workload.Config{Seed: 7, Users: 40, Groups: 8, Folders: 20, Documents: 100, Agents: 10, Checks: 300, AgentChecks: 60, Lookups: 10}
	o.Duration = 200 * time.Millisecond
	o.Concurrency = 4
	o.BulkSize = 10
	o.Verify = 300
	o.VerifyLookups = 10
	o.LoadTimeout = 2 * time.Minute
	// Fully consistent reads see the load at once; minimize_latency would
	// wait out SpiceDB's 5s revision quantization after every load.
	o.Consistency = FullyConsistent
	o.Log = testWriter{t}
	return o
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestEnginesAgree runs the harness end to end on every engine with a
// memory store, and on PostgreSQL when MANDATE_TEST_POSTGRES_URL is set, and
// requires the same answers from all of them.
func TestEnginesAgree(t *testing.T) {
	o := tinyOptions(t)
	o.Engines = []string{MandateInProcess, MandateGRPC, SpiceDBMemory, OpenFGAMemory}
	if u := os.Getenv("MANDATE_TEST_POSTGRES_URL"); u != "" {
		o.PostgresURL = u
		o.Engines = append(o.Engines, SpiceDBPostgres, OpenFGAPostgres, MandateGRPC+"-postgres")
	} else {
		t.Log("MANDATE_TEST_POSTGRES_URL is unset: the engines on PostgreSQL are not run")
	}
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(rep.Results) != len(o.Engines) {
		t.Fatalf("%d results for %d engines", len(rep.Results), len(o.Engines))
	}
	for _, res := range rep.Results {
		if res.Error != "" {
			t.Errorf("%s: %s", res.Engine, res.Error)
			continue
		}
		if res.LoadedRels == 0 || res.LoadSeconds <= 0 {
			t.Errorf("%s: loaded %d relationships in %.3fs", res.Engine, res.LoadedRels, res.LoadSeconds)
		}
		if res.Answered != o.Workload.Checks {
			t.Errorf("%s answered %d of %d checks", res.Engine, res.Answered, o.Workload.Checks)
		}
		for what, s := range map[string]*Stats{"check": res.Check, "bulk check": res.CheckBulk, "lookup": res.Lookup, "write": res.Write} {
			// On PostgreSQL a call may outlast the short window: then
			// only the verification pass answers.
			if s == nil || (s.Calls == 0 && !usesPostgres(res.Engine)) || s.Errors != 0 {
				t.Errorf("%s %s: %+v", res.Engine, what, s)
			}
		}
		if strings.HasPrefix(res.Engine, "mandate") != (res.AgentCheck != nil) {
			t.Errorf("%s: agent checks %+v; only Mandate has delegation", res.Engine, res.AgentCheck)
		}
	}
	if !strings.HasPrefix(rep.Agreement, "all engines agree: 300 checks") {
		t.Errorf("agreement %q", rep.Agreement)
	}
	md := rep.Markdown()
	for _, want := range []string{"| spicedb-memory |", "| openfga-memory |", "Checks by agents through a 2-link delegation chain", "| mandate in-process >= 500,000 checks/s |"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	path := t.TempDir() + "/out.json"
	if err := rep.WriteJSON(path); err != nil {
		t.Fatal(err)
	}
}

// liar answers every check of document d3 the wrong way.
type liar struct{ Engine }

func (l liar) Check(ctx context.Context, c workload.Check) (bool, error) {
	ok, err := l.Engine.Check(ctx, c)
	return ok != (c.Resource.ID == "d3"), err
}

func (l liar) CheckBulk(ctx context.Context, cs []workload.Check) ([]bool, error) {
	out := make([]bool, len(cs))
	for i, c := range cs {
		ok, err := l.Check(ctx, c)
		if err != nil {
			return nil, err
		}
		out[i] = ok
	}
	return out, nil
}

// TestDisagreementNamesTheCheck makes one engine lie about one document and
// requires the run to fail naming a check of that document.
func TestDisagreementNamesTheCheck(t *testing.T) {
	o := tinyOptions(t)
	o.Engines = []string{MandateInProcess, SpiceDBMemory}
	open := func(ctx context.Context, name, _ string) (Engine, error) {
		e, err := openMandateInProcess(o.Consistency)
		if name == SpiceDBMemory {
			return liar{e}, err
		}
		return e, err
	}
	_, err := run(context.Background(), o, open)
	var dis *DisagreementError
	if !errors.As(err, &dis) {
		t.Fatalf("got %v, want a DisagreementError", err)
	}
	if !strings.Contains(dis.Msg, "document:d3#view@") || !strings.Contains(dis.Msg, "mandate says") {
		t.Fatalf("message %q does not name the check of document:d3 and the engines", dis.Msg)
	}
}

// TestAgentAnswerMustFollowItsPrincipal makes an engine allow every agent
// check and requires the run to fail on a denied or out-of-scope one.
func TestAgentAnswerMustFollowItsPrincipal(t *testing.T) {
	o := tinyOptions(t)
	o.Engines = []string{MandateInProcess}
	open := func(ctx context.Context, name, _ string) (Engine, error) {
		e, err := openMandateInProcess(o.Consistency)
		return permissiveAgents{e}, err
	}
	_, err := run(context.Background(), o, open)
	var dis *DisagreementError
	if !errors.As(err, &dis) || !strings.Contains(dis.Msg, "is allowed, but its principal") {
		t.Fatalf("got %v, want a DisagreementError about an agent check", err)
	}
}

type permissiveAgents struct{ *mandateInProcess }

func (permissiveAgents) CheckAgent(context.Context, workload.AgentCheck) (bool, error) {
	return true, nil
}

func TestBadOptionsNameTheField(t *testing.T) {
	o := tinyOptions(t)
	o.Engines = []string{"cassandra"}
	if _, err := Run(context.Background(), o); err == nil || !strings.Contains(err.Error(), `engine "cassandra": expected one of`) {
		t.Fatalf("got %v", err)
	}
	o = tinyOptions(t)
	o.Measure = []string{"lookups"}
	if _, err := Run(context.Background(), o); err == nil || !strings.Contains(err.Error(), `measurement "lookups": expected one of`) {
		t.Fatalf("got %v", err)
	}
	o = tinyOptions(t)
	o.Concurrency = 0
	if _, err := Run(context.Background(), o); err == nil || !strings.Contains(err.Error(), "concurrency 0") {
		t.Fatalf("got %v", err)
	}
}

func TestHistogramQuantiles(t *testing.T) {
	var h histogram
	for i := 1; i <= 1000; i++ {
		h.record(time.Duration(i) * time.Microsecond)
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Microsecond}, {0.95, 950 * time.Microsecond}, {0.99, 990 * time.Microsecond}} {
		got := h.quantile(c.q)
		if d := float64(got-c.want) / float64(c.want); d < -0.04 || d > 0.04 {
			t.Errorf("quantile %.2f = %s, want %s within 4%%", c.q, got, c.want)
		}
	}
	if got := (&histogram{}).quantile(0.5); got != 0 {
		t.Errorf("empty histogram quantile %s", got)
	}
}

// TestFreshnessAcrossReplicas runs the two-replica freshness benchmark
// briefly: every write acknowledged by one replica is allowed by the
// other at least as fresh as its token, and the figures count them all.
func TestFreshnessAcrossReplicas(t *testing.T) {
	u := os.Getenv("MANDATE_TEST_POSTGRES_URL")
	if u == "" {
		t.Skip("MANDATE_TEST_POSTGRES_URL is unset: the freshness benchmark needs PostgreSQL")
	}
	o := tinyOptions(t)
	res, err := RunFreshness(t.Context(), FreshnessOptions{
		Workload: o.Workload, PostgresURL: u, Rate: 100, Duration: 500 * time.Millisecond, Checkers: 2, Log: o.Log,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Writes.Calls < 40 || res.Visible.Calls != res.Writes.Calls {
		t.Fatalf("%d writes acknowledged and %d seen on the other replica; want about 50, all seen", res.Writes.Calls, res.Visible.Calls)
	}
	if res.Checks.Calls == 0 || res.Checks.Errors != 0 {
		t.Fatalf("checks on the other replica during the writes: %+v", res.Checks)
	}
	if res.Visible.P99Ms <= 0 {
		t.Fatalf("visibility p99 %v ms: not measured", res.Visible.P99Ms)
	}
}
