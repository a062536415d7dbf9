package mcpgateway

import (
	"context"
	"errors"
	"log/slog"
	"net/url"
	"testing"

	"google.golang.org/grpc"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/store/rel"
)

// fakeApprovals answers List with nothing and Request with err, or with
// a new pending request; it counts the requests filed.
type fakeApprovals struct {
	pb.ApprovalServiceClient
	err   error
	filed int
}

func (f *fakeApprovals) List(context.Context, *pb.ApprovalServiceListRequest, ...grpc.CallOption) (*pb.ApprovalServiceListResponse, error) {
	return &pb.ApprovalServiceListResponse{}, nil
}

func (f *fakeApprovals) Request(_ context.Context, r *pb.ApprovalServiceRequestRequest, _ ...grpc.CallOption) (*pb.ApprovalServiceRequestResponse, error) {
	if f.err != nil {
		return nil, f.err
	}
	f.filed++
	return &pb.ApprovalServiceRequestResponse{Approval: &pb.Approval{Id: "req-1", Status: pb.ApprovalStatus_APPROVAL_STATUS_PENDING}}, nil
}

// TestHeldFailsClosed: whatever happens while filing, a held call is
// refused: a filing error, or Mandate's request naming another agent or
// principal than the caller (never filed), leaves a denial without an
// elicitation to follow.
func TestHeldFailsClosed(t *testing.T) {
	caller := &Identity{Agent: rel.Object{Type: "agent", ID: "helper"}, Principal: rel.Object{Type: "user", ID: "alice"}}
	ref := func(typ, id string) *pb.ObjectReference { return &pb.ObjectReference{ObjectType: typ, ObjectId: id} }
	inbox, _ := url.Parse("https://mandate.example.com/ui/")
	for _, tc := range []struct {
		name             string
		err              error
		agent, principal *pb.ObjectReference
		wantCode, filed  int
	}{
		{"filed", nil, ref("agent", "helper"), ref("user", "alice"), CodeURLElicitationRequired, 1},
		{"filing fails", errors.New("unavailable"), ref("agent", "helper"), ref("user", "alice"), CodeDenied, 0},
		{"another agent", nil, ref("agent", "other"), ref("user", "alice"), CodeDenied, 0},
		{"another principal", nil, ref("agent", "helper"), ref("user", "bob"), CodeDenied, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := &fakeApprovals{err: tc.err}
			g := &Gateway{filer: &filer{client: fake, inbox: inbox}, log: slog.New(slog.DiscardHandler)}
			dec := Decision{Reason: ReasonApprovalRequired, Resource: "calendar:alice", Permission: "read", Rule: "r",
				hold: &pb.ApprovalContext{Rule: "r", Request: &pb.ApprovalServiceRequestRequest{
					Agent: tc.agent, Principal: tc.principal, Resource: ref("calendar", "alice"), Permission: "read"}}}
			denied := &rpcError{code: CodeDenied, message: "denied", data: denial{Reason: dec.Reason}}
			got := g.held(context.Background(), caller, dec, callInfo{method: "tools/call", name: "read_calendar"}, elicitation{url: true}, denied)
			if got.code != tc.wantCode || got.result != nil || fake.filed != tc.filed {
				t.Fatalf("code %d result %v filed %d, want code %d filed %d", got.code, got.result, fake.filed, tc.wantCode, tc.filed)
			}
			if tc.wantCode == CodeDenied {
				if ad := got.data.(denial).Approval; ad == nil || ad.RequestID != "" || ad.URL != "" || ad.FilingError == "" {
					t.Fatalf("denial's approval data %+v", ad)
				}
			}
		})
	}
}
