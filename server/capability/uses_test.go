package capability

import (
	"sync"
	"sync/atomic"
	"testing"
)

// Two replicas sharing a store never allow more uses than the limit
// together, however their checks interleave.
func TestStoreUsesHoldAcrossReplicas(t *testing.T) {
	f := newFixture(t, "calendar:bob#owner@user:bob")
	g := bobRead
	g.MaxUses = 5
	tok := f.mint(g)
	replicas := []*Checker{
		{Keys: f.keys, Verifier: NewVerifier(f.keys, VerifierOptions{}), Revocations: f.c.Revocations, Uses: &StoreUses{Records: f.st}},
		{Keys: f.keys, Verifier: NewVerifier(f.keys, VerifierOptions{}), Revocations: f.c.Revocations, Uses: &StoreUses{Records: f.st}},
	}
	var allowed, exhausted atomic.Int32
	var wg sync.WaitGroup
	for i := range 12 {
		wg.Go(func() {
			d, err := replicas[i%2].Check(f.ctx, ForEngine(f.eng), CheckRequest{Token: tok, Resource: obj("calendar:bob"), Permission: "read", Subject: obj("agent:a")})
			switch {
			case err != nil:
				t.Error(err)
			case d.Allowed:
				allowed.Add(1)
			case d.Reason == ReasonUsesExhausted:
				exhausted.Add(1)
			default:
				t.Errorf("unexpected decision %+v", d)
			}
		})
	}
	wg.Wait()
	if allowed.Load() != 5 || exhausted.Load() != 7 {
		t.Fatalf("%d allowed, %d exhausted; want 5 and 7", allowed.Load(), exhausted.Load())
	}
}
