package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// buildMandate builds the mandate binary into a temporary directory.
func buildMandate(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "mandate")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// serverProcess is `mandate serve` running as a child process.
type serverProcess struct {
	cmd    *exec.Cmd
	logs   *syncBuffer
	exited chan struct{}
	err    error // Wait's result, once exited is closed
}

// childEnv is the test's environment without MANDATE_* variables, so that
// only the arguments configure the child.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, envPrefix) {
			env = append(env, kv)
		}
	}
	return env
}

// startProcess runs `mandate serve args...`, killing it when the test ends.
func startProcess(t *testing.T, bin string, args ...string) *serverProcess {
	t.Helper()
	p := &serverProcess{logs: &syncBuffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(bin, append([]string{"serve"}, args...)...)
	p.cmd.Env = childEnv()
	p.cmd.Stdout = p.logs
	p.cmd.Stderr = p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting mandate serve: %v", err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(p.kill)
	return p
}

var (
	servingLine = regexp.MustCompile(`msg=serving grpc=(\S+)`)
	readyLine   = regexp.MustCompile(`msg=ready `)
)

// waitReady waits until the server has loaded its store and serves,
// returning its gRPC address.
func (p *serverProcess) waitReady(t *testing.T, limit time.Duration) string {
	t.Helper()
	deadline := time.After(limit)
	for {
		logs := p.logs.String()
		if m := servingLine.FindStringSubmatch(logs); m != nil && readyLine.MatchString(logs) {
			return m[1]
		}
		select {
		case <-p.exited:
			t.Fatalf("mandate serve exited (%v) before it was ready; log:\n%s", p.err, p.logs.String())
		case <-deadline:
			t.Fatalf("mandate serve was not ready within %v; log:\n%s", limit, p.logs.String())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// kill sends SIGKILL and waits for the process to be gone, so that its
// locks and ports are released.
func (p *serverProcess) kill() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// stop sends SIGTERM and waits for a clean exit.
func (p *serverProcess) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	select {
	case <-p.exited:
		if p.err != nil {
			t.Fatalf("mandate serve after SIGTERM: %v; log:\n%s", p.err, p.logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("mandate serve did not stop within 30s of SIGTERM")
	}
}

// dial connects to a server with the bearer key on every call.
func dial(t *testing.T, addr, key string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return invoker(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key), method, req, reply, cc, opts...)
		}),
		grpc.WithStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			return streamer(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key), desc, cc, method, opts...)
		}),
	)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// freshPostgresDatabase creates an empty database on the server of
// MANDATE_TEST_POSTGRES_URL, dropped when the test ends, and returns its
// URL; it skips the test when the variable is unset.
func freshPostgresDatabase(t *testing.T) string {
	t.Helper()
	const envVar = "MANDATE_TEST_POSTGRES_URL"
	base := os.Getenv(envVar)
	if base == "" {
		t.Skipf("%s is not set; set it to a PostgreSQL URL such as postgres://postgres@127.0.0.1:5432/test?sslmode=disable to run this test", envVar)
	}
	u, err := url.Parse(base)
	if err != nil || u.Scheme == "" {
		t.Fatalf("%s: expected a postgres:// URL: %v", envVar, err)
	}
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	name := "mandate_crash_" + hex.EncodeToString(b[:])
	run := func(sql string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, base)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, sql)
		return err
	}
	if err := run("CREATE DATABASE " + pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("creating database %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := run("DROP DATABASE IF EXISTS " + pgx.Identifier{name}.Sanitize() + " WITH (FORCE)"); err != nil {
			t.Errorf("dropping database %s: %v", name, err)
		}
	})
	u.Path = "/" + name
	return u.String()
}

// engineUnknown runs `mandate serve args...` until it exits or starts
// serving, and reports whether it refused the engine as unknown.
func engineUnknown(t *testing.T, bin string, args ...string) bool {
	t.Helper()
	p := startProcess(t, bin, args...)
	defer p.kill()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case <-p.exited:
			return strings.Contains(p.logs.String(), "unknown engine")
		case <-deadline:
			return false
		case <-time.After(10 * time.Millisecond):
			if servingLine.MatchString(p.logs.String()) {
				return false
			}
		}
	}
}
