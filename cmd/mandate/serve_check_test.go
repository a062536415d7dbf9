package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// emptyDir fails t if dir holds anything.
func emptyDir(t *testing.T, what, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if len(names) > 0 {
		t.Errorf("%s left %v in the working directory", what, names)
	}
}

// TestRefusedServeTouchesNoDisk runs serve with flags it refuses, in an
// empty working directory with the default --data-dir: each is refused with
// its reason and nothing is created (a refused serve once left a 16 MiB
// mandate.db behind).
func TestRefusedServeTouchesNoDisk(t *testing.T) {
	t.Setenv("MANDATE_GRPC_PRESHARED_KEY", "")
	os.Unsetenv("MANDATE_GRPC_PRESHARED_KEY")
	t.Setenv("MANDATE_DATA_DIR", "")
	os.Unsetenv("MANDATE_DATA_DIR")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{}, "preshared key is required"},
		{[]string{"--grpc-preshared-key", " "}, "preshared key 1 of 1 is empty"},
		{[]string{"--grpc-preshared-key", "k", "--grpc-addr", ":0"}, `--grpc-addr ":0" listens beyond loopback without TLS`},
		{[]string{"--grpc-preshared-key", "k", "--grpc-addr", "127.0.0.1:0", "--http-addr", "0.0.0.0:0"}, `--http-addr "0.0.0.0:0" listens beyond loopback without TLS`},
		{[]string{"--grpc-preshared-key", "k", "--grpc-addr", "example.com:0"}, "listens beyond loopback"},
		{[]string{"--grpc-preshared-key", "k", "--grpc-tls-cert-path", "c.pem"}, "both a certificate and a key"},
		{[]string{"--grpc-preshared-key", "k", "--grpc-tls-client-ca-path", "ca.pem"}, "needs a certificate and a key"},
		{[]string{"--grpc-preshared-key", "k", "--audit-sink", "kafka"}, `--audit-sink "kafka"`},
		{[]string{"--grpc-preshared-key", "k", "--audit-sink", "postgres"}, "--audit-sink postgres needs"},
		{[]string{"--grpc-preshared-key", "k", "--audit-buffer", "0"}, "--audit-buffer"},
		{[]string{"--grpc-preshared-key", "k", "--max-revision-wait", "-1s"}, "--max-revision-wait"},
		{[]string{"--grpc-preshared-key", "k", "--datastore-engine", "postgres"}, "--datastore-conn-uri is required"},
	} {
		dir := t.TempDir()
		t.Chdir(dir)
		root := newRootCommand()
		root.SetArgs(append([]string{"serve"}, c.args...))
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		err := root.ExecuteContext(context.Background())
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("serve %v: %v, want an error mentioning %q", c.args, err, c.want)
		}
		emptyDir(t, "serve "+strings.Join(c.args, " "), dir)
	}
}

// TestServeDefaults: serve listens on loopback by default; the memory
// datastore writes nothing to disk and says where its audit trail goes;
// plaintext beyond loopback is served only when asked for, with a warning.
func TestServeDefaults(t *testing.T) {
	cmd := newServeCommand()
	for flag, want := range map[string]string{"grpc-addr": "127.0.0.1:50051", "http-addr": "127.0.0.1:8443"} {
		if got := cmd.Flags().Lookup(flag).DefValue; got != want {
			t.Errorf("--%s defaults to %q, want %q", flag, got, want)
		}
	}

	run := func(t *testing.T, args ...string) string {
		t.Helper()
		logs := &syncBuffer{}
		root := newRootCommand()
		root.SetArgs(append([]string{"serve", "--grpc-preshared-key", "k", "--grpc-shutdown-grace-period", "1s"}, args...))
		root.SetOut(logs)
		root.SetErr(logs)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- root.ExecuteContext(ctx) }()
		serving := regexp.MustCompile(`msg=serving `)
		for deadline := time.Now().Add(20 * time.Second); !serving.MatchString(logs.String()); {
			select {
			case err := <-done:
				cancel()
				t.Fatalf("serve exited: %v\n%s", err, logs.String())
			case <-time.After(10 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("serve did not start:\n%s", logs.String())
			}
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("serve: %v", err)
		}
		return logs.String()
	}

	t.Run("memory writes nothing", func(t *testing.T) {
		dir := t.TempDir()
		t.Chdir(dir)
		logs := run(t, "--datastore-engine", "memory", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0")
		emptyDir(t, "serve --datastore-engine memory", dir)
		if !strings.Contains(logs, `msg="audit trail" sink=stdout`) {
			t.Errorf("the log does not say where the audit trail goes:\n%s", logs)
		}
	})
	t.Run("file audit location is logged", func(t *testing.T) {
		dir := t.TempDir()
		logs := run(t, "--data-dir", dir, "--grpc-addr", "127.0.0.1:0", "--http-addr", "")
		if !strings.Contains(logs, "audit trail") || !strings.Contains(logs, filepath.Join(dir, "audit")) {
			t.Errorf("the log does not name the audit directory:\n%s", logs)
		}
	})
	t.Run("plaintext beyond loopback when asked", func(t *testing.T) {
		logs := run(t, "--datastore-engine", "memory", "--audit-sink", "none", "--grpc-addr", ":0", "--http-addr", "", "--allow-plaintext-beyond-loopback")
		if !strings.Contains(logs, "level=WARN msg=\"INSECURE: listening beyond loopback without TLS") || !strings.Contains(logs, "listener=gRPC") {
			t.Errorf("no warning for plaintext beyond loopback:\n%s", logs)
		}
	})
}

func TestIsLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:1": true, "127.9.9.9:1": true, "[::1]:1": true, "localhost:1": true,
		":1": false, "0.0.0.0:1": false, "[::]:1": false, "10.0.0.1:1": false, "example.com:1": false, "garbage": false,
	} {
		if got := isLoopback(addr); got != want {
			t.Errorf("isLoopback(%q) = %v, want %v", addr, got, want)
		}
	}
}
