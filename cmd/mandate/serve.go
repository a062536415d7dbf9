package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/server/apikey"
	"github.com/mandate-authz/mandate/server/approval"
	"github.com/mandate-authz/mandate/server/authzen"
	"github.com/mandate-authz/mandate/server/capability"
	"github.com/mandate-authz/mandate/server/escalation"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/embedded"
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
	dataDir    string
	logLevel   string
	maxMessage int
	// maxCaveatContext bounds a request's caveat context (engine).
	maxCaveatContext int
	audit            auditOptions
	sqlStore         sqlStoreFlags
	// plaintextBeyondLoopback allows a listener on a non-loopback address
	// without TLS.
	plaintextBeyondLoopback bool
	// keysFile is the scoped API keys file (see server/apikey).
	keysFile string
	// authzenMapping is the AuthZEN mapping file (--authzen-mapping).
	authzenMapping string
	// ui are the web inbox's flags (serve_ui.go).
	ui uiOptions
	// escalationRules is the escalation rules file (--escalation-rules).
	escalationRules string
}

func newServeCommand() *cobra.Command {
	opts := &serveOptions{cfg: server.Config{Limits: server.DefaultLimits(), Transport: server.DefaultTransportLimits()}}
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

Relationships and the schema are stored by --datastore-engine: embedded (the default)
keeps them durably in --data-dir (./mandate-data), one file that one mandate process at
a time may open; every acknowledged write has reached the disk. memory keeps nothing
across a restart. postgres and cockroachdb keep them in the database at
--datastore-conn-uri, which several mandate serve processes may share; create its
tables with mandate migrate first, or start with --datastore-migrate.

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
	f.StringVar(&opts.cfg.GRPCAddr, "grpc-addr", "127.0.0.1:50051", "address the gRPC API listens on (loopback by default; another address needs TLS or --allow-plaintext-beyond-loopback)")
	f.StringVar(&opts.cfg.HTTPAddr, "http-addr", "127.0.0.1:8443", `address the REST gateway, health, metrics and OpenAPI listen on ("" disables; loopback by default; another address needs TLS or --allow-plaintext-beyond-loopback)`)
	f.BoolVar(&opts.plaintextBeyondLoopback, "allow-plaintext-beyond-loopback", false, "let a listener without TLS listen on an address other than loopback, sending keys and data in the clear (logged as a warning at startup)")
	// A string array, not a slice: keys are taken verbatim (no CSV quoting
	// rules whose errors would echo a key); the environment variable is
	// comma-separated.
	f.StringArrayVar(&opts.cfg.PresharedKeys, "grpc-preshared-key", nil, "bearer key clients must present; repeat for several (at least one required)")
	f.StringVar(&opts.keysFile, "keys-file", "", "YAML file of named, scoped API keys stored as hashes (mandate key generate makes entries); reloaded when it changes and on SIGHUP. Preshared keys keep every scope")
	f.StringArrayVar(&opts.cfg.PresharedKeyNames, "grpc-preshared-key-name", nil, "name of each --grpc-preshared-key, in the same order, recorded in the audit trail as the calling service (default key-1, key-2, ...)")
	f.StringVar(&opts.cfg.GRPCTLSCertPath, "grpc-tls-cert-path", "", "TLS certificate file for the gRPC listener (with --grpc-tls-key-path)")
	f.StringVar(&opts.cfg.GRPCTLSKeyPath, "grpc-tls-key-path", "", "TLS key file for the gRPC listener")
	f.StringVar(&opts.cfg.HTTPTLSCertPath, "http-tls-cert-path", "", "TLS certificate file for the HTTP listener (with --http-tls-key-path)")
	f.StringVar(&opts.cfg.HTTPTLSKeyPath, "http-tls-key-path", "", "TLS key file for the HTTP listener")
	f.StringVar(&opts.cfg.GRPCTLSClientCAPath, "grpc-tls-client-ca-path", "", "CA certificates (PEM) the gRPC listener requires client certificates to be signed by (mTLS; needs --grpc-tls-cert-path)")
	f.StringVar(&opts.cfg.HTTPTLSClientCAPath, "http-tls-client-ca-path", "", "CA certificates (PEM) the HTTP listener requires client certificates to be signed by (mTLS; needs --http-tls-cert-path)")
	f.DurationVar(&opts.cfg.ShutdownGracePeriod, "grpc-shutdown-grace-period", 30*time.Second, "how long shutdown waits for in-flight requests")
	f.StringVar(&opts.dsEngine, "datastore-engine", "embedded", "where relationships are stored: embedded (durable, in --data-dir), postgres or cockroachdb (at --datastore-conn-uri; see mandate migrate) or memory (nothing survives a restart)")
	f.StringVar(&opts.dsConnURI, "datastore-conn-uri", "", "connection string of the postgres or cockroachdb datastore (unused by embedded and memory)")
	f.StringVar(&opts.dataDir, "data-dir", "./mandate-data", "directory of the embedded datastore, created if missing; one mandate process at a time")
	f.IntVar(&opts.maxMessage, "max-message-size", opts.cfg.Limits.MaxMessageBytes, "largest gRPC message or REST body accepted, in bytes")
	f.IntVar(&opts.cfg.Limits.MaxCheckBulkItems, "max-check-bulk-items", opts.cfg.Limits.MaxCheckBulkItems, "most checks in one CheckBulk")
	f.IntVar(&opts.cfg.Limits.MaxWriteUpdates, "write-relationships-max-updates-per-call", opts.cfg.Limits.MaxWriteUpdates, "most updates in one WriteRelationships")
	f.IntVar(&opts.cfg.Limits.MaxPreconditions, "update-relationships-max-preconditions-per-call", opts.cfg.Limits.MaxPreconditions, "most preconditions in one write or delete")
	f.IntVar(&opts.cfg.Limits.MaxLookupLimit, "max-lookup-limit", opts.cfg.Limits.MaxLookupLimit, "largest optional_limit (page size) of LookupResources and LookupSubjects")
	f.IntVar(&opts.cfg.Limits.MaxReadLimit, "max-read-relationships-limit", opts.cfg.Limits.MaxReadLimit, "largest optional_limit (page size) of ReadRelationships")
	f.IntVar(&opts.cfg.Limits.MaxDeleteLimit, "max-delete-relationships-limit", opts.cfg.Limits.MaxDeleteLimit, "most relationships one DeleteRelationships may delete")
	f.IntVar(&opts.cfg.Limits.MaxBulkBatch, "max-bulk-relationships-batch", opts.cfg.Limits.MaxBulkBatch, "most relationships in one import message or export response")
	f.IntVar(&opts.maxCaveatContext, "max-caveat-context-size", engine.DefaultMaxCaveatContextBytes, "largest caveat context of a check or lookup, in bytes as JSON (0: no limit)")
	f.IntVar(&opts.cfg.Limits.MaxConcurrentSchemaCompiles, "schema-max-concurrent-compiles", opts.cfg.Limits.MaxConcurrentSchemaCompiles, "most schema writes and validations compiling at once; more wait within their deadline")
	f.DurationVar(&opts.cfg.Limits.RequestTimeout, "request-timeout", opts.cfg.Limits.RequestTimeout, "longest a call may run (Watch, import and export excepted)")
	f.StringVar(&opts.escalationRules, "escalation-rules", "", "YAML file of escalation rules: allowed agent checks they match need a person's approval (see examples/approvals/rules.yaml); validated at start, reloaded when it changes (a bad file keeps the rules in force)")
	f.DurationVar(&opts.cfg.Approvals.RequestTTL, "approval-request-ttl", approval.DefaultRequestTTL, "how long an approval request stays pending before it expires")
	f.DurationVar(&opts.cfg.Approvals.DefaultGrant, "approval-default-grant", approval.DefaultGrantDuration, "how long an approval grant lasts when neither the approver nor the agent names a duration")
	f.DurationVar(&opts.cfg.Approvals.HistoryRetention, "approval-history-retention", approval.DefaultHistoryRetention, "how long a finished approval request (denied, expired, redeemed, revoked) is kept, counted from its last expiry or decision, before the sweeper deletes it")
	f.DurationVar(&opts.cfg.Approvals.MaxGrant, "approval-max-grant", approval.DefaultMaxGrantDuration, "the longest approval grant; longer durations are refused (an escalation rule's max_duration may bound it further)")
	tl := &opts.cfg.Transport
	f.IntVar(&tl.MaxConnections, "max-connections", tl.MaxConnections, "most open connections on each listener (gRPC and HTTP each); more are closed as they are accepted")
	f.DurationVar(&tl.HandshakeTimeout, "connection-timeout", tl.HandshakeTimeout, "longest a new connection may take for its TLS handshake and first request headers (HTTP) or HTTP/2 setup (gRPC)")
	f.DurationVar(&tl.BodyTimeout, "http-body-timeout", tl.BodyTimeout, "longest a REST request body may take to arrive (an import: each wait for more)")
	f.DurationVar(&tl.IdleTimeout, "idle-timeout", tl.IdleTimeout, "how long an HTTP keep-alive connection, or a gRPC connection without calls, may stay idle before it is closed")
	f.IntVar(&tl.MaxHeaderBytes, "max-header-bytes", tl.MaxHeaderBytes, "largest request headers of an HTTP request or gRPC call, in bytes")
	f.Uint32Var(&tl.MaxConcurrentStreams, "grpc-max-concurrent-streams", tl.MaxConcurrentStreams, "most calls in progress on one gRPC connection; more wait at the client")
	f.DurationVar(&tl.KeepaliveMinTime, "grpc-keepalive-min-time", tl.KeepaliveMinTime, "shortest interval between a client's keepalive pings; a client pinging more often is disconnected")
	f.DurationVar(&opts.cfg.RevisionRetention, "revision-retention", server.DefaultRevisionRetention, "how long a revision stays readable (exact-snapshot reads, cursors, watch from its token) after a later write supersedes it; older history is released")
	f.DurationVar(&opts.cfg.MaxRevisionWait, "max-revision-wait", server.DefaultMaxRevisionWait, "longest a read waits for this server to apply the revision its consistency asks for (at_least_as_fresh, at_exact_snapshot, fully_consistent) before failing with Unavailable, e.g. while the datastore is unreachable")
	f.IntVar(&opts.cfg.Limits.MaxHistoryVersions, "max-history-versions", opts.cfg.Limits.MaxHistoryVersions, "most superseded relationship versions kept for history (~1.3 KB each); a write over it is refused with RESOURCE_EXHAUSTED (REST 429) until --revision-retention releases history; 0: no limit")
	f.IntVar(&opts.cfg.Limits.MaxContextualRelationships, "max-contextual-relationships", opts.cfg.Limits.MaxContextualRelationships, "most contextual relationships (held for one request only) in one check, CheckBulk, lookup or AuthZEN request")
	f.StringVar(&opts.cfg.AuthZENBasePath, "authzen-base-path", "", "path of the AuthZEN PDP's identifier, e.g. /authz: endpoints under /authz/access/v1/, metadata at /.well-known/authzen-configuration/authz (default: the root)")
	f.StringVar(&opts.authzenMapping, "authzen-mapping", "", "YAML file mapping AuthZEN subject and resource types, actions and properties onto the schema's types, permissions and caveat context (default: every name maps onto itself)")
	f.StringVar(&opts.logLevel, "log-level", "info", "debug, info, warn or error")
	addAuditFlags(f, &opts.audit)
	addSQLStoreFlags(f, &opts.sqlStore)
	addUIFlags(f, &opts.ui)
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
	if opts.authzenMapping != "" {
		m, err := authzen.LoadMapping(opts.authzenMapping)
		if err != nil {
			return err
		}
		opts.cfg.AuthZEN = m
	}
	if opts.cfg.Approvals.HistoryRetention <= 0 {
		return fmt.Errorf("--approval-history-retention %s: expected a positive duration, such as 720h", opts.cfg.Approvals.HistoryRetention)
	}
	if err := authzen.CheckBasePath(opts.cfg.AuthZENBasePath); err != nil {
		return fmt.Errorf("--authzen-base-path: %w", err)
	}

	// Everything that can be refused is refused before the data directory
	// or a database is touched: a refused serve leaves nothing behind.
	if opts.keysFile != "" {
		ring, err := apikey.Open(opts.keysFile)
		if err != nil {
			return fmt.Errorf("--keys-file: %w", err)
		}
		opts.cfg.Keys = ring
	}
	if opts.escalationRules != "" {
		rules, err := escalation.Load(opts.escalationRules)
		if err != nil {
			return fmt.Errorf("--escalation-rules: %w", err)
		}
		opts.cfg.Escalation = escalation.New(rules, escalation.Options{})
	}
	if err := checkServeFlags(opts); err != nil {
		return err
	}
	ui, err := opts.ui.config(opts.cfg.HTTPAddr)
	if err != nil {
		return err
	}
	opts.cfg.UI = ui
	warnPlaintext(log, opts)

	st, name, err := openStore(ctx, opts)
	if err != nil {
		return err
	}
	defer st.Close()
	opts.cfg.StoreName = name

	auditLog, err := openAudit(ctx, &opts.audit, opts.dsEngine, opts.dataDir, st, log)
	if err != nil {
		return err
	}
	if auditLog != nil {
		defer closeAudit(auditLog, log)
		opts.cfg.Audit = auditLog
	}

	if opts.cfg.CapabilityKeys, err = capabilityKeys(opts); err != nil {
		return err
	}
	srv, err := server.New(st, engine.New(engine.WithMaxCaveatContextBytes(opts.maxCaveatContext)), opts.cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, os.Interrupt)
	defer stop()
	if opts.cfg.Escalation != nil {
		go opts.cfg.Escalation.WatchFile(ctx, opts.escalationRules, log)
	}
	if ring := opts.cfg.Keys; ring != nil {
		// Registered before serving, so a SIGHUP never meets the default
		// action (exit).
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		go watchKeys(ctx, ring, hup, log)
	}
	return srv.Run(ctx)
}

// watchKeys reloads the keys file when it changes and on SIGHUP until ctx
// ends. A file that fails to load leaves the keys in force, logged.
func watchKeys(ctx context.Context, ring *apikey.Keyring, hup <-chan os.Signal, log *slog.Logger) {
	onErr := func(err error) { log.Error("keys file not reloaded; the previous keys stay in force", "error", err) }
	go ring.Watch(ctx, time.Second, onErr)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			if err := ring.Reload(); err != nil {
				onErr(err)
			} else {
				log.Info("keys file reloaded on SIGHUP")
			}
		}
	}
}

// capabilityKeys loads the root keys of capability tokens from --data-dir
// (capability.KeyDir), creating one on first start. A memory datastore keeps
// a key in memory, so its tokens die with the process as its data does.
func capabilityKeys(opts *serveOptions) (*capability.KeySet, error) {
	if opts.dsEngine == "memory" {
		k, err := capability.GenerateKey("memory-"+time.Now().UTC().Format("20060102T150405Z"), time.Now())
		if err != nil {
			return nil, err
		}
		return capability.NewKeySet(k)
	}
	dir := filepath.Join(opts.dataDir, capability.KeyDir)
	keys, err := capability.LoadKeyDir(dir, true, time.Now())
	if err != nil {
		return nil, fmt.Errorf("--data-dir: capability token keys: %w", err)
	}
	opts.cfg.Logger.Info("capability token keys loaded", "dir", dir)
	return keys, nil
}

// openStore opens the datastore named by --datastore-engine. It returns the
// store's stable name for revision tokens ("" for one that does not survive
// the process). Each new engine is one case here.
func openStore(ctx context.Context, opts *serveOptions) (store.Store, string, error) {
	engineName, connURI := opts.dsEngine, opts.dsConnURI
	switch engineName {
	case "embedded":
		if connURI != "" {
			return nil, "", fmt.Errorf("--datastore-conn-uri is not used by the embedded datastore, which stores in --data-dir; remove it or choose another --datastore-engine")
		}
		st, err := embedded.Open(ctx, opts.dataDir, embedded.Options{Logger: opts.cfg.Logger})
		if err != nil {
			return nil, "", fmt.Errorf("--data-dir: %w", err)
		}
		if log := opts.cfg.Logger; log != nil {
			log.Info("opened embedded datastore", "data_dir", opts.dataDir, "store_id", st.ID())
		}
		return st, "embedded:" + st.ID(), nil
	case "postgres", "cockroachdb":
		return openSQLStore(ctx, engineName, connURI, opts.sqlStore, opts.cfg.Logger)
	case "memory":
		if connURI != "" {
			return nil, "", fmt.Errorf("--datastore-conn-uri is not used by the memory datastore; remove it or choose another --datastore-engine")
		}
		return memory.New(), "", nil
	}
	return nil, "", fmt.Errorf("--datastore-engine %q: unknown engine; available: embedded, memory, postgres, cockroachdb", engineName)
}
