// Package postgres is the store.Store kept in PostgreSQL, and with
// Options.Engine "cockroachdb" in CockroachDB, through pgx v5.
//
// # Layout
//
// mandate_relationships holds the current version of every relationship;
// mandate_relationship_history the versions that were replaced or deleted,
// with the revision that ended them. A read at the head touches only the
// current table, in key order straight off its key index, streamed through
// a cursor; reads at older revisions add the history rows alive then; a
// read resuming after a key adds a row comparison on the key index's
// expressions (keyset paging), so it starts there. The
// change stream is derived from the created and deleted revisions of those
// rows plus mandate_revisions (one row per write, so that writes changing
// nothing are changes too) and mandate_schemas. Migrate creates the tables;
// Open refuses a database at another schema version.
//
// # Revisions
//
// Every write takes the lock of the single row of mandate_state, which
// holds the head, and keeps it until it commits. Writers are therefore
// serialized, and revision order is commit order with no gaps: a reader
// that sees head R sees every write up to R, and the change stream can
// never skip a commit that becomes visible later. One writer at a time is
// the price; PostgreSQL's snapshot-based alternatives (xid8 horizons) avoid
// it but make "everything up to R" a property of snapshots rather than of a
// number, which revision tokens, replicas and CockroachDB would all have
// to share. Preconditions, CREATE conflicts and the orphan check of a
// schema write run under the same lock, so they see every earlier write.
//
// # Group commit
//
// So that the lock and the commit's WAL flush are not paid once per
// write, Write and DeleteMatching hand their work to one committer
// goroutine per Store, which runs every write waiting at that moment in
// one transaction (see group.go): each keeps its own revision, checks and
// error, and nobody is answered before the commit. The writes of a group
// that have no precondition and no CREATE travel together, as one
// statement pair for all their keys, with the group's revision records
// and new head in the same round trip; a write with checks costs one
// round trip more, to read them against what the writes before it left.
// On PostgreSQL the transaction's BEGIN, lock and COMMIT travel with the
// writes: a group of writes without checks costs one round trip and one
// commit whatever its size (CockroachDB: about four round trips).
//
// # Bulk writes
//
// A write's keys travel as arrays expanded with unnest: one statement per
// batch whatever its size, each key probed through the key index. A batch
// of CREATEs only (an import) is COPYed straight into the current table,
// with the key index's uniqueness as the conflict check, falling back to
// the general path when any key is already stored. There is no index on
// the subject (it would halve import speed); reads and deletes that name
// no resource type scan the current table.
//
// # Change stream
//
// Watch polls in bounded windows (by the number of rows changed, recorded
// per revision), each in one snapshot, and is woken early by
// LISTEN/NOTIFY on PostgreSQL and by this process's commits; CockroachDB
// watchers poll every Options.PollInterval. A lost or unresponsive
// database ends Watch with an error rather than hanging it; the caller may
// watch again from the last revision it saw once the database is back.
//
// # Garbage collection
//
// GC(ctx, before) makes the newest revision committed at or before before
// the oldest readable one, then deletes history rows and revision records
// no read at or after it can need, and relationships that had expired by
// before and were written before it. Reads and watches from earlier
// revisions fail with store.ErrRevisionGone; a read already under way
// finishes from its snapshot. Open runs GC every Options.GCInterval with a
// window of Options.GCWindow when asked; ForgetBefore does the same by
// revision.
//
// # Precision
//
// Expirations are stored with microsecond precision (timestamptz); finer
// digits are truncated on write.
//
// # CockroachDB
//
// The "cockroachdb" engine shares every query except: its migration files
// (no COLLATE "C", since CockroachDB strings compare bytewise already;
// a test checks they differ in nothing else), transactions run through
// crdbpgx.ExecuteTx (retried on serialization conflicts), garbage
// collection's bounded deletes (DELETE ... LIMIT), imports (multi-row
// INSERT ... SELECT FROM unnest rather than COPY), no advisory lock around
// migrations, no planner settings, and polling instead of LISTEN/NOTIFY.
// No CockroachDB server was available where this was written, so all of
// it is untested against one: the migration SQL (expression and partial
// indexes, a table without a primary key, gen_random_uuid), multi-array
// unnest, DELETE ... USING ... RETURNING inside a data-modifying CTE, the
// planner choosing index lookups for a batch's keys, server-side cursors
// (DECLARE/FETCH with parameters, CockroachDB 22.1 or later),
// repeatable-read read-only transactions (serializable there, where a long
// read may fail with a retryable error that Read reports rather than
// retries), SELECT ... FOR UPDATE on the state row, and write retries
// under contention.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/store"
)

// DefaultGCWindow is how long history stays readable by default, as
// SpiceDB's --datastore-gc-window.
const DefaultGCWindow = 24 * time.Hour

// ErrClosed is returned by every method of a closed Store.
var ErrClosed = errors.New("postgres store is closed")

// Options configures Open. Zero values take the defaults described.
type Options struct {
	// Engine is EnginePostgres (the default) or EngineCockroachDB; Open
	// fails when the server is the other one.
	Engine string
	// MaxConns, MinConns and MaxConnLifetime size the connection pool;
	// zero keeps pgx's defaults (or pool_max_conns and friends given in
	// the URI). MaxConns must be at least 2: a Read in progress holds one
	// connection, and a watcher's NOTIFY listener has its own.
	MaxConns        int32
	MinConns        int32
	MaxConnLifetime time.Duration
	// Migrate applies missing migrations before opening; otherwise Open
	// refuses a database that is not at this build's schema version.
	Migrate bool
	// GCWindow is how long history stays readable (DefaultGCWindow).
	GCWindow time.Duration
	// GCInterval, when positive, runs GC that often in the background.
	GCInterval time.Duration
	// PollInterval is how often an idle Watch polls: a fallback for missed
	// notifications on PostgreSQL (default 1s), the only wake-up on
	// CockroachDB (default 100ms).
	PollInterval time.Duration
	// Logger receives background GC and listener reports; nil discards.
	Logger *slog.Logger
	// Now is the clock that decides expiration (tests); nil is time.Now.
	Now func() time.Time
}

// Store is a store.Store in PostgreSQL or CockroachDB. Create it with Open.
type Store struct {
	pool     *pgxpool.Pool
	ownsPool bool
	d        dialect
	id       string
	channel  string
	opts     Options
	now      func() time.Time
	log      *slog.Logger

	schemaMu sync.Mutex
	schema   *cachedSchema // the newest schema compiled, nil before any

	wake       *notifier
	localHead  atomic.Int64   // the newest revision this process committed (committed)
	writes     chan *writeOp  // to the committer (group.go)
	onGroup    func(size int) // tests: sees each group's size
	listenOnce sync.Once
	bgMu       sync.Mutex // orders starting background work against Close
	bg         context.Context
	stopBG     context.CancelFunc
	bgWG       sync.WaitGroup
	closed     atomic.Bool
}

type cachedSchema struct {
	rev      store.Revision
	compiled *schema.Schema
}

var (
	_ store.Store           = (*Store)(nil)
	_ store.HistoryReleaser = (*Store)(nil)
)

// Open connects to the database at uri (a PostgreSQL connection string or
// URL, "postgres://user@host:5432/db?sslmode=disable"), checks that it is
// migrated to this build's schema version (migrating first when
// opts.Migrate is set) and returns the store, which owns the connection
// pool it made.
func Open(ctx context.Context, uri string, opts Options) (*Store, error) {
	// A Read holds a connection while its caller iterates, and the caller
	// may write meanwhile: one connection is never enough.
	if opts.MaxConns < 0 || opts.MaxConns == 1 || opts.MinConns < 0 || (opts.MaxConns > 0 && opts.MinConns > opts.MaxConns) {
		return nil, fmt.Errorf("connection pool: min %d, max %d: expected 0 <= min <= max and max 0 (pgx's default) or at least 2", opts.MinConns, opts.MaxConns)
	}
	if opts.MaxConnLifetime < 0 {
		return nil, fmt.Errorf("connection max lifetime %v: expected 0 (pgx's default) or more", opts.MaxConnLifetime)
	}
	cfg, err := pgxpool.ParseConfig(uri)
	if err != nil {
		// pgx's message leaves the password out.
		return nil, fmt.Errorf("datastore connection URI: %w", err)
	}
	if opts.MaxConns > 0 {
		cfg.MaxConns = opts.MaxConns
	}
	if opts.MinConns > 0 {
		cfg.MinConns = opts.MinConns
	}
	if opts.MaxConnLifetime > 0 {
		cfg.MaxConnLifetime = opts.MaxConnLifetime
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to the datastore: %w", err)
	}
	s, err := New(ctx, pool, opts)
	if err != nil {
		pool.Close()
		return nil, err
	}
	s.ownsPool = true
	return s, nil
}

// New is Open over a pool the caller made and keeps: Close leaves it open.
// opts' pool sizes are ignored.
func New(ctx context.Context, pool *pgxpool.Pool, opts Options) (*Store, error) {
	if opts.Engine == "" {
		opts.Engine = EnginePostgres
	}
	if opts.Engine != EnginePostgres && opts.Engine != EngineCockroachDB {
		return nil, fmt.Errorf("engine %q: expected %q or %q", opts.Engine, EnginePostgres, EngineCockroachDB)
	}
	if opts.GCWindow < 0 || opts.GCInterval < 0 || opts.PollInterval < 0 {
		return nil, fmt.Errorf("GC window %v, GC interval %v, poll interval %v: none may be negative", opts.GCWindow, opts.GCInterval, opts.PollInterval)
	}
	d, err := detectDialect(ctx, pool)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", opts.Engine, err)
	}
	if d.engine != opts.Engine {
		return nil, fmt.Errorf("engine %s was asked for, but the server is %s", opts.Engine, d.engine)
	}
	if opts.Migrate {
		if _, err := migrate(ctx, pool, d); err != nil {
			return nil, err
		}
	}
	if err := checkVersion(ctx, pool, d); err != nil {
		return nil, err
	}
	var id string
	if err := pool.QueryRow(ctx, "SELECT store_id::text FROM mandate_metadata").Scan(&id); err != nil {
		return nil, fmt.Errorf("reading the store identity: %w", err)
	}
	if opts.GCWindow == 0 {
		opts.GCWindow = DefaultGCWindow
	}
	if opts.PollInterval == 0 {
		opts.PollInterval = time.Second
		if !d.notify {
			opts.PollInterval = 100 * time.Millisecond
		}
	}
	s := &Store{
		pool:    pool,
		d:       d,
		id:      id,
		channel: "mandate_" + strings.ReplaceAll(id, "-", ""),
		opts:    opts,
		now:     opts.Now,
		log:     opts.Logger,
		wake:    newNotifier(),
		writes:  make(chan *writeOp),
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s.bg, s.stopBG = context.WithCancel(context.Background())
	s.bgWG.Add(1)
	go s.commitLoop()
	if opts.GCInterval > 0 {
		s.bgWG.Add(1)
		go s.gcLoop()
	}
	return s, nil
}

// ID returns the store's identity, a UUID drawn when the database was first
// migrated: the same for every process using the database, so revision
// tokens stay valid across restarts and replicas.
func (s *Store) ID() string { return s.id }

// Engine returns EnginePostgres or EngineCockroachDB.
func (s *Store) Engine() string { return s.d.engine }

// Pool returns the connection pool, for tools and tests.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Head returns the latest committed revision.
func (s *Store) Head(ctx context.Context) (store.Revision, error) {
	if s.closed.Load() {
		return 0, ErrClosed
	}
	var head int64
	if err := s.pool.QueryRow(ctx, "SELECT head FROM mandate_state").Scan(&head); err != nil {
		return 0, fmt.Errorf("head: %w", err)
	}
	return store.Revision(head), nil
}

// Close stops background work, ends watches and closes the pool if Open
// made it.
func (s *Store) Close() error {
	s.bgMu.Lock()
	already := s.closed.Swap(true)
	s.bgMu.Unlock()
	if already {
		return nil
	}
	s.stopBG()
	s.wake.broadcast()
	s.bgWG.Wait()
	if s.ownsPool {
		s.pool.Close()
	}
	return nil
}

// readTx runs fn in a read-only repeatable-read transaction: one snapshot
// for the retention check and the rows read.
func (s *Store) readTx(ctx context.Context) (pgx.Tx, error) {
	return s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
}

// checkReadable reads the head and the oldest retained revision in tx and
// says whether rev can be read there.
func checkReadable(ctx context.Context, tx pgx.Tx, rev store.Revision) (head store.Revision, err error) {
	var h, oldest int64
	if err := tx.QueryRow(ctx, "SELECT head, oldest FROM mandate_state").Scan(&h, &oldest); err != nil {
		return 0, err
	}
	switch {
	case uint64(rev) > uint64(h):
		return 0, fmt.Errorf("%w: revision %d, head is %d", store.ErrFutureRevision, rev, h)
	case uint64(rev) < uint64(oldest):
		return 0, fmt.Errorf("%w: revision %d, oldest retained is %d", store.ErrRevisionGone, rev, oldest)
	}
	return store.Revision(h), nil
}

// notifier wakes every waiter at once: wait returns a channel closed by the
// next broadcast.
type notifier struct {
	mu sync.Mutex
	ch chan struct{}
}

func newNotifier() *notifier { return &notifier{ch: make(chan struct{})} }

func (n *notifier) wait() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.ch
}

func (n *notifier) broadcast() {
	n.mu.Lock()
	defer n.mu.Unlock()
	close(n.ch)
	n.ch = make(chan struct{})
}
