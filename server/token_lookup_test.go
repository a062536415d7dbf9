package server_test

import (
	"errors"
	"io"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/server/audit"
	"github.com/mandate-authz/mandate/server/capability"
	"github.com/mandate-authz/mandate/store/rel"
)

// LookupResources with a capability token lists the resources the token's
// rights cover that its principal holds now, at the request's consistency:
// narrowed by attenuation, paged without stopping early on a page the
// token filtered out, emptied by a revocation at its revision and by the
// principal losing access.
func TestLookupResourcesWithToken(t *testing.T) {
	key, err := capability.GenerateKey("k-lookup", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	keys, err := capability.NewKeySet(key)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	ts := startServer(t, func(c *server.Config) { c.CapabilityKeys, c.Audit = keys, rec })
	ts.writeSchema(calendarSchema)
	ts.write(update(create, mustParse(t, "calendar:bob#owner@user:bob", "calendar:team#owner@user:bob",
		"calendar:work#owner@user:bob", "calendar:ann#owner@user:ann")...)...)
	ctx := ts.ctx()
	tokens := pb.NewTokenServiceClient(ts.conn)
	mint := func(rights ...*pb.TokenRight) string {
		t.Helper()
		m, err := tokens.Mint(ctx, &pb.MintRequest{Holder: obj("agent", "a"), OnBehalfOf: obj("user", "bob"), Rights: rights, Ttl: durationpb.New(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		return m.GetToken()
	}
	read := func(id string) *pb.TokenRight {
		return &pb.TokenRight{ResourceType: "calendar", ResourceId: id, Permissions: []string{"read"}}
	}
	everyCalendar := mint(read("*"))
	bobAndTeam := mint(read("bob"), read("team"))
	parent, err := capability.Inspect(everyCalendar)
	if err != nil {
		t.Fatal(err)
	}
	narrowed, err := capability.Attenuate(parent, capability.Narrowing{Holder: &rel.Object{Type: "agent", ID: "b"},
		Rights: []capability.Right{{Type: "calendar", ID: "bob", Permissions: []string{"read"}}, {Type: "calendar", ID: "work", Permissions: []string{"read"}}}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	subToken, err := narrowed.Encode()
	if err != nil {
		t.Fatal(err)
	}

	// lookup pages through every result with limit (0: one page).
	lookup := func(tok, holder string, limit uint32, cons *pb.Consistency) []string {
		t.Helper()
		var ids []string
		var cursor *pb.Cursor
		for range 10 {
			stream, err := ts.perm.LookupResources(ctx, &pb.LookupResourcesRequest{ResourceObjectType: "calendar", Permission: "read",
				Subject: subj("agent", holder), CapabilityToken: tok, OptionalLimit: limit, OptionalCursor: cursor, Consistency: cons})
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for {
				r, err := stream.Recv()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatalf("LookupResources: %v", err)
				}
				ids, cursor, n = append(ids, r.GetResourceObjectId()), r.GetAfterResultCursor(), n+1
			}
			if limit == 0 || n < int(limit) {
				return ids
			}
		}
		t.Fatal("paging did not end")
		return nil
	}
	for _, c := range []struct {
		name, tok, holder string
		limit             uint32
		want              []string
	}{
		{"a type-wide right: every calendar bob holds", everyCalendar, "a", 0, []string{"bob", "team", "work"}},
		{"object rights: only those", bobAndTeam, "a", 0, []string{"bob", "team"}},
		{"attenuated, used by the sub-agent", subToken, "b", 0, []string{"bob", "work"}},
		{"attenuated, paged by one past a calendar the token leaves out", subToken, "b", 1, []string{"bob", "work"}},
		{"used by someone other than its holder: nothing", subToken, "a", 0, nil},
	} {
		if got := lookup(c.tok, c.holder, c.limit, nil); !slices.Equal(got, c.want) {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
	evs := rec.take()
	last := evs[len(evs)-1]
	if last.Operation != audit.OpLookupResources || last.TokenID != narrowed.ID() || last.Reason != string(capability.ReasonWrongHolder) || last.Count != 0 {
		t.Fatalf("token lookup event %+v", last)
	}

	// Bob loses the work calendar: gone at once.
	lost := ts.write(update(del, mustParse(t, "calendar:work#owner@user:bob")...)...)
	if got := lookup(subToken, "b", 0, fresh(lost)); !slices.Equal(got, []string{"bob"}) {
		t.Errorf("after bob lost calendar:work: %v", got)
	}
	revoked, err := tokens.Revoke(ctx, &pb.RevokeRequest{Target: &pb.RevokeRequest_Token{Token: everyCalendar}})
	if err != nil {
		t.Fatal(err)
	}
	if got := lookup(subToken, "b", 0, fresh(revoked.GetRevokedAt().GetToken())); len(got) != 0 {
		t.Errorf("after revoking the parent, the sub-token lists %v", got)
	}
	if got := lookup(bobAndTeam, "a", 0, fresh(revoked.GetRevokedAt().GetToken())); !slices.Equal(got, []string{"bob", "team"}) {
		t.Errorf("another token of bob's after the revocation: %v", got)
	}

	stream, err := ts.perm.LookupResources(ctx, &pb.LookupResourcesRequest{ResourceObjectType: "calendar", Permission: "read",
		Subject: subj("agent", "a"), CapabilityToken: bobAndTeam, OnBehalfOf: obj("user", "bob")})
	if err == nil {
		_, err = stream.Recv()
	}
	wantCode(t, err, codes.InvalidArgument, "on_behalf_of")
}
