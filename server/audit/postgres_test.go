package audit_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/mandate-authz/mandate/server/audit"
)

// testPool connects to MANDATE_TEST_POSTGRES_URL and returns a pool and a
// fresh schema's table name, dropped when the test ends.
func testPool(t *testing.T) (*pgxpool.Pool, string) {
	t.Helper()
	url := os.Getenv("MANDATE_TEST_POSTGRES_URL")
	if url == "" {
		t.Skip("MANDATE_TEST_POSTGRES_URL is unset: skipping the PostgreSQL audit sink tests (e.g. postgres://postgres@127.0.0.1:5432/test?sslmode=disable)")
	}
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	var b [6]byte
	rand.Read(b[:])
	schema := "audit_test_" + hex.EncodeToString(b[:])
	t.Cleanup(func() {
		pool.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+schema+" CASCADE")
		pool.Close()
	})
	return pool, schema + ".trail"
}

func openPG(t *testing.T, pool *pgxpool.Pool, table, chain string) *audit.Log {
	t.Helper()
	sink, err := audit.OpenPostgresSink(ctx(t), pool, audit.PostgresOptions{Table: table, ChainID: chain})
	if err != nil {
		t.Fatal(err)
	}
	l, err := audit.New(ctx(t), audit.Options{Sink: sink, BatchSize: 3})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestPostgresSink(t *testing.T) {
	pool, table := testPool(t)
	trail := queryTrail()

	// Two servers, two chains in one table; the first restarts midway.
	a := openPG(t, pool, table, "node-a")
	b := openPG(t, pool, table, "node-b")
	if _, err := audit.OpenPostgresSink(ctx(t), pool, audit.PostgresOptions{Table: table, ChainID: "node-a"}); err == nil || !strings.Contains(err.Error(), "being written by another server") {
		t.Errorf("a second writer of chain node-a: %v", err)
	}
	for _, ev := range trail[:5] {
		a.Record(ctx(t), ev)
	}
	b.Record(ctx(t), personEvent(50, "user:bob", audit.Allowed))
	b.Flush(ctx(t)) // written between node-a's two runs
	if err := a.Close(ctx(t)); err != nil {
		t.Fatal(err)
	}
	a = openPG(t, pool, table, "node-a")
	for _, ev := range trail[5:] {
		a.Record(ctx(t), ev)
	}
	if err := a.Flush(ctx(t)); err != nil {
		t.Fatal(err)
	}

	rep, err := audit.VerifyTable(ctx(t), pool, table)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || rep.Records != len(trail)+1 || rep.Heads["node-a"].Seq != uint64(len(trail)) || rep.Heads["node-b"].Seq != 1 {
		t.Fatalf("verify: %+v", rep)
	}

	// The Log's Query reads the table, with the same filters as files.
	p, err := a.Query(ctx(t), audit.Query{Principal: "user:alice", Limit: 4})
	if err != nil {
		t.Fatal(err)
	}
	if got := seqs(p.Events); !slices.Equal(got, []uint64{1, 2, 3, 4}) || p.Next == "" {
		t.Errorf("page 1: %v next %q", got, p.Next)
	}
	p, err = a.Query(ctx(t), audit.Query{Principal: "user:alice", Limit: 4, After: p.Next})
	if err != nil {
		t.Fatal(err)
	}
	if got := seqs(p.Events); !slices.Equal(got, []uint64{5, 6, 8}) || p.Next != "" {
		t.Errorf("page 2: %v next %q", got, p.Next)
	}
	for _, tc := range []struct {
		q    audit.Query
		want []uint64
	}{
		{audit.Query{Agent: "agent:a"}, []uint64{1, 2, 3, 4, 5, 6, 10}},
		{audit.Query{Agent: "agent:c"}, []uint64{9}},
		{audit.Query{Resource: "folder"}, []uint64{1, 7, 8}}, // node-b's folder:f50 first
		{audit.Query{Decisions: []audit.Decision{audit.Denied}}, []uint64{7, 9}},
		{audit.Query{Operations: []audit.Operation{audit.OpWriteRelationships}}, []uint64{10}},
		{audit.Query{Subject: "user:bob", Descending: true}, []uint64{7, 1}},
	} {
		p, err := audit.QueryTable(ctx(t), pool, table, tc.q)
		if err != nil {
			t.Fatal(err)
		}
		if got := seqs(p.Events); !slices.Equal(got, tc.want) {
			t.Errorf("%+v: got %v, want %v", tc.q, got, tc.want)
		}
	}
	a.Close(ctx(t))
	b.Close(ctx(t))

	// Tampering: edit a record, hide a row from queries, delete a row.
	for _, tc := range []struct {
		name, sql, want string
		seq             uint64
	}{
		{"edit a record", `UPDATE ` + table + ` SET record = replace(record, '"decision":"denied"', '"decision":"allowed"') WHERE chain_id = 'node-a' AND seq = 7`, "altered", 7},
		{"hide a row", `UPDATE ` + table + ` SET principal = '' WHERE chain_id = 'node-a' AND seq = 3`, "indexed columns disagree", 3},
		{"delete a row", `DELETE FROM ` + table + ` WHERE chain_id = 'node-a' AND seq = 4`, "record missing", 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tx, err := pool.Begin(ctx(t))
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(context.Background())
			if _, err := tx.Exec(ctx(t), tc.sql); err != nil {
				t.Fatal(err)
			}
			// Verify inside the transaction sees the tampering; rollback
			// restores the table for the next case.
			rep, err := audit.VerifyTable(ctx(t), tx, table)
			if err != nil {
				t.Fatal(err)
			}
			if rep.OK() || rep.Failure.At.Chain != "node-a" || rep.Failure.At.Seq != tc.seq || !strings.Contains(rep.Failure.Msg, tc.want) {
				t.Errorf("got %+v, want a failure at node-a seq %d mentioning %q", rep.Failure, tc.seq, tc.want)
			}
		})
	}
}
