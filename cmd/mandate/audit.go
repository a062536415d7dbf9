package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server/audit"
)

// exitTrailBroken is the exit status of `audit verify` (and of `audit
// export`) on a trail that fails verification; 1 stays the status of errors.
const exitTrailBroken = 2

func newAuditCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Verify, query and export the audit trail",
		Long: `The audit trail records every check (each CheckBulk item), lookup, relationship write,
delete and import, and schema change: the calling service (its preshared key's name), the
subject and whether it is a person or an agent, the agent's delegation chain up to the
person it acts for, the task context (redacted keys hashed), the decision, its reason and
the revision. Each record carries the hash of the one before, so editing, inserting or
removing a record shows.

verify and export read a trail directory (or file) directly, or a PostgreSQL audit table
given as a postgres:// URL; query asks a running server.`,
	}
	cmd.AddCommand(newAuditVerifyCommand(), newAuditQueryCommand(), newAuditExportCommand())
	return cmd
}

func isPostgresURL(path string) bool {
	return strings.HasPrefix(path, "postgres://") || strings.HasPrefix(path, "postgresql://")
}

// openTable connects to a PostgreSQL trail.
func openTable(ctx context.Context, url string) (*pgxpool.Pool, error) {
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("PATH: connecting to PostgreSQL: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("PATH: connecting to PostgreSQL: %w", err)
	}
	return pool, nil
}

func verifyTrail(ctx context.Context, path, table string) (audit.Report, error) {
	if !isPostgresURL(path) {
		return audit.Verify(ctx, path)
	}
	pool, err := openTable(ctx, path)
	if err != nil {
		return audit.Report{}, err
	}
	defer pool.Close()
	return audit.VerifyTable(ctx, pool, table)
}

func newAuditVerifyCommand() *cobra.Command {
	var table string
	cmd := &cobra.Command{
		Use:   "verify PATH",
		Short: "Check an audit trail's hash chain and name the first broken or missing record",
		Long: `Verify checks every record of a trail: that its hash matches its content, that it names
its predecessor's hash, and that no sequence number is skipped. PATH is a trail directory
(every audit-*.jsonl file, in order, as one chain), a single trail file (whose chain may
start in an earlier file), or a postgres:// URL of the database holding --table.

It prints the number of records and the chain's head, or the first record that is
altered, out of place or missing, by file and line (table, chain and seq). The exit
status is 0 for a sound trail, 2 for a broken one and 1 when the trail cannot be read.

A chain cannot show records cut off its end: compare the head printed with the one the
server logged ("audit trail closed" or "audit file rotated", head_seq and head_hash).`,
		Example: "  mandate audit verify ./mandate-data/audit\n  mandate audit verify postgres://mandate@db/mandate --table mandate_audit",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rep, err := verifyTrail(cmd.Context(), args[0], table)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			for _, w := range rep.Warnings {
				fmt.Fprintf(out, "warning: %s\n", w)
			}
			if !rep.OK() {
				fmt.Fprintf(out, "FAILED: %s\n", rep.Failure)
				fmt.Fprintf(out, "%d records before it verified\n", rep.Records)
				return exitCode(exitTrailBroken)
			}
			fmt.Fprintf(out, "OK: %d records in %s\n", rep.Records, trailSize(rep))
			for id, h := range rep.Heads {
				name := "head"
				if id != "" {
					name = "chain " + id + " head"
				}
				fmt.Fprintf(out, "%s: seq %d hash %s (%s)\n", name, h.Seq, h.Hash, h.At)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&table, "table", audit.DefaultTable, "audit table (or schema.table) when PATH is a postgres:// URL")
	return cmd
}

func trailSize(rep audit.Report) string {
	if rep.Files > 0 {
		return plural(rep.Files, "file")
	}
	return plural(len(rep.Heads), "chain")
}

// auditFilters are the filter flags shared by query and export.
type auditFilters struct {
	agent, principal, subject, resource, caller string
	operations, decisions                       []string
	since, until                                string
}

func (f *auditFilters) add(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.agent, "agent", "", "events involving this agent (type:id): as the subject, in a delegation chain, or receiving a delegation")
	fl.StringVar(&f.principal, "principal", "", "decisions tied to this person (type:id): its own and every agent's acting on its behalf, through any chain")
	fl.StringVar(&f.subject, "subject", "", "events whose subject is this (type:id or type:id#relation)")
	fl.StringVar(&f.resource, "resource", "", "events on this resource (type:id), or on any resource of a type (type)")
	fl.StringVar(&f.caller, "caller", "", "events of calls made with this preshared key name")
	fl.StringSliceVar(&f.operations, "operation", nil, "operations: check, check_bulk, lookup_resources, write_relationships, write_schema, ... (repeat or comma-separate)")
	fl.StringSliceVar(&f.decisions, "decision", nil, "decisions: allowed, denied, conditional, ok, error (repeat or comma-separate)")
	fl.StringVar(&f.since, "since", "", "events at or after this time (RFC 3339, or a duration such as 24h meaning that long ago)")
	fl.StringVar(&f.until, "until", "", "events before this time (RFC 3339, or a duration ago)")
}

// parseTime reads an RFC 3339 time or a duration before now.
func parseTime(flag, s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("%s %q: expected an RFC 3339 time (2026-03-01T12:00:00Z) or a positive duration (24h)", flag, s)
}

// query builds the audit.Query of the filter flags.
func (f *auditFilters) query() (audit.Query, error) {
	q := audit.Query{Agent: f.agent, Principal: f.principal, Subject: f.subject, Resource: f.resource, Caller: f.caller}
	for _, o := range f.operations {
		q.Operations = append(q.Operations, audit.Operation(strings.TrimSpace(o)))
	}
	for _, d := range f.decisions {
		q.Decisions = append(q.Decisions, audit.Decision(strings.TrimSpace(d)))
	}
	now := time.Now()
	var err error
	if q.Since, err = parseTime("--since", f.since, now); err != nil {
		return q, err
	}
	if q.Until, err = parseTime("--until", f.until, now); err != nil {
		return q, err
	}
	probe := q
	if err := probe.Validate(); err != nil {
		return q, fmt.Errorf("--%s", err)
	}
	return q, nil
}

type auditQueryOptions struct {
	conn        clientOptions
	filters     auditFilters
	limit       uint32
	cursor      string
	newestFirst bool
	all         bool
	output      string
}

func newAuditQueryCommand() *cobra.Command {
	o := &auditQueryOptions{}
	cmd := &cobra.Command{
		Use:   "query",
		Short: "Ask a server for audit events matching filters",
		Long: `Query asks the server (AuditService.Query) for the events of its trail matching every
filter given, oldest first, one line each: time, decision, operation, subject (with its
delegation chain), permission, resource, reason, caller and request ID. --output json
prints each event as a JSON object, chain and context included.

A page holds --limit events; the command prints the cursor of the next page, or with --all
follows the pages to the end.`,
		Example: `  mandate audit query --principal user:alice --since 24h
  mandate audit query --agent agent:b --decision denied --output json
  mandate audit query --resource doc:plan --all`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runAuditQuery(cmd, o) },
	}
	addClientFlags(cmd.Flags(), &o.conn)
	o.filters.add(cmd)
	f := cmd.Flags()
	f.Uint32Var(&o.limit, "limit", 100, "events per page (at most 1000)")
	f.StringVar(&o.cursor, "cursor", "", "resume after a previous page (its printed next cursor)")
	f.BoolVar(&o.newestFirst, "newest-first", false, "most recent events first")
	f.BoolVar(&o.all, "all", false, "follow the pages to the end")
	f.StringVar(&o.output, "output", "text", "text or json")
	return cmd
}

func runAuditQuery(cmd *cobra.Command, o *auditQueryOptions) error {
	if o.output != "text" && o.output != "json" {
		return fmt.Errorf("--output %q: expected text or json", o.output)
	}
	if o.limit > audit.MaxLimit {
		return fmt.Errorf("--limit %d: at most %d", o.limit, audit.MaxLimit)
	}
	q, err := o.filters.query()
	if err != nil {
		return err
	}
	req := &pb.AuditServiceQueryRequest{
		Agent: q.Agent, Principal: q.Principal, Subject: q.Subject, Resource: q.Resource, Caller: q.Caller,
		Operations: o.filters.operations, Decisions: o.filters.decisions,
		Limit: o.limit, NewestFirst: o.newestFirst,
	}
	if !q.Since.IsZero() {
		req.Since = timestamppb.New(q.Since)
	}
	if !q.Until.IsZero() {
		req.Until = timestamppb.New(q.Until)
	}
	if o.cursor != "" {
		req.OptionalCursor = &pb.Cursor{Token: o.cursor}
	}
	c, ctx, cancel, err := connect(cmd, &o.conn)
	if err != nil {
		return err
	}
	defer cancel()
	defer c.close()
	client := pb.NewAuditServiceClient(c.conn)
	out := cmd.OutOrStdout()
	for {
		resp, err := client.Query(ctx, req)
		if err != nil {
			return c.callError("audit query", err)
		}
		for _, ev := range resp.GetEvents() {
			if o.output == "json" {
				b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(ev)
				if err != nil {
					return err
				}
				fmt.Fprintln(out, string(b))
				continue
			}
			fmt.Fprintln(out, eventLine(ev))
		}
		next := resp.GetNextCursor().GetToken()
		if next == "" {
			return nil
		}
		if !o.all {
			fmt.Fprintf(cmd.ErrOrStderr(), "more events: --cursor %s\n", next)
			return nil
		}
		req.OptionalCursor = &pb.Cursor{Token: next}
	}
}

// eventLine renders an event on one line.
func eventLine(ev *pb.AuditEvent) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s #%d %s %s", ev.GetTime().AsTime().UTC().Format(time.RFC3339Nano), ev.GetSeq(), ev.GetDecision(), ev.GetOperation())
	if ev.GetUpdate() != "" {
		// A relationship write: the relationship in its text form.
		fmt.Fprintf(&b, " %s %s#%s@%s", ev.GetUpdate(), ev.GetResource(), ev.GetPermission(), ev.GetSubject())
	} else if ev.GetSubject() != "" {
		b.WriteString(" " + ev.GetSubject())
	}
	if len(ev.GetChain()) > 1 {
		names := make([]string, len(ev.GetChain()))
		for i, l := range ev.GetChain() {
			names[i] = l.GetSubject()
		}
		b.WriteString(" [" + strings.Join(names, " -> ") + "]")
	}
	if ev.GetPermission() != "" && ev.GetUpdate() == "" {
		b.WriteString(" " + ev.GetPermission())
	}
	if ev.GetResource() != "" && ev.GetUpdate() == "" {
		b.WriteString(" " + ev.GetResource())
	}
	if ev.GetReason() != "" {
		b.WriteString(" reason=" + ev.GetReason())
	}
	if ev.GetError() != "" {
		fmt.Fprintf(&b, " error=%q", ev.GetError())
	}
	if ev.GetCount() != 0 {
		fmt.Fprintf(&b, " count=%d", ev.GetCount())
	}
	fmt.Fprintf(&b, " caller=%s request=%s", ev.GetCaller(), ev.GetRequestId())
	return b.String()
}

type auditExportOptions struct {
	filters  auditFilters
	format   string
	output   string
	table    string
	noVerify bool
}

func newAuditExportCommand() *cobra.Command {
	o := &auditExportOptions{}
	cmd := &cobra.Command{
		Use:   "export PATH",
		Short: "Export an audit trail as OCSF API Activity events or JSON lines, for a SIEM",
		Long: `Export reads a trail (a directory, a file, or a postgres:// URL with --table) and writes
its events, one JSON object a line, to stdout or --output-file:

  --format ocsf   OCSF API Activity events (class_uid 6003, OCSF 1.5.0): actor.user is
                  the principal the decision ties to, actor.app_name the calling service,
                  actor.authorizations the decision; the agent is in unmapped.ai_agent and
                  the delegation chain, hash chain position and everything else Mandate
                  records in unmapped.mandate.
  --format jsonl  the trail's own records.

The trail is verified first and nothing is exported from a broken one (exit status 2)
unless --no-verify is given. The filter flags select events as query's do.`,
		Example: "  mandate audit export --format ocsf ./mandate-data/audit > audit.ocsf.jsonl\n" +
			"  mandate audit export --format ocsf --principal user:alice --since 720h ./mandate-data/audit",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return runAuditExport(cmd, o, args[0]) },
	}
	o.filters.add(cmd)
	f := cmd.Flags()
	f.StringVar(&o.format, "format", "ocsf", "ocsf or jsonl")
	f.StringVar(&o.output, "output-file", "", "write here instead of stdout")
	f.StringVar(&o.table, "table", audit.DefaultTable, "audit table (or schema.table) when PATH is a postgres:// URL")
	f.BoolVar(&o.noVerify, "no-verify", false, "export without verifying the trail first")
	return cmd
}

func runAuditExport(cmd *cobra.Command, o *auditExportOptions, path string) (err error) {
	if o.format != "ocsf" && o.format != "jsonl" {
		return fmt.Errorf("--format %q: expected ocsf or jsonl", o.format)
	}
	q, err := o.filters.query()
	if err != nil {
		return err
	}
	ctx := cmd.Context()
	if !o.noVerify {
		rep, err := verifyTrail(ctx, path, o.table)
		if err != nil {
			return err
		}
		if !rep.OK() {
			fmt.Fprintf(cmd.ErrOrStderr(), "the trail does not verify: %s\nnothing exported (--no-verify exports anyway)\n", rep.Failure)
			return exitCode(exitTrailBroken)
		}
	}
	query := func(q audit.Query) (audit.Page, error) { return audit.QueryDir(ctx, path, q) }
	if isPostgresURL(path) {
		pool, err := openTable(ctx, path)
		if err != nil {
			return err
		}
		defer pool.Close()
		query = func(q audit.Query) (audit.Page, error) { return audit.QueryTable(ctx, pool, o.table, q) }
	}
	var w io.Writer = cmd.OutOrStdout()
	if o.output != "" {
		f, err := os.Create(o.output)
		if err != nil {
			return fmt.Errorf("--output-file: %w", err)
		}
		defer func() {
			if cerr := f.Close(); cerr != nil && err == nil {
				err = fmt.Errorf("--output-file: %w", cerr)
			}
		}()
		w = f
	}
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	q.Limit = audit.MaxLimit
	n := 0
	for {
		page, err := query(q)
		if err != nil {
			return err
		}
		for _, ev := range page.Events {
			var v any = ev
			if o.format == "ocsf" {
				v = audit.ToOCSF(ev)
			}
			if err := enc.Encode(v); err != nil {
				return fmt.Errorf("writing the export: %w", err)
			}
			n++
		}
		if page.Next == "" {
			break
		}
		q.After = page.Next
	}
	if o.output != "" {
		fmt.Fprintf(cmd.ErrOrStderr(), "exported %s to %s\n", plural(n, "event"), o.output)
	}
	return nil
}
