package postgres

import (
	"strings"
	"testing"
)

// No CockroachDB server runs in these tests, so what can be checked
// without one is checked here: its migrations exist for every version and
// differ from PostgreSQL's only where the dialect says they should.
func TestCockroachDBMigrationsTrackPostgres(t *testing.T) {
	pg, err := loadMigrations(postgresDialect)
	if err != nil {
		t.Fatal(err)
	}
	crdb, err := loadMigrations(cockroachDBDialect)
	if err != nil {
		t.Fatal(err)
	}
	if len(pg) != len(crdb) {
		t.Fatalf("%d PostgreSQL migrations, %d CockroachDB ones", len(pg), len(crdb))
	}
	// Statements only: comments may differ.
	statements := func(sql string) string {
		var out []string
		for _, line := range strings.Split(sql, "\n") {
			if i := strings.Index(line, "--"); i >= 0 {
				line = line[:i]
			}
			if line = strings.TrimSpace(line); line != "" {
				out = append(out, line)
			}
		}
		return strings.Join(out, "\n")
	}
	for i := range pg {
		if pg[i].Migration != crdb[i].Migration {
			t.Fatalf("migration %d: PostgreSQL %s, CockroachDB %s", i+1, pg[i].Migration, crdb[i].Migration)
		}
		want := strings.ReplaceAll(statements(pg[i].sql), postgresDialect.collate, "")
		if got := statements(crdb[i].sql); got != want {
			t.Errorf("CockroachDB migration %s differs from PostgreSQL's beyond COLLATE:\n%s\nwant\n%s", crdb[i].Migration, got, want)
		}
	}
	if LatestVersion() != pg[len(pg)-1].Version {
		t.Fatalf("LatestVersion = %d, want %d", LatestVersion(), pg[len(pg)-1].Version)
	}
}

func TestDialectStatements(t *testing.T) {
	cases := []struct {
		d    dialect
		want string
	}{
		{postgresDialect, "DELETE FROM t WHERE ctid = ANY(ARRAY(SELECT ctid FROM t WHERE a <= $1 LIMIT 5))"},
		{cockroachDBDialect, "DELETE FROM t WHERE a <= $1 LIMIT 5"},
	}
	for _, c := range cases {
		if got := c.d.deleteLimited("t", "a <= $1", 5); got != c.want {
			t.Errorf("%s: deleteLimited = %q, want %q", c.d.engine, got, c.want)
		}
	}
	if cockroachDBDialect.notify || cockroachDBDialect.advisoryLock || cockroachDBDialect.copy || !cockroachDBDialect.crdb() {
		t.Error("the CockroachDB dialect uses a PostgreSQL-only feature")
	}
}
