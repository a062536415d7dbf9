package postgres_test

import (
	"testing"

	"github.com/mandate-authz/mandate/store/postgres"
	"github.com/mandate-authz/mandate/store/postgres/pgtest"
	"github.com/mandate-authz/mandate/store/storetest"
)

func TestRecordsConformance(t *testing.T) {
	storetest.RunRecords(t, func(t *testing.T) storetest.RecordingStore {
		return openAt(t, pgtest.URL(t), postgres.Options{})
	})
}
