package postgres_test

import (
	"testing"

	"github.com/mandate-authz/mandate/store/postgres"
	"github.com/mandate-authz/mandate/store/storetest"
)

// BenchmarkPaging pages through 100,000 relationships with a read cursor
// (see storetest.BenchmarkPaging).
func BenchmarkPaging(b *testing.B) {
	storetest.BenchmarkPaging(b, open(b, postgres.Options{MaxConns: 4}))
}
