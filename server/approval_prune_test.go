package server_test

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/server/escalation"
)

// TestApprovalHistoryPruned: through a running server with a short request
// TTL and history retention, a filed request expires (the sweeper records
// it), stays visible as history, and is deleted once the retention has
// passed; a request filed later is untouched.
func TestApprovalHistoryPruned(t *testing.T) {
	rules, err := escalation.Parse("rules.yaml", []byte("rules:\n  - name: view-needs-consent\n    match:\n      permissions: [view]\n"))
	if err != nil {
		t.Fatal(err)
	}
	const ttl, retention = 300 * time.Millisecond, 700 * time.Millisecond
	ts := startServer(t, func(c *server.Config) {
		c.Escalation = escalation.New(rules, escalation.Options{})
		c.Approvals = server.ApprovalConfig{RequestTTL: ttl, HistoryRetention: retention, SweepInterval: 20 * time.Millisecond}
	})
	ts.writeSchema(testSchema)
	ts.write(update(touch, mustParse(t, "doc:1#owner@user:ann", "doc:1#viewer@agent:bot", "agent:bot#acts_for@user:ann")...)...)
	api := pb.NewApprovalServiceClient(ts.conn)
	file := func() string {
		t.Helper()
		r, err := api.Request(ts.ctx(), &pb.ApprovalServiceRequestRequest{Agent: obj("agent", "bot"), Principal: obj("user", "ann"), Resource: obj("doc", "1"), Permission: "view"})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetApproval().GetId()
	}
	get := func(id string) (pb.ApprovalStatus, codes.Code) {
		r, err := api.Get(ts.ctx(), &pb.ApprovalServiceGetRequest{Id: id})
		return r.GetApproval().GetStatus(), status.Code(err)
	}
	filed := time.Now() // before the server stamps the request
	old := file()
	// Expired and kept as history until the retention after its expiry.
	for ; ; time.Sleep(10 * time.Millisecond) {
		st, code := get(old)
		if code != codes.OK {
			t.Fatalf("the request went (%v) %s after filing, before its retention", code, time.Since(filed))
		}
		if st == pb.ApprovalStatus_APPROVAL_STATUS_EXPIRED {
			break
		}
	}
	l, err := api.List(ts.ctx(), &pb.ApprovalServiceListRequest{Filter: &pb.ApprovalFilter{Status: pb.ApprovalStatus_APPROVAL_STATUS_EXPIRED}})
	if err != nil || len(l.GetApprovals()) != 1 {
		t.Fatalf("history: %v %v", l, err)
	}
	if time.Since(filed) < ttl+retention-100*time.Millisecond {
		// Still inside the retention: visible.
		if _, code := get(old); code != codes.OK {
			t.Fatalf("pruned before its retention: %v", code)
		}
	}
	young := file()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, code := get(old); code == codes.NotFound {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the expired request was never pruned")
		}
	}
	if since := time.Since(filed); since < ttl+retention {
		t.Fatalf("pruned %s after filing, before its expiry plus retention (%s)", since, ttl+retention)
	}
	if st, code := get(young); code != codes.OK || st == pb.ApprovalStatus_APPROVAL_STATUS_UNSPECIFIED {
		t.Fatalf("the later request: %v %v", st, code)
	}
}
