package audit_test

import (
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/mandate-authz/mandate/server/audit"
)

func openPGRetention(t *testing.T, pool *pgxpool.Pool, table, chain string, r audit.Retention) *audit.Log {
	t.Helper()
	sink, err := audit.OpenPostgresSink(ctx(t), pool, audit.PostgresOptions{Table: table, ChainID: chain})
	if err != nil {
		t.Fatal(err)
	}
	sink.SetRetention(r)
	l, err := audit.New(ctx(t), audit.Options{Sink: sink, Buffer: 16, BatchSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// chainSize is a chain's rows and record bytes in the table.
func chainSize(t *testing.T, pool *pgxpool.Pool, table, chain string) (rows, bytes, first int64) {
	t.Helper()
	if err := pool.QueryRow(ctx(t), `SELECT count(*), coalesce(sum(octet_length(record)), 0), coalesce(min(seq), 0) FROM `+table+` WHERE chain_id = $1`, chain).
		Scan(&rows, &bytes, &first); err != nil {
		t.Fatal(err)
	}
	return rows, bytes, first
}

// TestPostgresRetentionBySize: a chain written far past its size bound is
// kept within it, another server's chain in the same table is untouched,
// and the table still verifies, reporting where the chain now starts; a
// row deleted by hand past the retention's is still caught.
func TestPostgresRetentionBySize(t *testing.T) {
	pool, table := testPool(t)
	other := openPG(t, pool, table, "node-b")
	for i := range 20 {
		other.Record(ctx(t), personEvent(i, "user:bob", audit.Allowed))
	}
	if err := other.Close(ctx(t)); err != nil {
		t.Fatal(err)
	}
	const bound = 16 << 10
	l := openPGRetention(t, pool, table, "node-a", audit.Retention{MaxBytes: bound})
	for i := range 300 {
		if err := l.Record(ctx(t), checkEvent(i)); err != nil {
			t.Fatal(err)
		}
		if i%10 == 0 {
			if err := l.Flush(ctx(t)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := l.Close(ctx(t)); err != nil {
		t.Fatal(err)
	}
	rows, bytes, first := chainSize(t, pool, table, "node-a")
	// The bound, plus what was written after the last prune (a batch and
	// its retention record).
	if bytes > bound+8<<10 || first < 2 {
		t.Errorf("chain node-a holds %d rows, %d bytes from seq %d; bound %d bytes, retention should have deleted its start", rows, bytes, first, bound)
	}
	if rows, _, first := chainSize(t, pool, table, "node-b"); rows != 20 || first != 1 {
		t.Errorf("retention of node-a touched node-b: %d rows from seq %d, want 20 from 1", rows, first)
	}
	rep, err := audit.VerifyTable(ctx(t), pool, table)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		t.Fatalf("a table whose chain retention shortened does not verify: %v", rep.Failure)
	}
	if len(rep.Warnings) == 0 || !strings.Contains(rep.Warnings[len(rep.Warnings)-1].Msg, "deleted by retention") {
		t.Errorf("verify does not say the prefix was deleted by retention: %v", rep.Warnings)
	}

	if _, err := pool.Exec(ctx(t), `DELETE FROM `+table+` WHERE chain_id = 'node-a' AND seq = $1`, first); err != nil {
		t.Fatal(err)
	}
	if rep, err := audit.VerifyTable(ctx(t), pool, table); err != nil || rep.OK() || !strings.Contains(rep.Failure.Msg, "no audit_retention record") {
		t.Fatalf("a row deleted by hand past retention verified: %+v %v", rep.Failure, err)
	}
}

// TestPostgresRetentionByAge: records older than the retention go at the
// first check (at startup), except the chain's head, which the next record
// follows; the recent ones stay, and the chain verifies.
func TestPostgresRetentionByAge(t *testing.T) {
	pool, table := testPool(t)
	old := openPG(t, pool, table, "node-a")
	for i := range 30 {
		ev := checkEvent(i)
		ev.Time = time.Now().Add(-48 * time.Hour)
		old.Record(ctx(t), ev)
	}
	if err := old.Close(ctx(t)); err != nil {
		t.Fatal(err)
	}
	l := openPGRetention(t, pool, table, "node-a", audit.Retention{MaxAge: 24 * time.Hour})
	for i := range 5 {
		ev := checkEvent(100 + i)
		ev.Time = time.Time{} // now
		l.Record(ctx(t), ev)
	}
	if err := l.Close(ctx(t)); err != nil {
		t.Fatal(err)
	}
	var oldRows int64
	if err := pool.QueryRow(ctx(t), `SELECT count(*) FROM `+table+` WHERE time < now() - interval '24 hours'`).Scan(&oldRows); err != nil {
		t.Fatal(err)
	}
	rows, _, first := chainSize(t, pool, table, "node-a")
	if oldRows != 1 || first != 30 || rows != 7 {
		t.Errorf("after age retention: %d old rows left, %d rows from seq %d; want the old head, the retention record and 5 recent from 30", oldRows, rows, first)
	}
	if rep, err := audit.VerifyTable(ctx(t), pool, table); err != nil || !rep.OK() {
		t.Fatalf("verify after age retention: %+v %v", rep.Failure, err)
	}
}
