// Package pgtest gives tests a private PostgreSQL schema: a fresh,
// uniquely named schema in the database of MANDATE_TEST_POSTGRES_URL,
// dropped when the test ends, and a connection string whose search_path
// selects it. Tests sharing one database concurrently never see each
// other's tables.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvVar names the environment variable holding the test database's URL.
const EnvVar = "MANDATE_TEST_POSTGRES_URL"

// URL returns a connection string for a new empty schema, skipping the
// test when EnvVar is unset. The schema is dropped in t.Cleanup, so it must
// be called before opening anything that Cleanup should close first.
func URL(t testing.TB) string {
	t.Helper()
	base := Require(t)
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	name := "mandate_test_" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	exec(ctx, t, base, "CREATE SCHEMA "+pgx.Identifier{name}.Sanitize())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		exec(ctx, t, base, "DROP SCHEMA "+pgx.Identifier{name}.Sanitize()+" CASCADE")
	})
	return WithSearchPath(t, base, name)
}

// Require returns the test database's URL, skipping t when EnvVar is unset.
// A test that hands a parent *testing.T to URL from inside a subtest must
// call Require on the parent first: a skip must come from the test it
// stops, never from a subtest on its parent's behalf.
func Require(t testing.TB) string {
	t.Helper()
	base := os.Getenv(EnvVar)
	if base == "" {
		t.Skipf("%s is not set; set it to a PostgreSQL URL such as postgres://postgres@127.0.0.1:5432/test?sslmode=disable to run this test", EnvVar)
	}
	return base
}

// WithSearchPath returns the connection string base with its search_path
// set to schema.
func WithSearchPath(t testing.TB, base, schema string) string {
	t.Helper()
	if !strings.Contains(base, "://") {
		return base + " search_path=" + schema // keyword/value form
	}
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("%s: not a URL: %v", EnvVar, err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

func exec(ctx context.Context, t testing.TB, uri, sql string) {
	t.Helper()
	conn, err := pgx.Connect(ctx, uri)
	if err != nil {
		t.Fatalf("connecting to the test database (%s): %v", EnvVar, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}
