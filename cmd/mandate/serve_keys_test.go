package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server/apikey"
)

// TestServeKeysFile serves with --keys-file only: a check-scoped key cannot
// write the schema until the file grants it the scope and SIGHUP reloads it.
func TestServeKeysFile(t *testing.T) {
	key, hash, err := apikey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "keys.yaml")
	write := func(scopes string) {
		if err := os.WriteFile(path, []byte("keys:\n  - {name: app, hash: "+hash+", scopes: ["+scopes+"]}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("check")
	t.Setenv("MANDATE_GRPC_PRESHARED_KEY", "")
	os.Unsetenv("MANDATE_GRPC_PRESHARED_KEY")
	logs := &syncBuffer{}
	root := newRootCommand()
	root.SetArgs([]string{"serve", "--keys-file", path, "--datastore-engine", "memory", "--audit-sink", "none",
		"--grpc-addr", "127.0.0.1:0", "--http-addr", "", "--grpc-shutdown-grace-period", "1s"})
	root.SetOut(logs)
	root.SetErr(logs)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	serving := regexp.MustCompile(`msg=serving grpc=(\S+)`)
	var addr string
	for deadline := time.Now().Add(20 * time.Second); addr == ""; time.Sleep(10 * time.Millisecond) {
		if m := serving.FindStringSubmatch(logs.String()); m != nil {
			addr = m[1]
		} else if time.Now().After(deadline) {
			t.Fatalf("serve did not start:\n%s", logs.String())
		}
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rctx, rcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer rcancel()
	authed := metadata.AppendToOutgoingContext(rctx, "authorization", "Bearer "+key)
	schema := pb.NewSchemaServiceClient(conn)
	_, err = schema.WriteSchema(authed, &pb.WriteSchemaRequest{Schema: "definition user {}"})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), `"schema" scope`) {
		t.Fatalf("WriteSchema with a check-only key: %v", err)
	}
	if _, err := schema.ReadSchema(authed, &pb.ReadSchemaRequest{}); status.Code(err) == codes.PermissionDenied || status.Code(err) == codes.Unauthenticated {
		t.Fatalf("ReadSchema with a check key: %v", err)
	}

	// Same size and, within the file system's time resolution, maybe the
	// same modification time: SIGHUP reloads regardless.
	write("check, schema")
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		_, err = schema.WriteSchema(authed, &pb.WriteSchemaRequest{Schema: "definition user {}"})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("WriteSchema after granting the scope and SIGHUP: %v\n%s", err, logs.String())
		}
	}
	if strings.Contains(logs.String(), key) {
		t.Error("the key appears in the log")
	}
}
