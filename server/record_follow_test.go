package server_test

import (
	"context"
	"strings"
	"testing"
	"time"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/server/capability"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/memory"
	"google.golang.org/protobuf/types/known/durationpb"
)

// flakyRecords is a flakyStore that keeps records, which fail like its
// other calls while it is down.
type flakyRecords struct {
	*flakyStore
	rs store.RecordStore
}

func (f flakyRecords) ReadRecords(ctx context.Context, kind string) ([]store.Record, store.Revision, error) {
	if _, err := f.state(); err != nil {
		return nil, 0, err
	}
	return f.rs.ReadRecords(ctx, kind)
}

func (f flakyRecords) WriteRecords(ctx context.Context, muts []store.RecordMutation) (store.Revision, error) {
	if _, err := f.state(); err != nil {
		return 0, err
	}
	return f.rs.WriteRecords(ctx, muts)
}

// tokenReplicas serves one memory store from replica A (through a link a
// test can cut) and replica B, with the same capability keys, and Bob
// owning his calendar.
func tokenReplicas(t *testing.T, wait time.Duration) (mem *memory.Store, link *flakyStore, a, b *replica) {
	t.Helper()
	key, err := capability.GenerateKey("k-replicas", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	keys, err := capability.NewKeySet(key)
	if err != nil {
		t.Fatal(err)
	}
	mem = memory.New()
	t.Cleanup(func() { mem.Close() })
	link = newFlakyStore(mem)
	a = startReplica(t, "A", flakyRecords{link, mem}, "shared-memory", func(c *server.Config) {
		c.CapabilityKeys, c.MaxRevisionWait = keys, wait
	})
	b = startReplica(t, "B", mem, "shared-memory", func(c *server.Config) { c.CapabilityKeys = keys })
	b.writeSchema(calendarSchema)
	b.write(update(create, mustParse(t, "calendar:bob#owner@user:bob")...)...)
	return mem, link, a, b
}

func (r *replica) mint(holder string) *pb.MintResponse {
	r.t.Helper()
	resp, err := pb.NewTokenServiceClient(r.conn).Mint(callCtx(r.t), &pb.MintRequest{
		Holder: obj("agent", holder), OnBehalfOf: obj("user", "bob"), Ttl: durationpb.New(time.Hour),
		Rights: []*pb.TokenRight{{ResourceType: "calendar", ResourceId: "bob", Permissions: []string{"read"}}},
	})
	if err != nil {
		r.t.Fatalf("%s: Mint: %v", r.name, err)
	}
	return resp
}

func (r *replica) revoke(req *pb.RevokeRequest) string {
	r.t.Helper()
	resp, err := pb.NewTokenServiceClient(r.conn).Revoke(callCtx(r.t), req)
	if err != nil {
		r.t.Fatalf("%s: Revoke: %v", r.name, err)
	}
	return resp.GetRevokedAt().GetToken()
}

// tokenCheck checks calendar:bob#read for agent:a with tok.
func (r *replica) tokenCheck(c *pb.Consistency, tok string) (*pb.CheckResponse, error) {
	return r.perm.Check(callCtx(r.t), &pb.CheckRequest{Consistency: c, Resource: obj("calendar", "bob"),
		Permission: "read", Subject: subj("agent", "a"), CapabilityToken: tok})
}

func (r *replica) wantTokenDecision(c *pb.Consistency, tok string, want pb.Decision, reason capability.Reason) {
	r.t.Helper()
	resp, err := r.tokenCheck(c, tok)
	if err != nil {
		r.t.Fatalf("%s: check with the token: %v", r.name, err)
	}
	if resp.GetDecision() != want || (reason != "" && resp.GetToken().GetReason() != string(reason)) {
		r.t.Fatalf("%s: check with the token = %v (reason %q), want %v (reason %q); log:\n%s",
			r.name, resp.GetDecision(), resp.GetToken().GetReason(), want, reason, r.logs.String())
	}
}

// A revocation written on one replica reaches the other through the one
// follower: a check there at least as fresh as the revocation is denied.
func TestRevocationReachesAnotherReplica(t *testing.T) {
	_, _, a, b := tokenReplicas(t, 30*time.Second)
	minted := a.mint("a")
	b.wantTokenDecision(fullyConsistent(), minted.GetToken(), pb.Decision_DECISION_ALLOWED, "")
	revoked := a.revoke(&pb.RevokeRequest{Target: &pb.RevokeRequest_TokenId{TokenId: minted.GetTokenId()}})
	b.wantTokenDecision(fresh(revoked), minted.GetToken(), pb.Decision_DECISION_DENIED, capability.ReasonRevoked)
}

// When the store has forgotten the changes a cut-off replica missed, its
// follower reloads the record sets with the engine's snapshot: the
// revocation written meanwhile is in force there, and later ones follow.
func TestFollowerRestartReloadsRecordSets(t *testing.T) {
	mem, link, a, b := tokenReplicas(t, 30*time.Second)
	first, second := b.mint("a"), b.mint("a")
	a.wantTokenDecision(fullyConsistent(), first.GetToken(), pb.Decision_DECISION_ALLOWED, "")

	link.setDown(true)
	a.waitReady(false, 20*time.Second)
	revoked := b.revoke(&pb.RevokeRequest{Target: &pb.RevokeRequest_TokenId{TokenId: first.GetTokenId()}})
	head, err := mem.Head(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := mem.ForgetBefore(context.Background(), head); err != nil {
		t.Fatal(err)
	}
	link.setDown(false)
	a.waitReady(true, 30*time.Second)
	a.wantTokenDecision(fresh(revoked), first.GetToken(), pb.Decision_DECISION_DENIED, capability.ReasonRevoked)
	a.wantTokenDecision(fresh(revoked), second.GetToken(), pb.Decision_DECISION_ALLOWED, "")
	if !strings.Contains(a.logs.String(), "reloading a snapshot") {
		t.Errorf("no reload was logged; log:\n%s", a.logs.String())
	}
	again := b.revoke(&pb.RevokeRequest{Target: &pb.RevokeRequest_TokenId{TokenId: second.GetTokenId()}})
	a.wantTokenDecision(fresh(again), second.GetToken(), pb.Decision_DECISION_DENIED, capability.ReasonRevoked)
}

// A revocation record the set cannot read stops the set: checks with a
// token then deny (the revocations never catch up), never allow, while
// checks without one are answered as before. Once the record is fixed the
// set is read again and tokens work.
func TestFailingRecordSetFailsClosed(t *testing.T) {
	const wait = 300 * time.Millisecond
	mem, _, a, b := tokenReplicas(t, wait)
	minted := b.mint("a")
	a.wantTokenDecision(fullyConsistent(), minted.GetToken(), pb.Decision_DECISION_ALLOWED, "")

	bad := store.Record{Kind: capability.RevocationKind, ID: "token:" + minted.GetTokenId(), Data: []byte("not json")}
	rev, err := mem.WriteRecords(context.Background(), []store.RecordMutation{{Op: store.Touch, Record: bad}})
	if err != nil {
		t.Fatal(err)
	}
	after := b.write(update(touch, mustParse(t, "calendar:ann#owner@user:ann")...)...)
	if rev == 0 {
		t.Fatal("no revision")
	}
	a.wantTokenDecision(fresh(after), minted.GetToken(), pb.Decision_DECISION_DENIED, capability.ReasonRevocationsBehind)
	if !strings.Contains(a.logs.String(), "a record set failed") {
		t.Errorf("the failed set was not logged; log:\n%s", a.logs.String())
	}
	if d := a.mustCheckPerm(fresh(after), "calendar:ann", "read", "user:ann"); d != pb.Decision_DECISION_ALLOWED {
		t.Fatalf("a check without a token on the replica with the failed set: %v", d)
	}

	if _, err := mem.WriteRecords(context.Background(), []store.RecordMutation{{Op: store.Delete, Record: bad}}); err != nil {
		t.Fatal(err)
	}
	fixed := b.write(update(touch, mustParse(t, "calendar:carl#owner@user:carl")...)...)
	a.wantTokenDecision(fresh(fixed), minted.GetToken(), pb.Decision_DECISION_ALLOWED, "")
}

func (r *replica) mustCheckPerm(c *pb.Consistency, res, perm, sub string) pb.Decision {
	r.t.Helper()
	rt, rid, _ := strings.Cut(res, ":")
	st, sid, _ := strings.Cut(sub, ":")
	resp, err := r.perm.Check(callCtx(r.t), &pb.CheckRequest{Consistency: c, Resource: obj(rt, rid), Permission: perm, Subject: subj(st, sid)})
	if err != nil {
		r.t.Fatalf("%s: Check: %v", r.name, err)
	}
	return resp.GetDecision()
}
