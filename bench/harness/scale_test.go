package harness

import (
	"context"
	"os"
	"testing"
	"time"
)

// TestScaleMode runs the scale mode end to end on a small workload: bulk
// import into the embedded store (and PostgreSQL when
// MANDATE_TEST_POSTGRES_URL is set), a replica over it, every
// measurement, with expiring links expiring during them.
func TestScaleMode(t *testing.T) {
	stores := []string{"embedded"}
	if os.Getenv("MANDATE_TEST_POSTGRES_URL") != "" {
		stores = append(stores, "postgres")
	} else {
		t.Log("MANDATE_TEST_POSTGRES_URL is unset: the scale mode is not run on PostgreSQL")
	}
	for _, kind := range stores {
		t.Run(kind, func(t *testing.T) {
			res, err := RunScale(context.Background(), ScaleOptions{
				Relationships: 3_000, Agents: 400, Seed: 5, Store: kind, PostgresURL: PostgresURLFromEnv(),
				Duration: 300 * time.Millisecond, Concurrency: 2, Log: testWriter{t},
			})
			if err != nil {
				t.Fatal(err)
			}
			if res.Relationships < 2_500 || res.Relationships > 3_500 || res.AgentLinks != 401 {
				t.Errorf("imported %d relationships and %d agent links, want about 3,000 and 401", res.Relationships, res.AgentLinks)
			}
			if res.ImportSeconds <= 0 || res.EngineLoadSeconds <= 0 || res.HeapBytesPerRel <= 0 || res.RSSMiB <= 0 {
				t.Errorf("import %.3fs, load %.3fs, heap %.0f B/rel, RSS %.0f MiB: not measured", res.ImportSeconds, res.EngineLoadSeconds, res.HeapBytesPerRel, res.RSSMiB)
			}
			for what, s := range map[string]*Stats{"check": res.Check, "gRPC check": res.CheckGRPC, "agent check": res.AgentCheck, "lookup": res.Lookup, "gRPC lookup": res.LookupGRPC} {
				if s == nil || s.Calls == 0 || s.Errors != 0 {
					t.Errorf("%s: %+v", what, s)
				}
			}
			if res.ExpiringLinks == 0 {
				t.Error("no link expires")
			}
		})
	}
}
