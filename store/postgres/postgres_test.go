package postgres_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/postgres"
	"github.com/mandate-authz/mandate/store/postgres/pgtest"
	"github.com/mandate-authz/mandate/store/storetest"
)

// open returns a store over a fresh schema, closed when the test ends.
func open(t testing.TB, opts postgres.Options) *postgres.Store {
	t.Helper()
	return openAt(t, pgtest.URL(t), opts)
}

func openAt(t testing.TB, uri string, opts postgres.Options) *postgres.Store {
	t.Helper()
	opts.Migrate = true
	if opts.MaxConns == 0 {
		opts.MaxConns = 4
	}
	s, err := postgres.Open(t.Context(), uri, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// schemas hands out migrated, empty schemas with a connection pool each,
// emptying them again when a subtest ends: creating, migrating and
// connecting to one per subtest of the conformance suite would take most
// of its time. All are dropped when the test that made the recycler ends.
type schemas struct {
	parent *testing.T
	mu     sync.Mutex
	free   []*pgxpool.Pool
}

// reset empties a schema and gives it a new identity, as a fresh
// migration would leave it.
const reset = `DELETE FROM mandate_relationships;
DELETE FROM mandate_relationship_history;
DELETE FROM mandate_revisions;
DELETE FROM mandate_schemas;
DELETE FROM mandate_records;
UPDATE mandate_state SET head = 0, schema_revision = 0, oldest = 0;
UPDATE mandate_metadata SET store_id = gen_random_uuid()`

func (r *schemas) open(t *testing.T) store.Store {
	t.Helper()
	r.mu.Lock()
	var pool *pgxpool.Pool
	if n := len(r.free); n > 0 {
		pool, r.free = r.free[n-1], r.free[:n-1]
	}
	r.mu.Unlock()
	if pool == nil {
		cfg, err := pgxpool.ParseConfig(pgtest.URL(r.parent))
		if err != nil {
			t.Fatal(err)
		}
		cfg.MaxConns = 4
		if pool, err = pgxpool.NewWithConfig(context.Background(), cfg); err != nil {
			t.Fatal(err)
		}
		// Before the schema is dropped: cleanups run last in, first out.
		r.parent.Cleanup(pool.Close)
	}
	s, err := postgres.New(t.Context(), pool, postgres.Options{Migrate: true})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		s.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := pool.Exec(ctx, reset); err != nil {
			t.Errorf("recycling a test schema: %v", err)
			return
		}
		r.mu.Lock()
		r.free = append(r.free, pool)
		r.mu.Unlock()
	})
	return s
}

func TestConformance(t *testing.T) {
	// Skip here, not from the first subtest's r.open, which would stop
	// this parent test from a subtest (a failure, not a skip).
	pgtest.Require(t)
	r := &schemas{parent: t}
	storetest.Run(t, r.open)
}
