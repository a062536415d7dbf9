package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/pflag"

	"github.com/mandate-authz/mandate/server/audit"
	"github.com/mandate-authz/mandate/store"
)

// auditOptions are serve's --audit-* flags.
type auditOptions struct {
	sink         string
	dir          string
	maxFileSize  string
	redactKeys   []string
	redactSecret string
	overflow     string
	buffer       int
	table        string
	chainID      string
	retention    string
	sync         bool
}

func addAuditFlags(f *pflag.FlagSet, o *auditOptions) {
	f.StringVar(&o.sink, "audit-sink", "auto", "where the audit trail goes: file (JSON lines in --audit-dir), stdout, postgres (a table in the PostgreSQL datastore), none; auto is postgres with a PostgreSQL datastore, else file")
	f.StringVar(&o.dir, "audit-dir", "", "directory of the file audit trail (default <--data-dir>/audit)")
	f.StringVar(&o.maxFileSize, "audit-max-file-size", "100MiB", "size at which an audit file is rotated (bytes, or with KiB, MiB, GiB)")
	f.StringSliceVar(&o.redactKeys, "audit-redact-keys", nil, "caveat context keys whose values the trail records only as keyed hashes (HMAC-SHA-256), at any depth; comma-separated")
	f.StringVar(&o.redactSecret, "audit-redact-secret-file", "", "file of the secret key for --audit-redact-keys, created (0600) if missing (default <--data-dir>/audit-redact.key, outside the trail)")
	f.StringVar(&o.overflow, "audit-overflow", string(audit.Block), "when the audit sink falls behind: block (calls wait for room; a check or lookup still unrecorded at its deadline fails rather than go unaudited) or drop (events are discarded, counted in mandate_audit_events_dropped_total, logged, and noted in the trail)")
	f.IntVar(&o.buffer, "audit-buffer", 8192, "audit events queued for the sink before --audit-overflow applies")
	f.StringVar(&o.table, "audit-table", audit.DefaultTable, "table (or schema.table) of the postgres audit sink")
	f.StringVar(&o.retention, "audit-retention", "", "how much of the audit trail to keep: an age (720h), a total size (10GiB) or both (720h,10GiB); beyond it the oldest rotated files (file sink) or this server's oldest rows (postgres sink) are deleted, recorded in the trail first so that mandate audit verify still passes (default keep everything)")
	f.BoolVar(&o.sync, "audit-sync", false, "make every audit event durable (fsynced) before the call is answered, checks and lookups included; writes, deletes, imports and schema changes always are")
	f.StringVar(&o.chainID, "audit-chain-id", "", "this server's hash chain in the postgres audit table (default the host name); each server sharing the table needs its own")
}

// parseSize reads a byte count with an optional KiB, MiB or GiB suffix.
func parseSize(flag, s string) (int64, error) {
	mult := int64(1)
	t := strings.TrimSpace(s)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%s %q: expected a positive size such as 100MiB", flag, s)
	}
	return n * mult, nil
}

// parseRetention reads --audit-retention: an age, a size, or both,
// comma-separated.
func parseRetention(s string) (audit.Retention, error) {
	var r audit.Retention
	if strings.TrimSpace(s) == "" {
		return r, nil
	}
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if d, err := time.ParseDuration(part); err == nil {
			if d <= 0 || r.MaxAge != 0 {
				return r, fmt.Errorf("--audit-retention %q: expected one positive age such as 720h", s)
			}
			r.MaxAge = d
			continue
		}
		n, err := parseSize("--audit-retention", part)
		if err != nil || r.MaxBytes != 0 {
			return r, fmt.Errorf("--audit-retention %q: expected an age (720h), a size (10GiB) or both, comma-separated", s)
		}
		r.MaxBytes = n
	}
	return r, nil
}

// pooler is a datastore with a PostgreSQL connection pool (store/postgres).
type pooler interface {
	Pool() *pgxpool.Pool
	Engine() string
}

// openAudit opens the audit trail serve's flags describe (see
// resolveAudit) and logs where it goes; nil when it is off. The caller
// closes it after the server stops.
func openAudit(ctx context.Context, o *auditOptions, dsEngine, dataDir string, st store.Store, log *slog.Logger) (*audit.Log, error) {
	plan, err := resolveAudit(o, dsEngine, dataDir)
	if err != nil {
		return nil, err
	}
	var sink audit.Sink
	switch plan.sink {
	case "none":
		log.Warn("auditing is off (--audit-sink none): decisions and changes are not recorded")
		return nil, nil
	case "file":
		fs, err := audit.OpenFileSink(plan.dir, plan.maxSize, log)
		if err != nil {
			return nil, fmt.Errorf("--audit-dir: %w", err)
		}
		fs.SetRetention(plan.retention)
		sink = fs
	case "stdout":
		chain, err := audit.NewChainID()
		if err != nil {
			return nil, err
		}
		sink = audit.NewWriterSink("stdout", os.Stdout, chain)
	case "postgres":
		pg, ok := st.(pooler)
		if !ok || pg.Engine() != "postgres" {
			return nil, fmt.Errorf("--audit-sink postgres needs --datastore-engine postgres (the trail goes to a table of that database)")
		}
		ps, err := audit.OpenPostgresSink(ctx, pg.Pool(), audit.PostgresOptions{Table: o.table, ChainID: o.chainID, Logger: log})
		if err != nil {
			return nil, fmt.Errorf("--audit-sink postgres: %w", err)
		}
		ps.SetRetention(plan.retention)
		sink = ps
	}
	overflow := plan.overflow
	var redactor *audit.Redactor
	if len(o.redactKeys) > 0 {
		path := o.redactSecret
		if path == "" {
			path = filepath.Join(dataDir, "audit-redact.key")
		}
		secret, err := audit.LoadOrCreateSecret(path)
		if err != nil {
			sink.Close()
			return nil, fmt.Errorf("--audit-redact-secret-file: %w", err)
		}
		if redactor, err = audit.NewRedactor(o.redactKeys, secret); err != nil {
			sink.Close()
			return nil, fmt.Errorf("--audit-redact-keys: %w", err)
		}
	}
	l, err := audit.New(ctx, audit.Options{Sink: sink, Buffer: o.buffer, Overflow: overflow, Redactor: redactor, Logger: log, SyncAll: o.sync})
	if err != nil {
		sink.Close()
		return nil, err
	}
	return l, nil
}

// auditCloseTimeout bounds closing the trail after the server stopped (its
// grace period already passed): shutdown takes at most the grace period,
// this, and the Log's one-second abort wait, even when the sink fails.
const auditCloseTimeout = 5 * time.Second

// closeAudit writes out what is queued and closes the trail.
func closeAudit(l *audit.Log, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), auditCloseTimeout)
	defer cancel()
	if err := l.Close(ctx); err != nil {
		log.Error("closing the audit trail", "error", err)
	}
}
