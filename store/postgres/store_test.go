package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/postgres"
	"github.com/mandate-authz/mandate/store/postgres/pgtest"
	"github.com/mandate-authz/mandate/store/rel"
)

const testSchema = `use expiration

definition user {}

definition doc {
	relation owner: user
	relation viewer: user | user with expiration
}
`

func mustRel(t testing.TB, text string) rel.Relationship {
	t.Helper()
	r, err := rel.Parse(text)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func touch(t testing.TB, texts ...string) []store.Mutation {
	t.Helper()
	out := make([]store.Mutation, len(texts))
	for i, text := range texts {
		out[i] = store.Mutation{Op: store.Touch, Rel: mustRel(t, text)}
	}
	return out
}

func readAll(ctx context.Context, s store.Store, rev store.Revision) ([]string, error) {
	var out []string
	for r, err := range s.Read(ctx, rev, rel.Filter{}, nil) {
		if err != nil {
			return nil, err
		}
		out = append(out, r.String())
	}
	return out, nil
}

func newPool(t testing.TB, uri string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), uri)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func TestOpenRefusesUnmigratedAndNewerDatabases(t *testing.T) {
	ctx := t.Context()
	uri := pgtest.URL(t)
	_, err := postgres.Open(ctx, uri, postgres.Options{})
	if !errors.Is(err, postgres.ErrNotMigrated) || !strings.Contains(err.Error(), "mandate migrate") {
		t.Fatalf("Open of an empty database: %v; want ErrNotMigrated telling to run mandate migrate", err)
	}
	pool := newPool(t, uri)
	applied, err := postgres.Migrate(ctx, pool)
	if err != nil || fmt.Sprint(applied) != "[0001_init]" {
		t.Fatalf("Migrate = %v, %v; want [0001_init]", applied, err)
	}
	if applied, err := postgres.Migrate(ctx, pool); err != nil || len(applied) != 0 {
		t.Fatalf("second Migrate = %v, %v; want nothing applied", applied, err)
	}
	s, err := postgres.Open(ctx, uri, postgres.Options{})
	if err != nil {
		t.Fatalf("Open after Migrate: %v", err)
	}
	s.Close()

	if _, err := postgres.Open(ctx, uri, postgres.Options{Engine: postgres.EngineCockroachDB}); err == nil || !strings.Contains(err.Error(), "the server is postgres") {
		t.Fatalf("Open as cockroachdb of a PostgreSQL server: %v", err)
	}
	for _, bad := range []postgres.Options{{Engine: "mysql"}, {MaxConns: 2, MinConns: 3}, {MaxConns: 1}, {GCWindow: -time.Second}} {
		if _, err := postgres.Open(ctx, uri, bad); err == nil {
			t.Errorf("Open with %+v succeeded", bad)
		}
	}
	if _, err := postgres.Open(ctx, "postgres://u:secret-pw@127.0.0.1:1/x?sslmode=bogus", postgres.Options{}); err == nil || strings.Contains(err.Error(), "secret-pw") {
		t.Errorf("Open with a bad URI: %v (must fail without echoing the password)", err)
	}

	if _, err := pool.Exec(ctx, "INSERT INTO mandate_migrations (version, name) VALUES (99, 'future')"); err != nil {
		t.Fatal(err)
	}
	if _, err := postgres.Open(ctx, uri, postgres.Options{}); !errors.Is(err, postgres.ErrNewerSchema) || !strings.Contains(err.Error(), "upgrade mandate") {
		t.Fatalf("Open of a database from a newer build: %v; want ErrNewerSchema", err)
	}
	if _, err := postgres.Migrate(ctx, pool); !errors.Is(err, postgres.ErrNewerSchema) {
		t.Fatalf("Migrate of a database from a newer build: %v; want ErrNewerSchema", err)
	}
}

func TestConcurrentMigrations(t *testing.T) {
	ctx := t.Context()
	uri := pgtest.URL(t)
	const migrators = 4
	var wg sync.WaitGroup
	results := make([][]postgres.Migration, migrators)
	errs := make([]error, migrators)
	for i := range migrators {
		pool := newPool(t, uri)
		wg.Go(func() { results[i], errs[i] = postgres.Migrate(ctx, pool) })
	}
	wg.Wait()
	total := 0
	for i := range migrators {
		if errs[i] != nil {
			t.Fatalf("migrator %d: %v", i, errs[i])
		}
		total += len(results[i])
	}
	if total != postgres.LatestVersion() {
		t.Fatalf("%d migrations applied by %d concurrent migrators, want each of %d once", total, migrators, postgres.LatestVersion())
	}
	var rows int
	if err := newPool(t, uri).QueryRow(ctx, "SELECT count(*) FROM mandate_metadata").Scan(&rows); err != nil || rows != 1 {
		t.Fatalf("mandate_metadata has %d rows (%v), want 1", rows, err)
	}
}

// TestIdentityAndReplicas opens two stores over one database, as two
// servers would: they share the identity, see each other's writes in one
// revision sequence, and a watcher on one hears the other's commits
// promptly (NOTIFY, not the poll interval).
func TestIdentityAndReplicas(t *testing.T) {
	ctx := t.Context()
	uri := pgtest.URL(t)
	a := openAt(t, uri, postgres.Options{PollInterval: time.Minute})
	b := openAt(t, uri, postgres.Options{PollInterval: time.Minute})
	if a.ID() != b.ID() || !regexp.MustCompile(`^[0-9a-f-]{36}$`).MatchString(a.ID()) {
		t.Fatalf("identities %q and %q: want one UUID", a.ID(), b.ID())
	}
	if other := open(t, postgres.Options{}); other.ID() == a.ID() {
		t.Fatal("two databases share an identity")
	}
	if _, err := a.WriteSchema(ctx, testSchema); err != nil {
		t.Fatal(err)
	}
	head, _ := b.Head(ctx)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	seen := make(chan store.Change, 100)
	go func() {
		for ch, err := range b.Watch(wctx, head) {
			if err != nil {
				return
			}
			seen <- ch
		}
	}()
	time.Sleep(200 * time.Millisecond) // let b's listener start
	var revs []store.Revision
	for i := range 6 {
		s := a
		if i%2 == 1 {
			s = b
		}
		rev, err := s.Write(ctx, nil, touch(t, fmt.Sprintf("doc:%d#owner@user:ann", i)))
		if err != nil {
			t.Fatal(err)
		}
		revs = append(revs, rev)
		select {
		case ch := <-seen:
			if ch.Revision != rev {
				t.Fatalf("watcher on b saw revision %d, want %d", ch.Revision, rev)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("watcher on b did not hear write %d (revision %d) within 5s", i, rev)
		}
	}
	for i := 1; i < len(revs); i++ {
		if revs[i] != revs[i-1]+1 {
			t.Fatalf("revisions across two stores: %v, want consecutive", revs)
		}
	}
}

func TestGC(t *testing.T) {
	ctx := t.Context()
	s := open(t, postgres.Options{})
	r1, _ := s.WriteSchema(ctx, testSchema)
	r2, _ := s.Write(ctx, nil, touch(t, "doc:1#owner@user:ann", "doc:2#owner@user:bob", "doc:3#viewer@user:old[expiration:2000-01-01T00:00:00Z]"))
	r3, _ := s.Write(ctx, nil, []store.Mutation{{Op: store.Delete, Rel: mustRel(t, "doc:1#owner@user:ann")}})
	r4, err := s.Write(ctx, nil, touch(t, "doc:2#owner@user:bob", "doc:4#owner@user:cat"))
	if err != nil {
		t.Fatal(err)
	}
	count := func(table string) int {
		var n int
		if err := s.Pool().QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	// Nothing was committed a day ago: nothing to collect.
	res, err := s.GC(ctx, time.Now().Add(-24*time.Hour))
	if err != nil || res.Oldest != 0 || res.History+res.Expired+res.Revisions+res.Schemas != 0 {
		t.Fatalf("GC of a day ago = %+v, %v; want nothing collected", res, err)
	}
	if got, err := readAll(ctx, s, r1); err != nil || len(got) != 0 {
		t.Fatalf("Read(%d) = %q, %v", r1, got, err)
	}

	// Everything was committed before now: history up to the head goes.
	res, err = s.GC(ctx, time.Now().Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	want := postgres.GCResult{Oldest: r4, History: 2, Expired: 1, Revisions: 3}
	if res != want {
		t.Fatalf("GC = %+v, want %+v", res, want)
	}
	for _, rev := range []store.Revision{r1, r2, r3} {
		if _, err := readAll(ctx, s, rev); !errors.Is(err, store.ErrRevisionGone) {
			t.Fatalf("Read(%d) after GC: %v, want ErrRevisionGone", rev, err)
		}
		for _, err := range s.Watch(ctx, rev) {
			if !errors.Is(err, store.ErrRevisionGone) {
				t.Fatalf("Watch(%d) after GC: %v, want ErrRevisionGone", rev, err)
			}
			break
		}
	}
	if got, err := readAll(ctx, s, r4); err != nil || strings.Join(got, " ") != "doc:2#owner@user:bob doc:4#owner@user:cat" {
		t.Fatalf("Read(head) after GC = %q, %v", got, err)
	}
	if text, at, err := s.ReadSchema(ctx, r4); err != nil || text != testSchema || at != r1 {
		t.Fatalf("ReadSchema(head) after GC = %d bytes at %d, %v; want the schema written at %d", len(text), at, err, r1)
	}
	if h, c, r := count("mandate_relationship_history"), count("mandate_relationships"), count("mandate_revisions"); h != 0 || c != 2 || r != 1 {
		t.Fatalf("after GC: %d history rows, %d current, %d revision records; want 0, 2, 1", h, c, r)
	}
	// Collecting never moves backwards.
	if res, err := s.GC(ctx, time.Now().Add(-time.Hour)); err != nil || res.Oldest != r4 {
		t.Fatalf("GC of an earlier time = %+v, %v; want the oldest to stay %d", res, err, r4)
	}
}

func TestPeriodicGC(t *testing.T) {
	ctx := t.Context()
	s := open(t, postgres.Options{GCInterval: 20 * time.Millisecond, GCWindow: time.Millisecond})
	r1, _ := s.WriteSchema(ctx, testSchema)
	if _, err := s.Write(ctx, nil, touch(t, "doc:1#owner@user:ann")); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		_, err := readAll(ctx, s, r1)
		if errors.Is(err, store.ErrRevisionGone) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("revision %d still readable 10s into GC every 20ms with a 1ms window", r1)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestReadIsASnapshot collects history while a read of an old revision is
// part-way through its cursor: the read finishes with the state it began.
func TestReadIsASnapshot(t *testing.T) {
	ctx := t.Context()
	s := open(t, postgres.Options{})
	if _, err := s.WriteSchema(ctx, testSchema); err != nil {
		t.Fatal(err)
	}
	const n = 12_000 // more than one fetch
	var muts []store.Mutation
	for i := range n {
		muts = append(muts, store.Mutation{Op: store.Create, Rel: rel.Relationship{
			Resource: rel.Object{Type: "doc", ID: fmt.Sprintf("d%05d", i)}, Relation: "owner",
			Subject: rel.Subject{Type: "user", ID: "ann"},
		}})
	}
	old, err := s.Write(ctx, nil, muts)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.DeleteMatching(ctx, nil, rel.Filter{ResourceType: "doc"}, 0); err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, err := range s.Read(ctx, old, rel.Filter{}, nil) {
		if err != nil {
			t.Fatalf("Read(%d) after %d: %v", old, seen, err)
		}
		if seen == 0 {
			res, err := s.GC(ctx, time.Now().Add(time.Minute))
			if err != nil || res.History != n {
				t.Fatalf("GC during the read = %+v, %v; want %d history rows collected", res, err, n)
			}
		}
		seen++
	}
	if seen != n {
		t.Fatalf("Read(%d) yielded %d while GC ran, want %d", old, seen, n)
	}
	if _, err := readAll(ctx, s, old); !errors.Is(err, store.ErrRevisionGone) {
		t.Fatalf("a new Read(%d) after GC: %v, want ErrRevisionGone", old, err)
	}
}

func TestOrphanListIsBounded(t *testing.T) {
	ctx := t.Context()
	s := open(t, postgres.Options{})
	if _, err := s.WriteSchema(ctx, testSchema); err != nil {
		t.Fatal(err)
	}
	var texts []string
	for i := range 150 {
		texts = append(texts, fmt.Sprintf("doc:%d#viewer@user:u", i))
	}
	texts = append(texts, "doc:x#viewer@user:u[expiration:2100-01-01T00:00:00Z]")
	if _, err := s.Write(ctx, nil, touch(t, texts...)); err != nil {
		t.Fatal(err)
	}
	_, err := s.WriteSchema(ctx, strings.Replace(testSchema, "\trelation viewer: user | user with expiration\n", "", 1))
	if !errors.Is(err, store.ErrSchemaOrphans) {
		t.Fatalf("WriteSchema: %v, want ErrSchemaOrphans", err)
	}
	if n := strings.Count(err.Error(), "#viewer@user:u"); n != 100 {
		t.Fatalf("refusal names %d orphans, want the first 100: %v", n, err)
	}
	if !strings.Contains(err.Error(), "doc:0#viewer@user:u:") || strings.Contains(err.Error(), "doc:99#") {
		t.Fatalf("refusal does not name the first 100 in key order: %v", err)
	}
	// Only expiring viewers removed: just the one expiring relationship.
	_, err = s.WriteSchema(ctx, strings.Replace(testSchema, " | user with expiration", "", 1))
	if !errors.Is(err, store.ErrSchemaOrphans) || !strings.Contains(err.Error(), "1 relationship(s)") || !strings.Contains(err.Error(), "doc:x#viewer@user:u") {
		t.Fatalf("WriteSchema without expiring viewers: %v", err)
	}
}

func TestExpirationPrecision(t *testing.T) {
	ctx := t.Context()
	s := open(t, postgres.Options{})
	if _, err := s.WriteSchema(ctx, testSchema); err != nil {
		t.Fatal(err)
	}
	r := mustRel(t, "doc:1#viewer@user:ann")
	r.Expiration = time.Date(2100, 1, 2, 3, 4, 5, 123456789, time.UTC)
	rev, err := s.Write(ctx, nil, []store.Mutation{{Op: store.Touch, Rel: r}})
	if err != nil {
		t.Fatal(err)
	}
	for got, err := range s.Read(ctx, rev, rel.Filter{}, nil) {
		if err != nil {
			t.Fatal(err)
		}
		if want := r.Expiration.Truncate(time.Microsecond); !got.Expiration.Equal(want) {
			t.Fatalf("expiration read back as %v, want %v (microseconds)", got.Expiration, want)
		}
	}
}

// proxy forwards TCP connections to PostgreSQL until stopped, so a test
// can cut the store off from its database and reconnect it.
type proxy struct {
	t      *testing.T
	addr   string
	target string
	mu     sync.Mutex
	ln     net.Listener
	conns  []net.Conn
}

func startProxy(t *testing.T, target string) *proxy {
	p := &proxy{t: t, target: target}
	p.listen("127.0.0.1:0")
	t.Cleanup(p.stop)
	return p
}

func (p *proxy) listen(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		p.t.Fatal(err)
	}
	p.mu.Lock()
	p.ln, p.addr = ln, ln.Addr().String()
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			go func() { io.Copy(up, c); up.Close() }()
			go func() { io.Copy(c, up); c.Close() }()
		}
	}()
}

// stop refuses new connections and cuts every open one.
func (p *proxy) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// TestDatabaseLoss cuts the store off from PostgreSQL: a waiting Watch
// ends with an error instead of hanging, writes fail, and once the
// database is reachable again the same store works without reopening.
func TestDatabaseLoss(t *testing.T) {
	ctx := t.Context()
	uri := pgtest.URL(t)
	if _, err := postgres.Migrate(ctx, newPool(t, uri)); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgxpool.ParseConfig(uri)
	if err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, fmt.Sprintf("%s:%d", cfg.ConnConfig.Host, cfg.ConnConfig.Port))
	proxied := strings.Replace(uri, fmt.Sprintf("%s:%d", cfg.ConnConfig.Host, cfg.ConnConfig.Port), p.addr, 1)
	s := openAt(t, proxied, postgres.Options{PollInterval: 50 * time.Millisecond})
	if _, err := s.WriteSchema(ctx, testSchema); err != nil {
		t.Fatal(err)
	}
	head, _ := s.Head(ctx)
	watchErr := make(chan error, 1)
	seen := make(chan store.Revision, 10)
	go func() {
		for ch, err := range s.Watch(ctx, head) {
			if err != nil {
				watchErr <- err
				return
			}
			seen <- ch.Revision
		}
		watchErr <- nil
	}()
	rev, err := s.Write(ctx, nil, touch(t, "doc:1#owner@user:ann"))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-seen:
		if got != rev {
			t.Fatalf("Watch saw %d, want %d", got, rev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Watch did not see a write within 5s")
	}

	p.stop()
	select {
	case err := <-watchErr:
		if err == nil {
			t.Fatal("Watch ended without an error when the database went away")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Watch still waiting 10s after the database went away")
	}
	if _, err := s.Write(ctx, nil, touch(t, "doc:2#owner@user:bob")); err == nil {
		t.Fatal("Write succeeded with the database unreachable")
	}

	p.listen(p.addr)
	var again store.Revision
	for deadline := time.Now().Add(10 * time.Second); ; {
		if again, err = s.Write(ctx, nil, touch(t, "doc:2#owner@user:bob")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Write still failing 10s after the database came back: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if again != rev+1 {
		t.Fatalf("the write after reconnecting got revision %d, want %d: the failed write must not have taken one", again, rev+1)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for ch, err := range s.Watch(wctx, rev) {
		if err != nil {
			t.Fatalf("Watch after reconnecting: %v", err)
		}
		if ch.Revision != again {
			t.Fatalf("Watch after reconnecting saw %d, want %d", ch.Revision, again)
		}
		break
	}
}

// TestWatchCatchesUpInWindows watches from the start of more revisions
// than one poll reads (1,000): every one arrives, in order, once.
func TestWatchCatchesUpInWindows(t *testing.T) {
	ctx := t.Context()
	s := open(t, postgres.Options{})
	if _, err := s.WriteSchema(ctx, testSchema); err != nil {
		t.Fatal(err)
	}
	const writes = 1_050
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for g := range 4 {
		wg.Go(func() {
			for i := g; i < writes; i += 4 {
				var muts []store.Mutation
				if i%100 == 0 { // most writes change nothing, which is still a change
					muts = touch(t, fmt.Sprintf("doc:%d#owner@user:ann", i))
				}
				if _, err := s.Write(ctx, nil, muts); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	head, _ := s.Head(ctx)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	next, touched := store.Revision(1), 0
	for ch, err := range s.Watch(wctx, 0) {
		if err != nil {
			t.Fatalf("Watch: %v", err)
		}
		if ch.Revision != next {
			t.Fatalf("Watch yielded revision %d, want %d", ch.Revision, next)
		}
		touched += len(ch.Updates)
		if next == head {
			break
		}
		next++
	}
	if next != head || touched != (writes+99)/100 {
		t.Fatalf("Watch reached revision %d of %d with %d updates, want %d", next, head, touched, (writes+99)/100)
	}
}
