package server_test

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
)

// TestNewEnemy is Zanzibar's "new enemy" problem: after a write revokes
// access, a check at least as fresh as that write's token must never see the
// revoked access, however busy the server is with other writers. Several
// enemies grant and revoke their own access in a loop while noise writers
// keep the change stream busy; every check after a revoke must be denied,
// and every check after a grant allowed. Checks alternate between gRPC and
// REST.
func TestNewEnemy(t *testing.T) {
	ts := startServer(t, nil)
	ts.writeSchema(testSchema)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	rounds := 60
	if testing.Short() {
		rounds = 15
	}
	const enemies, noiseWriters = 4, 3

	stopNoise := make(chan struct{})
	var noise sync.WaitGroup
	var noiseWrites atomic.Int64
	for w := range noiseWriters {
		noise.Add(1)
		go func() {
			defer noise.Done()
			for i := 0; ; i++ {
				select {
				case <-stopNoise:
					return
				default:
				}
				r := mustParseRel(fmt.Sprintf("doc:noise%d#viewer@user:w%d_%d", i%50, w, i))
				op := touch
				if i%3 == 2 {
					op = del
				}
				if _, err := ts.rels.WriteRelationships(ctx, &pb.WriteRelationshipsRequest{Updates: update(op, r)}); err != nil {
					t.Errorf("noise write: %v", err)
					return
				}
				noiseWrites.Add(1)
			}
		}()
	}

	var wg sync.WaitGroup
	var violations atomic.Int64
	for e := range enemies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			grant := mustParseRel(fmt.Sprintf("doc:secret%d#viewer@user:enemy%d", e, e))
			for i := range rounds {
				viaREST := (i+e)%2 == 1
				for _, step := range []struct {
					op   pb.RelationshipUpdate_Operation
					want pb.Decision
				}{{touch, pb.Decision_DECISION_ALLOWED}, {del, pb.Decision_DECISION_DENIED}} {
					resp, err := ts.rels.WriteRelationships(ctx, &pb.WriteRelationshipsRequest{Updates: update(step.op, grant)})
					if err != nil {
						t.Errorf("enemy %d: write: %v", e, err)
						return
					}
					got, err := checkEither(ctx, ts, viaREST, resp.GetWrittenAt().GetToken(), fmt.Sprintf("secret%d", e), fmt.Sprintf("enemy%d", e))
					if err != nil {
						t.Errorf("enemy %d: check: %v", e, err)
						return
					}
					if got != step.want {
						violations.Add(1)
						t.Errorf("enemy %d round %d: after %v at its token, check = %v, want %v (rest=%v)", e, i, step.op, got, step.want, viaREST)
					}
				}
			}
		}()
	}
	wg.Wait()
	close(stopNoise)
	noise.Wait()
	if violations.Load() > 0 {
		t.Fatalf("%d checks saw stale data", violations.Load())
	}
	if noiseWrites.Load() == 0 {
		t.Fatal("the noise writers wrote nothing; the test did not run under concurrent writes")
	}
	t.Logf("%d enemies x %d rounds of grant+revoke, %d concurrent noise writes", enemies, rounds, noiseWrites.Load())
}

func mustParseRel(text string) *pb.Relationship {
	r, err := parseRel(text)
	if err != nil {
		panic(err)
	}
	return r
}

// checkEither checks doc:<doc>#view@user:<user> at_least_as_fresh token,
// over REST or gRPC.
func checkEither(ctx context.Context, ts *testServer, viaREST bool, token, doc, user string) (pb.Decision, error) {
	if !viaREST {
		resp, err := ts.perm.Check(ctx, &pb.CheckRequest{Consistency: fresh(token), Resource: obj("doc", doc), Permission: "view", Subject: subj("user", user)})
		return resp.GetDecision(), err
	}
	body := fmt.Sprintf(`{"consistency":{"atLeastAsFresh":{"token":%q}},"resource":{"objectType":"doc","objectId":%q},"permission":"view","subject":{"object":{"objectType":"user","objectId":%q}}}`, token, doc, user)
	code, out, err := restPost(ctx, ts.base+"/v1/permissions/check", body)
	if err != nil {
		return 0, err
	}
	if code != http.StatusOK {
		return 0, fmt.Errorf("HTTP %d: %v", code, out)
	}
	return pb.Decision(pb.Decision_value[fmt.Sprint(out["decision"])]), nil
}
