package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
)

// TestAuditRefusedCallsCannotFillTheDisk: callers without a key send
// checks with a 1 MiB context each (200 MiB in all). Each is refused before
// its body is read and recorded without what it asked, the trail stays within --audit-retention
// (4 KiB files, 16 KiB kept), and `mandate audit verify` still passes on
// the trail whose oldest files retention deleted.
func TestAuditRefusedCallsCannotFillTheDisk(t *testing.T) {
	as := startAuditServerWith(t, func(o *auditOptions) { o.maxFileSize, o.retention = "4KiB", "16KiB" })
	big, err := structpb.NewStruct(map[string]any{"blob": strings.Repeat("x", 1<<20)})
	if err != nil {
		t.Fatal(err)
	}
	perms := pb.NewPermissionServiceClient(dial(t, as.grpcAddr, "not-a-key"))
	const calls = 200
	for i := range calls {
		_, err := perms.Check(context.Background(), &pb.CheckRequest{
			Resource:   &pb.ObjectReference{ObjectType: "doc", ObjectId: strings.Repeat("r", 4096)},
			Permission: "view",
			Subject:    &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: "user", ObjectId: "mallory"}},
			Context:    big,
		}, grpc.MaxCallSendMsgSize(8<<20))
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("call %d without a key: %v, want Unauthenticated", i, err)
		}
	}
	as.stop()

	var total int64
	entries, err := os.ReadDir(as.dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".jsonl") {
			info, err := e.Info()
			if err != nil {
				t.Fatal(err)
			}
			total += info.Size()
		}
	}
	// Retention's bound plus the file being written.
	if total > 16<<10+4<<10 {
		t.Errorf("the trail holds %d bytes after %d refused 1 MiB calls; retention bound 16 KiB + one 4 KiB file", total, calls)
	}
	if _, err := os.Stat(filepath.Join(as.dir, "audit-00000000000000000001.jsonl")); !os.IsNotExist(err) {
		t.Errorf("the first trail file is still there: retention deleted nothing (%v)", err)
	}
	out := mustCLI(t, "audit", "verify", as.dir)
	if !strings.Contains(out, "OK: ") || !strings.Contains(out, "deleted by retention") {
		t.Fatalf("verify of a trail with a deleted prefix:\n%s", out)
	}
	data, err := os.ReadFile(filepath.Join(as.dir, lastTrailFile(t, as.dir)))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), `"context"`) || strings.Contains(string(data), "xxxxxxxx") || strings.Contains(string(data), "rrrrrrrr") {
		t.Error("what a refused call asked reached the trail")
	}
	if !strings.Contains(string(data), `"code":"Unauthenticated"`) || !strings.Contains(string(data), `"operation":"check"`) {
		t.Errorf("the refused calls are not in the trail:\n%.2000s", data)
	}
}

func lastTrailFile(t *testing.T, dir string) string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	last := ""
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "audit-") && strings.HasSuffix(e.Name(), ".jsonl") && e.Name() > last {
			last = e.Name()
		}
	}
	return last
}
