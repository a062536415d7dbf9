package main

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
)

func TestApplyEnv(t *testing.T) {
	env := map[string]string{
		"MANDATE_GRPC_PRESHARED_KEY":   "k1,k2",
		"MANDATE_GRPC_ADDR":            "127.0.0.1:1234",
		"MANDATE_MAX_CHECK_BULK_ITEMS": "7",
		"MANDATE_REQUEST_TIMEOUT":      "3s",
		"MANDATE_HTTP_ADDR":            "from-env:1",
		"MANDATE_DATA_DIR":             "/srv/mandate",
	}
	cmd := newServeCommand()
	if err := cmd.Flags().Parse([]string{"--http-addr", "from-flag:2"}); err != nil {
		t.Fatal(err)
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	if err := applyEnv(cmd.Flags(), lookup); err != nil {
		t.Fatal(err)
	}
	get := func(name string) string { return cmd.Flags().Lookup(name).Value.String() }
	for flag, want := range map[string]string{
		"grpc-preshared-key":   "[k1,k2]",
		"grpc-addr":            "127.0.0.1:1234",
		"max-check-bulk-items": "7",
		"request-timeout":      "3s",
		"http-addr":            "from-flag:2", // the command line wins
		"datastore-engine":     "embedded",
		"data-dir":             "/srv/mandate",
	} {
		if got := get(flag); got != want {
			t.Errorf("--%s = %q, want %q", flag, got, want)
		}
	}

	bad := newServeCommand()
	err := applyEnv(bad.Flags(), func(k string) (string, bool) {
		if k == "MANDATE_MAX_CHECK_BULK_ITEMS" {
			return "secret-looking", true
		}
		return "", false
	})
	if err == nil || !strings.Contains(err.Error(), "MANDATE_MAX_CHECK_BULK_ITEMS") || strings.Contains(err.Error(), "secret-looking") {
		t.Errorf("bad env value: %v (must name the variable, not echo the value)", err)
	}
}

func TestServeErrors(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", ""}, "preshared key is required"},
		{[]string{"serve", "--grpc-preshared-key", "k", "--datastore-engine", "oracle"}, `unknown engine; available: embedded`},
		{[]string{"serve", "--grpc-preshared-key", "k", "--datastore-conn-uri", "postgres://x"}, "not used by the embedded datastore"},
		{[]string{"serve", "--grpc-preshared-key", "k", "--datastore-engine", "memory", "--datastore-conn-uri", "postgres://x"}, "not used by the memory datastore"},
		{[]string{"serve", "--grpc-preshared-key", "k", "--log-level", "loud"}, "--log-level"},
		{[]string{"serve", "--grpc-preshared-key", "k", "--datastore-engine", "memory", "--max-revision-wait", "-1s"}, "--max-revision-wait"},
		{[]string{"serve", "--grpc-preshared-key", "k", "--datastore-engine", "memory", "--approval-history-retention", "0s"}, "--approval-history-retention 0s: expected a positive duration"},
	}
	// The no-key case opens the data directory before the key check fails.
	t.Setenv("MANDATE_DATA_DIR", t.TempDir())
	// Setenv restores the variable afterwards; unset it for the test.
	t.Setenv("MANDATE_GRPC_PRESHARED_KEY", "")
	os.Unsetenv("MANDATE_GRPC_PRESHARED_KEY")
	for _, c := range cases {
		root := newRootCommand()
		root.SetArgs(c.args)
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		err := root.ExecuteContext(context.Background())
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want an error mentioning %q", c.args, err, c.want)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for the server's logging goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestServeCommand runs `mandate serve` configured from the environment,
// uses both listeners, then stops it with a real SIGTERM.
func TestServeCommand(t *testing.T) {
	const key = "env-key-5b1e"
	t.Setenv("MANDATE_GRPC_PRESHARED_KEY", "other-key,"+key)
	t.Setenv("MANDATE_GRPC_ADDR", "127.0.0.1:0")
	t.Setenv("MANDATE_HTTP_ADDR", "127.0.0.1:0")
	t.Setenv("MANDATE_DATA_DIR", t.TempDir())

	logs := &syncBuffer{}
	root := newRootCommand()
	root.SetArgs([]string{"serve", "--grpc-shutdown-grace-period", "5s"})
	root.SetOut(logs)
	root.SetErr(logs)
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(context.Background()) }()

	serving := regexp.MustCompile(`msg=serving grpc=(\S+) http=(\S+)`)
	var grpcAddr, httpAddr string
	for deadline := time.Now().Add(10 * time.Second); ; {
		if m := serving.FindStringSubmatch(logs.String()); m != nil {
			grpcAddr, httpAddr = m[1], m[2]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server did not start; log:\n%s", logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}

	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	authed := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	if _, err := pb.NewSchemaServiceClient(conn).WriteSchema(authed, &pb.WriteSchemaRequest{Schema: "definition user {}"}); err != nil {
		t.Fatalf("WriteSchema with the environment's key: %v", err)
	}
	_, err = pb.NewSchemaServiceClient(conn).ReadSchema(ctx, &pb.ReadSchemaRequest{})
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("call without a key: %v", err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; {
		resp, err := http.Get("http://" + httpAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz never answered 200: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}

	if err := syscall.Kill(syscall.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serve after SIGTERM: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not stop after SIGTERM")
	}
	if !strings.Contains(logs.String(), "shutting down") {
		t.Errorf("no shutdown in the log:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), key) || strings.Contains(logs.String(), "other-key") {
		t.Error("a preshared key appears in the log")
	}
}
