package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/memory"
)

// envPrefix prefixes the environment variable of every serve flag:
// --grpc-preshared-key is also MANDATE_GRPC_PRESHARED_KEY.
const envPrefix = "MANDATE_"

// serveOptions are serve's flags.
type serveOptions struct {
	cfg        server.Config
	dsEngine   string
	dsConnURI  string
	logLevel   string
	maxMessage int
}

func newServeCommand() *cobra.Command {
	opts := &serveOptions{cfg: server.Config{Limits: server.DefaultLimits()}}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the mandate.v1 API over gRPC and REST",
		Long: `Serve runs the Mandate server: the mandate.v1 gRPC API on --grpc-addr and, on
--http-addr, its REST/JSON mapping under /v1 (OpenAPI at /openapi.json) with /healthz,
/readyz and Prometheus /metrics. Every API call needs "authorization: Bearer <key>" with
one of the --grpc-preshared-key values.

Every flag can also be set through the environment as MANDATE_<FLAG>, upper-cased with
dashes as underscores (MANDATE_GRPC_PRESHARED_KEY=k1,k2); a flag given on the command
line wins. Prefer the environment for keys, which the command line exposes to other users.

SIGTERM or SIGINT shuts down gracefully: health turns NOT_SERVING, watches end, and
in-flight requests get --grpc-shutdown-grace-period to finish.`,
		Example: "  MANDATE_GRPC_PRESHARED_KEY=secret mandate serve\n" +
			"  mandate serve --grpc-preshared-key secret --grpc-addr :50051 --http-addr :8443",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnv(cmd.Flags(), os.LookupEnv); err != nil {
				return err
			}
			return runServe(cmd.Context(), cmd.ErrOrStderr(), opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.cfg.GRPCAddr, "grpc-addr", ":50051", "address the gRPC API listens on")
	f.StringVar(&opts.cfg.HTTPAddr, "http-addr", ":8443", `address the REST gateway, health, metrics and OpenAPI listen on ("" disables)`)
	// A string array, not a slice: keys are taken verbatim (no CSV quoting
	// rules whose errors would echo a key); the environment variable is
	// comma-separated.
	f.StringArrayVar(&opts.cfg.PresharedKeys, "grpc-preshared-key", nil, "bearer key clients must present; repeat for several (at least one required)")
	f.StringVar(&opts.cfg.GRPCTLSCertPath, "grpc-tls-cert-path", "", "TLS certificate file for the gRPC listener (with --grpc-tls-key-path)")
	f.StringVar(&opts.cfg.GRPCTLSKeyPath, "grpc-tls-key-path", "", "TLS key file for the gRPC listener")
	f.StringVar(&opts.cfg.HTTPTLSCertPath, "http-tls-cert-path", "", "TLS certificate file for the HTTP listener (with --http-tls-key-path)")
	f.StringVar(&opts.cfg.HTTPTLSKeyPath, "http-tls-key-path", "", "TLS key file for the HTTP listener")
	f.DurationVar(&opts.cfg.ShutdownGracePeriod, "grpc-shutdown-grace-period", 30*time.Second, "how long shutdown waits for in-flight requests")
	f.StringVar(&opts.dsEngine, "datastore-engine", "memory", "where relationships are stored: memory (nothing survives a restart; the durable embedded store will become the default)")
	f.StringVar(&opts.dsConnURI, "datastore-conn-uri", "", "connection string of the datastore (unused by memory)")
	f.IntVar(&opts.maxMessage, "max-message-size", opts.cfg.Limits.MaxMessageBytes, "largest gRPC message or REST body accepted, in bytes")
	f.IntVar(&opts.cfg.Limits.MaxCheckBulkItems, "max-check-bulk-items", opts.cfg.Limits.MaxCheckBulkItems, "most checks in one CheckBulk")
	f.IntVar(&opts.cfg.Limits.MaxWriteUpdates, "write-relationships-max-updates-per-call", opts.cfg.Limits.MaxWriteUpdates, "most updates in one WriteRelationships")
	f.IntVar(&opts.cfg.Limits.MaxPreconditions, "update-relationships-max-preconditions-per-call", opts.cfg.Limits.MaxPreconditions, "most preconditions in one write or delete")
	f.IntVar(&opts.cfg.Limits.MaxLookupLimit, "max-lookup-limit", opts.cfg.Limits.MaxLookupLimit, "largest optional_limit (page size) of LookupResources and LookupSubjects")
	f.IntVar(&opts.cfg.Limits.MaxReadLimit, "max-read-relationships-limit", opts.cfg.Limits.MaxReadLimit, "largest optional_limit (page size) of ReadRelationships")
	f.IntVar(&opts.cfg.Limits.MaxDeleteLimit, "max-delete-relationships-limit", opts.cfg.Limits.MaxDeleteLimit, "most relationships one DeleteRelationships may delete")
	f.IntVar(&opts.cfg.Limits.MaxBulkBatch, "max-bulk-relationships-batch", opts.cfg.Limits.MaxBulkBatch, "most relationships in one import message or export response")
	f.DurationVar(&opts.cfg.Limits.RequestTimeout, "request-timeout", opts.cfg.Limits.RequestTimeout, "longest a call may run (Watch, import and export excepted)")
	f.StringVar(&opts.logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}

// applyEnv sets every flag not given on the command line from its
// MANDATE_* environment variable.
func applyEnv(flags *pflag.FlagSet, lookup func(string) (string, bool)) error {
	var err error
	flags.VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed {
			return
		}
		name := envName(f.Name)
		v, ok := lookup(name)
		if !ok {
			return
		}
		values := []string{v}
		if f.Value.Type() == "stringArray" {
			values = strings.Split(v, ",")
		}
		for _, v := range values {
			if len(values) > 1 && strings.TrimSpace(v) == "" {
				continue // "k1,,k2" or a trailing comma
			}
			if serr := flags.Set(f.Name, strings.TrimSpace(v)); serr != nil {
				// The value may be a key: name the variable, not its value.
				err = fmt.Errorf("environment variable %s: invalid value for --%s: expected a %s", name, f.Name, f.Value.Type())
				return
			}
		}
	})
	return err
}

func envName(flag string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

func runServe(ctx context.Context, stderr io.Writer, opts *serveOptions) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(opts.logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: expected debug, info, warn or error", opts.logLevel)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	opts.cfg.Logger = log
	opts.cfg.Limits.MaxMessageBytes = opts.maxMessage

	st, name, err := openStore(ctx, opts.dsEngine, opts.dsConnURI)
	if err != nil {
		return err
	}
	defer st.Close()
	opts.cfg.StoreName = name

	srv, err := server.New(st, engine.New(), opts.cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, os.Interrupt)
	defer stop()
	return srv.Run(ctx)
}

// openStore opens the datastore named by --datastore-engine. It returns the
// store's stable name for revision tokens ("" for one that does not survive
// the process). Each new engine is one case here.
func openStore(_ context.Context, engineName, connURI string) (store.Store, string, error) {
	switch engineName {
	case "memory":
		if connURI != "" {
			return nil, "", fmt.Errorf("--datastore-conn-uri is not used by the memory datastore; remove it or choose another --datastore-engine")
		}
		return memory.New(), "", nil
	}
	return nil, "", fmt.Errorf("--datastore-engine %q: unknown engine; available: memory", engineName)
}
