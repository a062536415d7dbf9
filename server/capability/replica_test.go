package capability

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/embedded"
	"github.com/mandate-authz/mandate/store/postgres"
	"github.com/mandate-authz/mandate/store/postgres/pgtest"
)

type recordingStore interface {
	store.Store
	store.RecordStore
}

func followInBackground(t *testing.T, src RevocationSource) *RevocationSet {
	t.Helper()
	set := NewRevocationSet()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = Follow(ctx, src, set) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	return set
}

// A revocation written through one PostgreSQL replica reaches another
// replica's set through the change stream, by the revocation's revision.
func TestRevocationReachesAnotherPostgresReplica(t *testing.T) {
	uri := pgtest.URL(t)
	open := func() recordingStore {
		s, err := postgres.Open(t.Context(), uri, postgres.Options{Migrate: true, MaxConns: 4})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	writer, other := open(), open()
	testRevocationReplication(t, writer, followInBackground(t, other))
}

// In the embedded store a revocation survives a restart.
func TestRevocationSurvivesEmbeddedRestart(t *testing.T) {
	dir := t.TempDir()
	s, err := embedded.Open(t.Context(), dir, embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	testRevocationReplication(t, s, followInBackground(t, s))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = embedded.Open(t.Context(), dir, embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	recs, at, err := s.ReadRecords(t.Context(), RevocationKind)
	if err != nil {
		t.Fatal(err)
	}
	set := NewRevocationSet()
	if err := set.Load(recs, at); err != nil {
		t.Fatal(err)
	}
	if got := set.List(); len(got) != 1 || got[0].By != RevokeHolder {
		t.Fatalf("after a restart: %+v, want the holder revocation", got)
	}
}

func testRevocationReplication(t *testing.T, writer recordingStore, replica *RevocationSet) {
	t.Helper()
	ctx := t.Context()
	keys := testKeys(t)
	tok, err := Mint(keys, bobRead, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	rev, err := Revoke(ctx, writer, Revocation{By: RevokeHolder, Value: "agent:a", Reason: "test", RevokedAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := replica.WaitFor(wctx, rev); err != nil {
		t.Fatalf("the replica did not reach the revocation's revision %d: %v", rev, err)
	}
	r, block, revoked := replica.Revoked(tok)
	if !revoked || block != 0 || r.Revision != rev || r.Reason != "test" {
		t.Fatalf("on the replica: %+v at block %d, revoked %v; want the holder revocation of revision %d", r, block, revoked, rev)
	}
}
