// Command mandate-bench runs the issue-7 workload against Mandate
// (in-process and over gRPC), SpiceDB and OpenFGA (memory and PostgreSQL),
// prints a markdown table and writes the results as JSON. It exits non-zero
// when the engines' answers to the same checks differ.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/rs/zerolog"

	"github.com/mandate-authz/mandate/bench/harness"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "mandate-bench:", err)
		var dis *harness.DisagreementError
		if errors.As(err, &dis) {
			os.Exit(3)
		}
		os.Exit(1)
	}
}

func run() error {
	o := harness.DefaultOptions()
	w := &o.Workload
	fs := flag.NewFlagSet("mandate-bench", flag.ContinueOnError)
	fs.Uint64Var(&w.Seed, "seed", w.Seed, "workload seed")
	fs.IntVar(&w.Users, "users", w.Users, "users")
	fs.IntVar(&w.Groups, "groups", w.Groups, "nested groups")
	fs.IntVar(&w.Folders, "folders", w.Folders, "folders in the tree")
	fs.IntVar(&w.Documents, "documents", w.Documents, "documents")
	fs.IntVar(&w.Agents, "agents", w.Agents, "2-link agent delegation chains (Mandate only)")
	fs.IntVar(&w.Checks, "checks", w.Checks, "size of the pool of user checks every engine draws from")
	fs.IntVar(&w.AgentChecks, "agent-checks", w.AgentChecks, "size of the pool of agent checks")
	fs.IntVar(&w.Lookups, "lookups", w.Lookups, "users whose documents are looked up")
	engines := fs.String("engines", "all", "comma-separated engines: all, or of "+strings.Join(harness.AllEngines, ", ")+", mandate-grpc-embedded, mandate-grpc-postgres")
	fs.DurationVar(&o.Duration, "duration", o.Duration, "duration of each measurement")
	fs.IntVar(&o.Concurrency, "concurrency", o.Concurrency, "concurrent callers")
	fs.IntVar(&o.BulkSize, "bulk", o.BulkSize, "items per bulk check")
	consistency := fs.String("consistency", string(o.Consistency), "read consistency: minimize_latency or fully_consistent")
	fs.StringVar(&o.PostgresURL, "postgres", o.PostgresURL, "PostgreSQL server URL the engines on PostgreSQL get fresh databases on (default $MANDATE_TEST_POSTGRES_URL)")
	fs.BoolVar(&o.KeepDatabases, "keep-databases", false, "keep the databases created for the engines")
	fs.IntVar(&o.Verify, "verify", o.Verify, "checks of each pool every engine answers at least, timed or not, for the comparison")
	fs.IntVar(&o.VerifyLookups, "verify-lookups", o.VerifyLookups, "lookups every engine answers at least, for the comparison")
	fs.DurationVar(&o.VerifyTimeout, "verify-timeout", o.VerifyTimeout, "longest one engine's verification pass may take")
	fs.DurationVar(&o.LoadTimeout, "load-timeout", o.LoadTimeout, "longest one engine may take to load")
	fs.StringVar(&o.ProfileDir, "cpuprofile-dir", "", "directory receiving CPU profiles of each engine's check, lookup and write measurements")
	measure := fs.String("measure", "all", "comma-separated measurements: all, or of "+strings.Join(harness.Measurements, ", "))
	jsonPath := fs.String("json", "mandate-bench.json", "file the JSON results are written to (empty: none)")
	mdPath := fs.String("markdown", "", "file the markdown tables are also written to")
	verbose := fs.Bool("v", false, "show the peers' own logs")
	freshness := fs.Int("freshness", 0, "instead of comparing engines: writes/s sent to one of two Mandate replicas over one PostgreSQL database, measuring how soon the other sees each (-duration long, -concurrency callers checking on the other meanwhile)")
	scale := fs.Int("scale", 0, "instead of comparing engines: bulk-import a workload of about this many relationships (the default shape, grown) plus -scale-agents agents into -scale-store, start one replica over it and measure its load time, memory, checks and lookups")
	scaleAgents := fs.Int("scale-agents", 1_000_000, "agents in 1-3 link delegation chains for -scale, a tenth of the links expiring during the run")
	scaleStore := fs.String("scale-store", "embedded", "store for -scale: embedded or postgres")
	scaleImportOnly := fs.Bool("scale-import-only", false, "for -scale with -scale-dir: import the workload and stop (a later run reuses it)")
	scaleDir := fs.String("scale-dir", "", "for -scale on the embedded store: keep the store in this directory, and reuse it when it already holds the same workload (-scale, -scale-agents, -seed) instead of importing again")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var err error
	if o.Consistency, err = harness.ParseConsistency(*consistency); err != nil {
		return err
	}
	if *measure != "all" {
		o.Measure = strings.Split(*measure, ",")
	}
	if *engines != "all" {
		o.Engines = strings.Split(*engines, ",")
	}
	if !*verbose {
		// SpiceDB logs through zerolog's global logger at info level.
		zerolog.SetGlobalLevel(zerolog.WarnLevel)
	}
	o.Log = os.Stderr
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *scale > 0 {
		if *scaleStore != "embedded" && *scaleStore != "postgres" {
			return fmt.Errorf("-scale-store %q: expected embedded or postgres", *scaleStore)
		}
		if *scaleImportOnly && *scaleDir == "" {
			return errors.New("-scale-import-only needs -scale-dir, where the import is kept")
		}
		return runScale(ctx, harness.ScaleOptions{
			Relationships: *scale, Agents: *scaleAgents, Seed: w.Seed, Store: *scaleStore, PostgresURL: o.PostgresURL, Dir: *scaleDir, ImportOnly: *scaleImportOnly, ProfileDir: o.ProfileDir,
			Duration: o.Duration, Concurrency: o.Concurrency, Log: o.Log,
		}, *jsonPath)
	}
	if *freshness > 0 {
		return runFreshness(ctx, o, *freshness, *jsonPath)
	}
	rep, runErr := harness.Run(ctx, o)
	if rep == nil {
		return runErr
	}
	rep.Command = strings.Join(os.Args, " ")
	md := rep.Markdown()
	fmt.Println(md)
	if *jsonPath != "" {
		if err := rep.WriteJSON(*jsonPath); err != nil {
			return errors.Join(runErr, fmt.Errorf("writing %s: %w", *jsonPath, err))
		}
	}
	if *mdPath != "" {
		if err := os.WriteFile(*mdPath, []byte(md), 0o644); err != nil {
			return errors.Join(runErr, fmt.Errorf("writing %s: %w", *mdPath, err))
		}
	}
	return runErr
}

// runFreshness runs the two-replica freshness benchmark and prints its
// figures.
func runFreshness(ctx context.Context, o harness.Options, rate int, jsonPath string) error {
	res, err := harness.RunFreshness(ctx, harness.FreshnessOptions{
		Workload: o.Workload, PostgresURL: o.PostgresURL, Rate: rate,
		Duration: o.Duration, Checkers: o.Concurrency, Log: o.Log,
	})
	if res != nil {
		fmt.Printf("| writes/s sent | acknowledged/s | write p50 ms | write p99 ms | visible on B p50 ms | p95 ms | p99 ms | checks/s on B | check p50 ms | check p99 ms | late sends |\n")
		fmt.Printf("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
		fmt.Printf("| %d | %.0f | %.2f | %.2f | %.2f | %.2f | %.2f | %.0f | %.3f | %.2f | %d |\n", rate,
			res.Writes.CallsPerSec, res.Writes.P50Ms, res.Writes.P99Ms, res.Visible.P50Ms, res.Visible.P95Ms, res.Visible.P99Ms,
			res.Checks.CallsPerSec, res.Checks.P50Ms, res.Checks.P99Ms, res.Late)
		if jsonPath != "" {
			b, jerr := json.MarshalIndent(res, "", "  ")
			if jerr == nil {
				jerr = os.WriteFile(jsonPath, b, 0o644)
			}
			if jerr != nil {
				return errors.Join(err, fmt.Errorf("writing %s: %w", jsonPath, jerr))
			}
		}
	}
	return err
}

// runScale runs the scale mode and prints its figures.
func runScale(ctx context.Context, o harness.ScaleOptions, jsonPath string) error {
	res, err := harness.RunScale(ctx, o)
	if res == nil {
		return err
	}
	if o.ImportOnly {
		fmt.Printf("imported %d relationships and %d agent links into %s in %.0f s\n", res.Relationships, res.AgentLinks, o.Dir, res.ImportSeconds)
		return err
	}
	fmt.Printf("| store | relationships | agent links | import s | replica load s | heap MiB | heap B/rel | RSS MiB | RSS B/rel | checks/s in-process | p50 ms | p99 ms | checks/s gRPC | p50 ms | p99 ms | agent checks/s | p99 ms | lookups/s in-process | lookups/s gRPC |\n")
	fmt.Printf("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	fmt.Printf("| %s | %d | %d | %.0f | %.1f | %.0f | %.0f | %.0f | %.0f | %.0f | %.3f | %.3f | %.0f | %.3f | %.3f | %.0f | %.3f | %.1f | %.1f |\n",
		res.Store, res.Relationships, res.AgentLinks, res.ImportSeconds, res.EngineLoadSeconds, res.HeapMiB, res.HeapBytesPerRel, res.RSSMiB, res.RSSBytesPerRel,
		res.Check.ItemsPerSec, res.Check.P50Ms, res.Check.P99Ms, res.CheckGRPC.ItemsPerSec, res.CheckGRPC.P50Ms, res.CheckGRPC.P99Ms,
		res.AgentCheck.ItemsPerSec, res.AgentCheck.P99Ms, res.Lookup.CallsPerSec, res.LookupGRPC.CallsPerSec)
	if jsonPath != "" {
		b, jerr := json.MarshalIndent(res, "", "  ")
		if jerr == nil {
			jerr = os.WriteFile(jsonPath, b, 0o644)
		}
		if jerr != nil {
			return errors.Join(err, fmt.Errorf("writing %s: %w", jsonPath, jerr))
		}
	}
	return err
}
