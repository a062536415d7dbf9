package server_test

import (
	"testing"
	"time"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"github.com/authzed/authzed-go/v1"
	"github.com/authzed/grpcutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/store/memory"
)

// TestCheckRightAfterSchemaWrite: a check without a token (minimize
// latency) right after the schema's first write answers from the schema,
// on the server that wrote it and on another server of the same store,
// even when their engines apply changes late; it said "no schema has been
// written".
func TestCheckRightAfterSchemaWrite(t *testing.T) {
	for _, api := range []string{"mandate.v1", "authzed.api.v1"} {
		t.Run(api, func(t *testing.T) {
			st := memory.New()
			t.Cleanup(func() { st.Close() })
			const lag = 300 * time.Millisecond
			a := startReplica(t, "A", lagging{st, lag}, "memory:shared", nil)
			b := startReplica(t, "B", lagging{st, lag}, "memory:shared", nil)
			a.writeSchema(testSchema)
			for _, r := range []*replica{a, b} {
				var err error
				switch api {
				case "mandate.v1":
					_, err = r.check(minimizeLatency(), "doc:readme", "user:ann")
				default:
					c, cerr := authzed.NewClient(r.srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()), grpcutil.WithInsecureBearerToken(testKey))
					if cerr != nil {
						t.Fatal(cerr)
					}
					t.Cleanup(func() { c.Close() })
					_, err = c.CheckPermission(callCtx(t), &v1.CheckPermissionRequest{Resource: zres("doc:readme"), Permission: "view", Subject: zsubj("user:ann")})
				}
				if err != nil {
					t.Errorf("%s: check right after the schema write: %v", r.name, err)
				}
			}
			_ = pb.Decision_DECISION_DENIED
		})
	}
}
